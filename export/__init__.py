"""ONNX export of a study's best layer (backbone truncated + pooling + probe), fusion graphs, quantization."""
