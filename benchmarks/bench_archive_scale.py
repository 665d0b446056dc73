"""Archive costs that must not grow with the archive (issue 24). Prints:

- ``label import`` rows/s: a Raven table of ``--label-rows`` rows (default 100,000) over ``--recordings``
  recordings of ``--hours`` hours (3-s windows every second: 86,400 windows a 24-h recording), and, for comparison,
  the per-row cost of the way it was done before (every window of the row's recording read for each row), timed on
  ``--old-rows`` rows;
- ``probe apply`` peak memory over ``--apply-windows`` windows (default 1,000,000): the peak RSS of a child process
  that applies a head (writing every table), beside the peak RSS of the same child reading every batch without
  applying, so the difference is what apply holds; ``--vocalprobe PATH`` runs the children on another checkout;
- the cost of opening an archive for reading (``ArchiveDB.open_reader``) with a ``--index-mb`` MB index (default
  100), and of the index's sha256 alone.

The archives are synthetic and built fast: random vectors written through the archive's own writer
(``ArchiveDB.add_windows``/``commit_recording``), but into a usearch index built at expansion_add 2 and connectivity
2 instead of the archive's 256/16 (HNSW insertion at those costs ~0.5 ms a vector on one core). Neither label import
nor probe apply searches the index; they read vectors by key, which the build settings do not change.

    python benchmarks/bench_archive_scale.py                                   # the full sizes
    python benchmarks/bench_archive_scale.py --label-rows 20000 --apply-windows 200000 --index-mb 50
    python benchmarks/bench_archive_scale.py --only apply --vocalprobe /path/to/other/checkout-parent
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WINDOW_S, HOP_S = 3.0, 1.0


def fast_archive(folder: Path, n_recordings: int, windows_each: int, dim: int, seed: int = 0) -> float:
    """A real archive of synthetic vectors (see the module docstring); returns the build seconds."""
    from vocalprobe.runtime.archive.store import ArchiveDB
    from vocalprobe.runtime.archive.vectors import usearch_index

    usearch = usearch_index()  # onnxruntime first (runtime.core.imports)

    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    settings = {"graph_sha256": "0" * 64, "window_samples": int(WINDOW_S * 16000), "hop_samples": int(HOP_S * 16000),
                "final_window": "pad", "sample_rate": 16000, "embedding_dim": dim, "graph_file": "synthetic.onnx"}
    with ArchiveDB.open_writer(folder, checkpoint_s=1e9) as archive:
        archive.initialise(settings, {"model_key": "synthetic"})
        archive.index = usearch.Index(ndim=dim, metric=usearch.MetricKind.Cos, dtype=usearch.ScalarKind.F16,
                                      expansion_add=2, connectivity=2)
        archive.add_audio_source("synthetic", folder)
        for r in range(n_recordings):
            rid = archive.begin_recording(f"rec{r:04d}.wav", "synthetic", "synthetic", None)
            for start in range(0, windows_each, 50_000):
                m = min(50_000, windows_each - start)
                offsets = [(i * HOP_S, i * HOP_S + WINDOW_S) for i in range(start, start + m)]
                archive.add_windows(rid, offsets, rng.standard_normal((m, dim)).astype(np.float32))
            archive.commit_recording(rid, f"{r:064d}", windows_each, (windows_each - 1) * HOP_S + WINDOW_S)
    return time.perf_counter() - started


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def bench_labels(work: Path, rows: int, recordings: int, hours: float, old_rows: int) -> None:
    from vocalprobe.runtime.archive.labels import import_tables, matching_windows
    from vocalprobe.runtime.archive.store import ArchiveDB

    windows_each = int(hours * 3600 / HOP_S)
    build = fast_archive(work / "labels", recordings, windows_each, dim=8)
    print(f"label import: archive of {recordings} x {hours:g} h recordings ({recordings * windows_each:,} windows) "
          f"built in {build:.0f} s", flush=True)
    rng = np.random.default_rng(1)
    files = rng.integers(0, recordings, rows)
    starts = rng.uniform(0, hours * 3600 - 10, rows)
    lengths = rng.uniform(0.5, 5.0, rows)
    table = work / "reviewed.selections.txt"
    with open(table, "w") as out:
        out.write("Selection\tBegin File\tBegin Time (s)\tEnd Time (s)\tLabel\n")
        for n, (f, a, d) in enumerate(zip(files, starts, lengths), start=1):
            out.write(f"{n}\trec{f:04d}.wav\t{a:.3f}\t{a + d:.3f}\tcall\n")
    with ArchiveDB.open_writer(work / "labels", repair=False) as archive:
        started = time.perf_counter()
        report = import_tables(archive, [table])
        took = time.perf_counter() - started
        print(f"label import: {rows:,} rows in {took:.1f} s = {rows / took:,.0f} rows/s "
              f"({took / rows * 1e3:.3f} ms a row; {report.annotations:,} annotations)", flush=True)
        started = time.perf_counter()
        for f, a, d in zip(files[:old_rows], starts[:old_rows], lengths[:old_rows]):
            matching_windows(archive.recording_windows(int(f) + 1), float(a), float(a + d))
        per_row = (time.perf_counter() - started) / old_rows
        print(f"label import, the earlier way (every window of the recording read per row), {old_rows} rows: "
              f"{per_row * 1e3:.0f} ms a row = {1 / per_row:,.1f} rows/s; {rows:,} rows would take "
              f"{rows * per_row / 3600:.1f} h", flush=True)


_APPLY_CHILD = r"""
import resource, sys, time
from pathlib import Path
import numpy as np
from vocalprobe.runtime.archive.apply import apply_head
from vocalprobe.runtime.archive.head import Head, HeadRecord
from vocalprobe.runtime.archive.store import ArchiveDB

