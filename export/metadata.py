"""The metadata every exported graph carries, so the runtime needs nothing but the .onnx file.

Keys (all strings, in ``ModelProto.metadata_props``; onnxruntime shows them as ``custom_metadata_map``):

* what the runtime needs (``vocalprobe.runtime.field.onnx_model.REQUIRED_METADATA``) and what OpenSoundscape's
  ``ONNXModel`` reads: ``classes`` (JSON list, output column order), ``sample_rate``, ``sample_duration`` (the
  default analysis window in seconds: the median Train clip), ``class_outputs_key``, ``embedding_outputs_key``;
* ``max_chunk_samples``: clips longer than this are fed chunk by chunk with carried statistics
  (``vocalprobe.runtime.field.long_clips``), exactly as the study extracted them;
* provenance: ``backbone``, ``backbone_id``, ``backbone_revision``, ``backbone_fingerprint``, ``layer``, ``dataset``,
  ``preprocessing`` (JSON), ``val_uar`` / ``test_uar`` (fractions, the study's PyTorch scores),
  ``manifest_sha256``, ``quantization``, ``vocalprobe_version``, ``graph_inputs`` / ``graph_outputs`` (JSON);
* fused graphs add ``members`` (JSON list: file, backbone, layer, weight).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from vocalprobe.runtime.core.errors import VocalprobeError

__all__ = ["build_metadata", "set_metadata", "get_metadata", "read_metadata", "MetadataError"]


class MetadataError(VocalprobeError):
    """Metadata that cannot be written or read back."""


def build_metadata(*, classes: list[str] | tuple[str, ...], sample_rate: int, sample_duration: float,
                   max_chunk_samples: int | None, extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The metadata map: required keys first; ``extra`` values that are not strings are written as JSON."""
    classes = [str(c) for c in classes]
    if not classes or len(set(classes)) != len(classes):
        raise MetadataError(f"classes must be unique non-empty names, got {classes}")
    if sample_duration <= 0:
        raise MetadataError(f"sample_duration must be positive, got {sample_duration}")
    meta = {"classes": json.dumps(classes), "sample_rate": str(int(sample_rate)),
            "sample_duration": f"{float(sample_duration):.6g}", "class_outputs_key": "probabilities",
            "embedding_outputs_key": "embedding"}
    if max_chunk_samples is not None:
        meta["max_chunk_samples"] = str(int(max_chunk_samples))
    for key, value in (extra or {}).items():
        if value is None:
            continue
        meta[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    from vocalprobe import __version__

    meta.setdefault("vocalprobe_version", __version__)
    return meta


def set_metadata(model, metadata: Mapping[str, str]) -> None:
    """Replace the ``metadata_props`` of an ``onnx.ModelProto`` in place."""
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = str(key), str(value)


def get_metadata(model) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of an .onnx file, read with onnx without loading the weights."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise MetadataError(f"{path}: file not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError) as exc:
        raise MetadataError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {exc})") from None
    return get_metadata(model)
