""".onnx files in and out, and their metadata map: one home for the file I/O that export, quantize and fusion share
(so none of them imports another for it)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from vocalprobe.runtime.core.atomic import atomic_write_bytes
from vocalprobe.runtime.core.errors import VocalprobeError

if TYPE_CHECKING:
    import onnx

__all__ = ["OnnxFileError", "load_model", "save_model", "check_model", "get_metadata", "set_metadata",
           "read_metadata"]


class OnnxFileError(VocalprobeError):
    """An .onnx file that is missing or cannot be parsed."""


def load_model(path: str | Path, *, weights: bool = True) -> "onnx.ModelProto":
    """Load ``path``; ``weights=False`` skips external weight files (enough for the metadata)."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise OnnxFileError(f"{path}: file not found")
    try:
        return onnx.load(str(path), load_external_data=weights)
    except (DecodeError, ValueError, OSError) as exc:
        raise OnnxFileError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {exc})") from None


def save_model(model: "onnx.ModelProto", path: str | Path) -> Path:
    """Check and write atomically (a half-written .onnx never appears under ``path``)."""
    path = Path(path)
    check_model(model)
    atomic_write_bytes(path, model.SerializeToString())
    return path


def check_model(model: "onnx.ModelProto") -> None:
    """onnx's checker, which wants a shape on every graph input: an input declared with none (the waveform, which
    takes any rank: ``graph_contract.WAVEFORM_LAYOUT``) is checked as ``[batch, samples]``."""
    import onnx

    shapeless = [i for i in model.graph.input if i.type.HasField("tensor_type")
                 and not i.type.tensor_type.HasField("shape")]
    if shapeless:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        for value in model.graph.input:
            if not value.type.tensor_type.HasField("shape") and value.type.HasField("tensor_type"):
                for name in ("batch", "samples"):
                    value.type.tensor_type.shape.dim.add().dim_param = name
    onnx.checker.check_model(model)


def set_metadata(model: "onnx.ModelProto", metadata: Mapping[str, str]) -> None:
    """Replace the ``metadata_props`` of ``model`` in place."""
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = str(key), str(value)


def get_metadata(model: "onnx.ModelProto") -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of an .onnx file, read without loading external weights."""
    return get_metadata(load_model(path, weights=False))
