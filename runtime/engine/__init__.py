"""The model engine: exported graphs under onnxruntime (one or a fusion), audio sources, analysis windows, and the
one producer of window predictions, ``predict.predict``, which runs them in this process, on a worker pool or on Ray.
``runtime.field`` (the stream product) and ``runtime.archive`` (embed) consume it; it imports neither."""