folder, out, mode, dim = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
record = HeadRecord(kind="linear", classes=("call", "background"), hidden_sizes=(),
                    thresholds={"call": 0.5, "background": 0.5}, precision_target=0.9, precision_reached={},
                    graph_sha256="0" * 64, embedding_dim=dim, seed=0, counts={}, split={}, test_uar=0.0,
                    test_uar_ci95=(0.0, 0.0), val_uar=0.0, database="")
weights = np.zeros((2, dim), np.float32)
weights[0, 0] = 4.0
head = Head(record, np.zeros(dim, np.float32), np.ones(dim, np.float32),
            (("linear", (weights, np.zeros(2, np.float32))),))
started = time.perf_counter()
with ArchiveDB.open_reader(folder) as archive:
    if mode == "apply":
        summary = apply_head(head, archive, out)
        what = f"{summary.windows} windows, {summary.detections} detections"
    else:
        n = sum(len(rows) for rows, _ in archive.iter_window_batches())
        what = f"{n} windows read"
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter() - started, what)
"""


def bench_apply(work: Path, n_windows: int, vocalprobe: Path | None) -> None:
    per_recording = 86_400  # 24-h recordings, a window a second
    recordings = max(1, round(n_windows / per_recording))
    each = n_windows // recordings
    build = fast_archive(work / "apply", recordings, each, dim=8)
    print(f"probe apply: archive of {recordings * each:,} windows ({recordings} recordings, "
          f"{folder_mb(work / 'apply'):.0f} MB) built in {build:.0f} s", flush=True)
    env = dict(os.environ)
    if vocalprobe is not None:
        env["PYTHONPATH"] = str(vocalprobe)
    found = {}
    for mode in ("read", "apply"):
        done = subprocess.run([sys.executable, "-c", _APPLY_CHILD, str(work / "apply"), str(work / f"out-{mode}"),
                               mode, "8"], capture_output=True, text=True, env=env, check=True)
        rss_kb, seconds, what = done.stdout.split(maxsplit=2)
        found[mode] = int(rss_kb) / 1024
        print(f"probe apply: {mode:5s} peak RSS {found[mode]:.0f} MB, {float(seconds):.1f} s ({what.strip()})",
              flush=True)
    print(f"probe apply: holds {found['apply'] - found['read']:.0f} MB beyond reading the archive, at "
          f"{recordings * each:,} windows", flush=True)


def bench_open(work: Path, index_mb: float) -> None:
    from vocalprobe.runtime.archive.store import INDEX_NAME, ArchiveDB
    from vocalprobe.runtime.core.digests import file_sha256

    dim = 512  # 1 KiB of float16 a vector: the index's size is nearly all vectors
    n = int(index_mb * 1e6 / (2 * dim + 40))
    build = fast_archive(work / "open", max(1, n // 86_400), n // max(1, n // 86_400), dim=dim)
    path = work / "open" / INDEX_NAME
    size = path.stat().st_size / 1e6
    print(f"open: archive with a {size:.0f} MB index built in {build:.0f} s (files in the page cache)", flush=True)
    shas, opens = [], []
    for _ in range(5):  # the fastest of five: the machine may be shared
        started = time.perf_counter()
        file_sha256(path)
        shas.append(time.perf_counter() - started)
        started = time.perf_counter()
        ArchiveDB.open_reader(work / "open").close()
        opens.append(time.perf_counter() - started)
    sha = min(shas)
    print(f"open: sha256 of the index {sha:.2f} s ({size / sha:.0f} MB/s, {sha / size * 1000:.1f} s per GB); "
          f"open_reader {min(opens):.2f} s (fastest of 5)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label-rows", type=int, default=100_000)
    parser.add_argument("--recordings", type=int, default=4, help="recordings of the label-import archive")
    parser.add_argument("--hours", type=float, default=24.0, help="length of each of those recordings")
    parser.add_argument("--old-rows", type=int, default=20, help="rows timed the earlier way")
    parser.add_argument("--apply-windows", type=int, default=1_000_000)
    parser.add_argument("--index-mb", type=float, default=100.0)
    parser.add_argument("--only", choices=("labels", "apply", "open"), default=None)
    parser.add_argument("--vocalprobe", type=Path, default=None,
                        help="PYTHONPATH of the apply children (a folder holding a `vocalprobe` package)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-archive-scale-") as tmp:
        work = Path(tmp)
        if args.only in (None, "labels"):
            bench_labels(work, args.label_rows, args.recordings, args.hours, args.old_rows)
        if args.only in (None, "apply"):
            bench_apply(work, args.apply_windows, args.vocalprobe)
        if args.only in (None, "open"):
            bench_open(work, args.index_mb)


if __name__ == "__main__":
    main()
