"""Cost of the stream's journal per file, at a small and at a season-sized journal, and the disk bytes it writes.

    python benchmarks/bench_journal.py                       # journals of 1,000 and 1,000,000 records
    python benchmarks/bench_journal.py --sizes 1000 --files 500 --dir /media/SDCARD/tmp

Each journal is pre-filled with synthetic records in one transaction, then ``--files`` real (empty) files go
through what ``run_sources`` does for each recording: look it up, check it is not done, mark it done. Disk bytes come
from ``/proc/self/io`` (``write_bytes``: what reached the storage layer, WAL checkpoints included), so put ``--dir``
on a real disk (tmpfs writes nothing). For comparison, the JSON run state it replaced is emulated at the small size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from measure import write_bytes

from vocalprobe.runtime.core.atomic import atomic_write_text
from vocalprobe.runtime.field.run_state import DONE, FileRecord, Fingerprint, RunState

SETTINGS = {"models": ["0" * 64], "weights": [1.0], "sample_rate": 16000, "resampler": "soxr HQ",
            "window": 16000, "hop": 16000, "final_window": "pad"}
OPTIONS = {"min_conf": 0.5, "top_k": None, "merge": False, "formats": ["raven", "csv", "jsonl"], "ignore": []}


def synthetic(n: int):
    for i in range(n):
        name = f"site{i % 50:02d}/2021{(i // 1440) % 12 + 1:02d}01_{i % 24:02d}{i % 60:02d}00.WAV"
        stem = name[:-4]
        yield FileRecord(f"/media/card/{name}.{i}", name, DONE, Fingerprint(57_600_044, 1_620_000_000_000_000_000 + i),
                         3, (f"{stem}.selection.table.txt", f"{stem}.detections.csv", "detections.jsonl"),
                         options=OPTIONS)


def real_files(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"REC{i:06d}.WAV" for i in range(n)]
    for path in paths:
        path.touch()
    return paths


def bench_journal(root: Path, size: int, n_files: int) -> None:
    out = root / f"journal-{size}"
    started = time.perf_counter()
    with RunState(out, SETTINGS, OPTIONS) as state:
        state.merge(synthetic(size), jsonl_committed=0)
    fill_s = time.perf_counter() - started
    files = real_files(root / f"audio-{size}", n_files)
    with RunState(out, SETTINGS, OPTIONS) as state:
        os.sync()
        bytes_before, started = write_bytes(), time.perf_counter()
        for i, path in enumerate(files):
            before = state.lookup(path)
            assert before is None and not state.is_done(path)
            state.mark_done(path, path.name, 3, [f"{path.stem}.detections.csv", "detections.jsonl"],
                            fingerprint=Fingerprint.of(path), jsonl_end=i * 300)
        per_file_ms = (time.perf_counter() - started) / n_files * 1e3
        os.sync()
        bytes_after = write_bytes()
        started = time.perf_counter()
        tables, failures = state.outputs_ending(".detections.csv"), state.failures()
        end_s = time.perf_counter() - started
    disk = (f"{(bytes_after - bytes_before) / n_files / 1024:.1f} KiB" if bytes_before is not None else "n/a")
    journal_mb = sum(p.stat().st_size for p in out.glob(".vocalprobe-journal*")) / 1e6
    print(f"journal of {size:>9,} records (+{n_files:,}): {per_file_ms:.3f} ms per file, {disk} written to disk per "
          f"file; journal {journal_mb:.0f} MB; filled in {fill_s:.1f} s; end-of-run queries ({len(tables):,} tables, "
          f"{len(failures)} failures) {end_s:.2f} s once per run")


def bench_json_state(root: Path, size: int, n_files: int) -> None:
    """What the one-JSON run state cost: the whole file rewritten (and fsynced) after every recording."""
    path = root / "json-state" / ".vocalprobe-stream-state.json"
    done = {r.key: {"name": r.name, "detections": 3, "outputs": list(r.outputs),
                    "fingerprint": {"size": r.fingerprint.size, "mtime_ns": r.fingerprint.mtime_ns}}
            for r in synthetic(size)}
    os.sync()
    bytes_before, started = write_bytes(), time.perf_counter()
    for i in range(n_files):
        done[f"/media/new/{i}.WAV"] = {"name": f"{i}.WAV", "detections": 3, "outputs": [],
                                       "fingerprint": {"size": 1, "mtime_ns": i}}
        atomic_write_text(path, json.dumps({"version": 1, "settings": SETTINGS, "done": done, "failed": {}},
                                           indent=1, sort_keys=True) + "\n")
    per_file_ms = (time.perf_counter() - started) / n_files * 1e3
    os.sync()
    bytes_after = write_bytes()
    disk = f"{(bytes_after - bytes_before) / n_files / 1024:.1f} KiB" if bytes_before is not None else "n/a"
    print(f"old JSON state at {size:>9,} records (+{n_files:,}): {per_file_ms:.3f} ms per file, {disk} written "
          "to disk per file")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,1000000", help="Journal sizes (records already in it).")
    parser.add_argument("--files", type=int, default=2000, help="Files recorded at each size.")
    parser.add_argument("--dir", type=Path, default=None, help="Where to write (a real disk; default: a temp dir).")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-journal-", dir=args.dir))
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
        for size in sizes:
            bench_journal(root, size, args.files)
        bench_json_state(root, min(sizes), args.files)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
