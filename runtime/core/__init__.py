"""The shared torch-free core: audio I/O, resampling, preprocessing, chunking, manifests, clips, metrics, errors,
atomic writes and digests, and the stream output folder's format (``detections/``). The study, the exporter and the
field runtime all stand on it."""
