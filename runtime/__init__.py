"""Torch-free part of vocalprobe: audio I/O, manifests and datasets, and everything a field recorder runs.

Nothing in this package may import torch, transformers or optimum.
"""
