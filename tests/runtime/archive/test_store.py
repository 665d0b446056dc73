"""The archive store (runtime/archive/store.py): two archives of the same vectors, added in the same order, answer
every approximate search alike (the index is built the same way on every run)."""

from __future__ import annotations

import numpy as np

from vocalprobe.runtime.archive.search import nearest
from vocalprobe.runtime.archive.store import ArchiveDB

DIM = 32
SETTINGS = {"graph_sha256": "0" * 64, "window_samples": 16000, "hop_samples": 16000, "final_window": "pad",
            "sample_rate": 16000, "embedding_dim": DIM, "graph_file": "synthetic.onnx"}


def build(folder, vectors: np.ndarray, per_recording: int = 2000) -> None:
    archive = ArchiveDB.open_writer(folder, checkpoint_s=1e9)
    archive.initialise(SETTINGS, {"model_key": "synthetic"})
    for first in range(0, len(vectors), per_recording):
        part = vectors[first:first + per_recording]
        rid = archive.begin_recording(f"rec{first:06d}.wav", "synthetic", "synthetic", None)
        archive.add_windows(rid, [(float(i), float(i + 1)) for i in range(len(part))], part)
        archive.commit_recording(rid, f"{first:064d}", len(part), float(len(part)))
    archive.save_index()
    archive.close()


def test_the_same_vectors_give_the_same_approximate_search(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((20_000, DIM)).astype(np.float32)
    queries = rng.standard_normal((50, DIM)).astype(np.float32)
    build(tmp_path / "a", vectors)
    build(tmp_path / "b", vectors)
    with ArchiveDB.open_reader(tmp_path / "a") as a, ArchiveDB.open_reader(tmp_path / "b") as b:
        for query in queries:
            assert nearest(a, query, 50) == nearest(b, query, 50)
