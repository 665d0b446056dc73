"""vocalprobe: probe self-supervised speech models layer by layer for animal vocalizations, export the best layer
to ONNX, and run it on field-recorder audio.

Subpackages: ``vocalprobe.runtime`` (torch-free: audio, datasets, ONNX inference), ``vocalprobe.training`` (the
layer-wise study, torch) and ``vocalprobe.export`` (ONNX export). Dependencies point runtime <- training <- export.
"""

__version__ = "0.1.0"
__all__ = ["__version__", "predict", "stream", "rethreshold", "embed", "segments", "study", "export_graph"]

#: The Python API (``vocalprobe/api.py``), loaded on first use so ``import vocalprobe`` (and the CLI) stays cheap.
_API = ("predict", "stream", "rethreshold", "embed", "segments", "study", "export_graph")


def __getattr__(name: str):
    if name in _API:
        from vocalprobe import api

        return getattr(api, name)
    raise AttributeError(f"module 'vocalprobe' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
