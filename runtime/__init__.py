"""Torch-free part of vocalprobe, in three rooms: ``core`` (audio, manifests, metrics, atomic writes: shared by
everything), ``datasets`` (preparers, synthetic data, splits) and ``field`` (ONNX graphs on recordings: stream,
validate, bench). Nothing in this package may import torch, transformers or optimum.
"""
