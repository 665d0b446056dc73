"""The field runtime: exported graphs under onnxruntime, windows over audio streams, detections written as tables,
validation of a graph on a labelled set, and speed checks on the device it runs on."""
