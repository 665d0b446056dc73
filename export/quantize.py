"""int8 versions of an exported fp32 graph (onnxruntime.quantization); metadata is carried over.

* ``quantize_dynamic_matmul``: dynamic int8 restricted to MatMul (transformer projections, feed-forward, probe).
  The default ``quantize_dynamic`` also turns the CNN's Conv into ConvInteger, which runs about 2x SLOWER on CPU,
  so Conv stays fp32 here. The graph is pre-processed first (``quant_pre_process``: shape inference + fusions).
* ``quantize_static_qdq``: static int8 in QDQ format of Conv AND MatMul, activation ranges calibrated on the study's
  Train clips (``TrainClipReader``). The CNN front end is most of the cost at small layers, so this is the mode that
  can go faster than fp32 there; its accuracy must be checked with ``vocalprobe validate``.

The parity check of a quantized graph uses the family's ``atol_int8`` against the PyTorch fp32 pipeline; the
deciding number is the UAR change reported by ``validate``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from vocalprobe.runtime.errors import VocalprobeError

__all__ = ["QuantizationError", "quantize_dynamic_matmul", "quantize_static_qdq", "TrainClipReader"]


class QuantizationError(VocalprobeError):
    """onnxruntime's quantizer could not process the graph."""


def _carry_metadata(source: Path, target: Path, kind: str) -> None:
    import onnx

    from vocalprobe.export.metadata import get_metadata, set_metadata
    from vocalprobe.export.onnx_export import save_model

    meta = get_metadata(onnx.load(str(source), load_external_data=False))
    model = onnx.load(str(target))
    set_metadata(model, {**meta, "quantization": kind})
    save_model(model, target)


def _preprocess(source: Path, work: Path) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = work / "preprocessed.onnx"
    try:
        quant_pre_process(str(source), str(out), skip_symbolic_shape=True)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise QuantizationError(f"{source}: onnxruntime's quantization pre-processing failed ({exc})") from exc
    return out


def quantize_dynamic_matmul(source: str | Path, target: str | Path) -> Path:
    """Dynamic int8 (weights int8, activations quantized at run time) of every MatMul; Conv stays fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, target = Path(source), Path(target)
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=target.parent) as tmp:
        pre = _preprocess(source, Path(tmp))
        out = Path(tmp) / "int8.onnx"
        quantize_dynamic(str(pre), str(out), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
                         per_channel=False)
        _carry_metadata(source, out, "int8")
        out.replace(target)
    return target


class TrainClipReader:
    """Calibration data: up to ``max_clips`` Train clips of a manifest, one ``{"waveform": [1, samples]}`` each.

    Clips longer than ``max_samples`` are cut to their first ``max_samples`` (the graph sees at most one chunk at a
    time). Unreadable clips are skipped and counted in ``skipped``.
    """

    def __init__(self, manifest, *, max_clips: int = 32, max_samples: int | None = None, split: str = "train"):
        if max_clips < 1:
            raise QuantizationError(f"calibration needs at least 1 clip, got {max_clips}")
        self.manifest = manifest
        rows = manifest.split(split).rows
        step = max(1, len(rows) // max_clips)  # spread over the split (manifests are often sorted by class)
        self.rows = rows[::step][:max_clips]
        self.max_samples = max_samples
        self.skipped = 0
        self._iter = None

    def _clips(self):
        from vocalprobe.runtime.clips import load_row

        for row in self.rows:
            try:
                samples = load_row(self.manifest, row)
            except VocalprobeError:
                self.skipped += 1
                continue
            if self.max_samples is not None:
                samples = samples[: self.max_samples]
            yield {"waveform": np.ascontiguousarray(samples[None], dtype=np.float32)}

    def get_next(self):
        if self._iter is None:
            self._iter = self._clips()
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = None


def quantize_static_qdq(source: str | Path, target: str | Path, reader) -> Path:
    """Static int8 QDQ of Conv and MatMul (per-channel int8 weights, uint8 activations), calibrated on ``reader``."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    source, target = Path(source), Path(target)

    class _Reader(CalibrationDataReader):  # onnxruntime checks the base class
        def get_next(self):
            return reader.get_next()

    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=target.parent) as tmp:
        pre = _preprocess(source, Path(tmp))
        out = Path(tmp) / "int8-static.onnx"
        quantize_static(str(pre), str(out), _Reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["Conv", "MatMul"], activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True, calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"CalibTensorRangeSymmetric": False})
        _carry_metadata(source, out, "int8-static")
        out.replace(target)
    return target
