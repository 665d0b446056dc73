"""vocalprobe: probe self-supervised speech models layer by layer for animal vocalizations, export the best layer
to ONNX, and run it on field-recorder audio.

Subpackages: ``vocalprobe.runtime`` (torch-free: audio, datasets, ONNX inference), ``vocalprobe.training`` (the
layer-wise study, torch) and ``vocalprobe.export`` (ONNX export). Dependencies point runtime <- training <- export.
"""

__version__ = "0.1.0"
