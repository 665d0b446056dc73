"""The layer-wise study (torch): backbones, per-layer pooled features, MLP probes, best layers, fusion, reports."""
