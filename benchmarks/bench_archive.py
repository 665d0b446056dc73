"""What the embedding archive costs and buys. Prints:

- embed throughput against stream (x real time, the same graph and audio, both through the CLI);
- database bytes per audio hour (the graph given, and per window);
- search latency and recall@k of the approximate index (usearch, then exact re-ranking) against exact search, on
  ``--windows`` synthetic stored vectors (clustered, ``--dim`` wide) in a real archive database;
- ``probe apply`` windows/s (a random MLP head over every stored window), and how many threshold decisions float16
  storage changes against float32 vectors.

The index is the archive's own (perch-hoplite's defaults: float16, expansion_add 256, expansion_search 128; cosine),
so its recall is what a user gets. Building it is the slow part (HNSW insertion at expansion_add 256): windows go to
usearch a recording (3,600) at a time and each ``add`` already uses every core (``threads=0``); a smaller
expansion_add or connectivity would build faster and find less, so the build is kept as it is and done once:
``--keep DIR`` builds the synthetic archive there on the first run and reuses it on later ones.

    python benchmarks/bench_archive.py                          # band test graph, 1,000,000 windows of 64 dims
    python benchmarks/bench_archive.py --windows 200000 --dim 64   # a quicker run
    python benchmarks/bench_archive.py --keep /data/bench-archive   # the 1M archive built once, searched again later
    python benchmarks/bench_archive.py --graph model.onnx --minutes 30
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from typer.testing import CliRunner

HERE = Path(__file__).resolve().parent


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def bench_embed(graph: Path | None, minutes: float, work: Path) -> None:
    from vocalprobe.cli import app

    if graph is None:
        sys.path.insert(0, str(HERE.parent / "tests"))
        from runtime_graphs import build_band_graph

        graph = build_band_graph(work / "band.onnx")
    rng = np.random.default_rng(0)
    audio = work / "audio"
    audio.mkdir()
    seconds = minutes * 60
    sf.write(str(audio / "20210501_040000.WAV"), (0.1 * rng.standard_normal(int(seconds * 48_000))).astype(np.float32),
             48_000, subtype="PCM_16")
    runner = CliRunner()
    timings = {}
    for name, args in (("stream", ["stream", audio, "-m", graph, "-o", work / "out"]),
                       ("embed", ["embed", audio, "-m", graph, "--db", work / "db"])):
        started = time.perf_counter()
        result = runner.invoke(app, [str(a) for a in args])
        timings[name] = time.perf_counter() - started
        if result.exit_code != 0:
            raise SystemExit(f"{name} failed: {result.output}")
    print(f"embed vs stream ({graph.name}, {minutes:g} min of 48 kHz audio): stream {seconds / timings['stream']:.1f}x "
          f"real time, embed {seconds / timings['embed']:.1f}x real time")
    size = folder_bytes(work / "db")
    from vocalprobe.runtime.archive.store import ArchiveDB

    with ArchiveDB.open_reader(work / "db") as archive:
        n, dim = archive.count_windows(), archive.settings()["embedding_dim"]
    print(f"database: {size / (seconds / 3600) / 1e6:.2f} MB per audio hour ({n} windows of {dim} dims, "
          f"{size / n:.0f} bytes per window)")


BUILT_MARK = "bench-built.json"


def synthetic_archive(folder: Path, n: int, dim: int, seed: int = 0):
    """A real archive database holding ``n`` clustered vectors (windows of 1 s in 1-hour recordings); a folder
    holding one of the same ``n``, ``dim`` and ``seed`` (``--keep``) is reused. Returns (build seconds, centres)."""
    from vocalprobe.runtime.archive.store import ArchiveDB

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((256, dim)).astype(np.float32)
    wanted = {"windows": n, "dim": dim, "seed": seed}
    mark = folder / BUILT_MARK
    if mark.is_file():
        built = json.loads(mark.read_text())
        if {k: built.get(k) for k in wanted} == wanted:
            print(f"reusing the archive in {folder} (built in {built['build_s']:.0f} s)", flush=True)
            return built["build_s"], centres
        raise SystemExit(f"{folder} holds another synthetic archive ({built}); give another --keep folder")
    if folder.exists() and any(folder.iterdir()):
        raise SystemExit(f"{folder} is not empty and holds no finished benchmark archive; give an empty --keep folder")
    archive = ArchiveDB.open_writer(folder, checkpoint_s=1e9)
    settings = {"graph_sha256": "0" * 64, "window_samples": 16000, "hop_samples": 16000, "final_window": "pad",
                "sample_rate": 16000, "embedding_dim": dim, "graph_file": "synthetic.onnx"}
    archive.initialise(settings, {"model_key": "synthetic"})
    started = time.perf_counter()
    per_recording = 3600
    report_every = max(per_recording, n // 10)
    for r in range(0, n, per_recording):
        m = min(per_recording, n - r)
        rid = archive.begin_recording(f"rec{r // per_recording:05d}.wav", "synthetic", "synthetic", None)
        vecs = centres[rng.integers(0, len(centres), m)] + 0.5 * rng.standard_normal((m, dim)).astype(np.float32)
        archive.add_windows(rid, [(float(i), float(i + 1)) for i in range(m)], vecs)
        archive.commit_recording(rid, f"{r:064d}", m, float(m))
        if (r + m) // report_every > r // report_every:
            took = time.perf_counter() - started
            print(f"  built {r + m:,} of {n:,} windows in {took:.0f} s ({(r + m) / took:,.0f} windows/s)", flush=True)
    archive.save_index()
    build = time.perf_counter() - started
    archive.close()
    mark.write_text(json.dumps({**wanted, "build_s": build}) + "\n")
    return build, centres


def bench_search(n: int, dim: int, k: int, queries: int, folder: Path) -> None:
    from vocalprobe.runtime.archive.search import nearest
    from vocalprobe.runtime.archive.store import ArchiveDB

    build, centres = synthetic_archive(folder, n, dim)
    size = folder_bytes(folder)
    print(f"archive of {n:,} synthetic {dim}-dim windows: built in {build:.0f} s ({n / build:,.0f} windows/s), "
          f"{size / 1e6:.0f} MB ({size / n:.0f} bytes per window)", flush=True)
    rng = np.random.default_rng(1)
    with ArchiveDB.open_reader(folder) as archive:
        qs = centres[rng.integers(0, len(centres), queries)] + 0.5 * rng.standard_normal((queries, dim))
        approx_ms, exact_ms, recalls = [], [], []
        for q in qs:
            started = time.perf_counter()
            got = nearest(archive, q, k)
            approx_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            truth = nearest(archive, q, k, exact=True)
            exact_ms.append((time.perf_counter() - started) * 1000)
            recalls.append(len({i for i, _ in got} & {i for i, _ in truth}) / k)
        print(f"search, {queries} queries, k={k}: approximate + re-ranked median {np.median(approx_ms):.1f} ms "
              f"(p95 {np.percentile(approx_ms, 95):.1f} ms), recall@{k} {np.mean(recalls):.3f} "
              f"(min {np.min(recalls):.2f}); exact median {np.median(exact_ms):.0f} ms")
        bench_apply(archive, dim)


def bench_apply(archive, dim: int) -> None:
    from vocalprobe.runtime.archive.head import Head, HeadRecord

    rng = np.random.default_rng(2)
    sizes = (dim, 128, 64, 32, 3)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers.append(("linear", (rng.standard_normal((b, a)).astype(np.float32) / np.sqrt(a),
                                  np.zeros(b, np.float32))))
        if b != 3:
            layers += [("layernorm", (np.ones(b, np.float32), np.zeros(b, np.float32))), ("relu", ())]
    record = HeadRecord(kind="mlp", classes=("a", "b", "c"), hidden_sizes=tuple(sizes[1:-1]),
                        thresholds={"a": 0.5, "b": 0.5, "c": 0.5}, precision_target=0.9, precision_reached={},
                        graph_sha256="", embedding_dim=dim, seed=0, counts={}, split={}, test_uar=0.0,
                        test_uar_ci95=(0.0, 0.0), val_uar=0.0, database="")
    head = Head(record, np.zeros(dim, np.float32), np.ones(dim, np.float32), tuple(layers))
    started = time.perf_counter()
    n = 0
    for rows, vecs in archive.iter_window_batches():
        head.predict_proba(vecs)
        n += len(rows)
    took = time.perf_counter() - started
    # float16 vs float32: every float32 value within half a float16 step of a stored value is stored as it, so
    # jittering the stored vectors by that much recreates float32 originals (seeded)
    rows, vecs = next(archive.iter_window_batches(100_000))
    exact = vecs + rng.uniform(-0.5, 0.5, vecs.shape).astype(np.float32) * np.spacing(vecs.astype(np.float16)
                                                                                     ).astype(np.float32)
    changed = int(((head.predict_proba(exact) >= 0.5) != (head.predict_proba(vecs) >= 0.5)).any(axis=1).sum())
    print(f"probe apply (numpy MLP {sizes}): {n / took:,.0f} windows/s over {n:,} windows (reading included); "
          f"float16 storage changed the decision of {changed} of {len(rows):,} windows at threshold 0.5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graph", type=Path, default=None, help="Graph to embed with (default: the band test graph)")
    parser.add_argument("--minutes", type=float, default=10.0, help="Audio for embed vs stream")
    parser.add_argument("--windows", type=int, default=1_000_000, help="Synthetic windows for search and apply")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("-k", type=int, default=100)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--keep", type=Path, default=None,
                        help="Build the synthetic archive in this folder once and reuse it (default: a temporary one)")
    parser.add_argument("--no-embed", action="store_true", help="Skip embed vs stream (search and apply only)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-archive-") as tmp:
        if not args.no_embed:
            bench_embed(args.graph, args.minutes, Path(tmp))
        bench_search(args.windows, args.dim, args.k, args.queries, args.keep or Path(tmp) / "big")


if __name__ == "__main__":
    main()
