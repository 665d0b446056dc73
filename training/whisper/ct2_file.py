"""Reading a CTranslate2 ``model.bin`` (binary version 6) with numpy alone, so a faster-whisper folder converts
without ctranslate2 installed.

Layout (ctranslate2/specs/model_spec.py ``_serialize``, little endian): u32 binary version, string spec name, u32
spec revision, u32 variable count, then per variable: string name, u8 rank, u32 dims, u8 dtype id, u32 byte count,
raw bytes; then u32 alias count and (alias, target) string pairs. A string is u16 length (with the NUL), the UTF-8
bytes and a NUL.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vocalprobe.runtime.core.errors import VocalprobeError

BINARY_VERSION = 6
# ctranslate2/specs/model_spec.py _dtype_to_type_id; the order of include/ctranslate2/types.h DataType.
DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")


class WhisperConversionError(VocalprobeError):
    """A Whisper checkpoint cannot be converted: names the file and what is wrong with it."""


@dataclass
class Ct2Model:
    """The contents of a ``model.bin``: tensors (rank >= 1), scalars (rank 0) and aliases, by name."""

    path: Path
    spec: str
    revision: int
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    scalars: dict[str, int | float] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise WhisperConversionError(
                f"{self.path}: truncated CTranslate2 model ({what} needs {n} bytes at offset {self.pos}, the file has "
                f"{len(self.data)}); download it again (a split model must be joined in order)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))[0]

    def string(self, what: str) -> str:
        raw = self.take(self.unpack("H", what), what)
        if not raw.endswith(b"\0"):
            raise WhisperConversionError(f"{self.path}: corrupt CTranslate2 model ({what} at offset {self.pos} is "
                                         "not NUL-terminated)")
        return raw[:-1].decode("utf-8", errors="replace")


def read_ct2_model(path: str | Path) -> Ct2Model:
    """Parse ``model.bin`` into numpy arrays (copies, native byte order); raises ``WhisperConversionError`` for a
    missing, truncated or trailing-garbage file, another binary version or an unknown dtype."""
    path = Path(path)
    if not path.is_file():
        raise WhisperConversionError(f"{path}: CTranslate2 model.bin not found")
    reader = _Reader(path.read_bytes(), path)
    version = reader.unpack("I", "binary version")
    if version != BINARY_VERSION:
        raise WhisperConversionError(f"{path}: CTranslate2 binary version {version}, this reader knows version "
                                     f"{BINARY_VERSION}; re-convert the model with ctranslate2 4.x")
    model = Ct2Model(path, reader.string("spec name"), reader.unpack("I", "spec revision"))
    for _ in range(reader.unpack("I", "variable count")):
        name = reader.string("variable name")
        shape = tuple(reader.unpack("I", f"{name} dims") for _ in range(reader.unpack("B", f"{name} rank")))
        type_id = reader.unpack("B", f"{name} dtype")
        if type_id >= len(DTYPES):
            raise WhisperConversionError(f"{path}: {name} has unknown dtype id {type_id}")
        dtype = DTYPES[type_id]
        nbytes = reader.unpack("I", f"{name} byte count")
        raw = reader.take(nbytes, name)
        if dtype == "bfloat16":  # numpy has no bfloat16: widen the top 16 bits of a float32
            value = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            value = np.frombuffer(raw, np.dtype(dtype).newbyteorder("<"))
        if value.size != int(np.prod(shape, dtype=np.int64)):
            raise WhisperConversionError(f"{path}: {name} holds {value.size} values for shape {shape}")
        if shape:
            model.tensors[name] = value.reshape(shape).astype(value.dtype.newbyteorder("="))
        else:
            model.scalars[name] = value[0].item()
    for _ in range(reader.unpack("I", "alias count")):
        alias = reader.string("alias")
        model.aliases[alias] = reader.string(f"target of {alias}")
    if reader.pos != len(reader.data):
        raise WhisperConversionError(f"{path}: {len(reader.data) - reader.pos} bytes after the last alias; not a "
                                     "single CTranslate2 model (were split parts joined twice?)")
    return model
