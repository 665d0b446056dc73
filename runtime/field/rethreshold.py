"""`vocalprobe rethreshold RUN_DIR --out NEW_DIR`: a stream run's detection tables made again from its per-window
scores (``stream --scores``) with other thresholds, top-k, merging, ignored classes or formats: no model, no audio.

The scores read back are the run's float32 probabilities bit for bit and go through the same ``stream.detect``,
``Outputs`` and writers as a stream run, so NEW_DIR's tables are byte for byte those `stream` writes with the same
options. An option left out keeps the run's. NEW_DIR is a stream output folder of its own (with a journal, so review,
segments and merge read it); it holds no scores tables: re-threshold again from RUN_DIR.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

from vocalprobe.runtime.core.detections.layout import PARAMS_NAME, SCORE_SUFFIXES
from vocalprobe.runtime.core.detections.scores import score_chunks, score_classes
from vocalprobe.runtime.core.detections.tables import OutputNameError
from vocalprobe.runtime.core.errors import VocalprobeError
from vocalprobe.runtime.core.graph_contract import negative_classes
from vocalprobe.runtime.core.out_lock import LOCK_NAME, OutputLock
from vocalprobe.runtime.engine.batches import Prediction
from vocalprobe.runtime.engine.windows import Window, WindowPlan
from vocalprobe.runtime.field.merge import run_order
from vocalprobe.runtime.field.run_state import DONE, FAILED, FileRecord, RunState, read_settings
from vocalprobe.runtime.field.stream import (
    FIRST_OUTPUT_PARAM,
    DetectConfig,
    detect,
    output_options,
    output_params,
)


class RethresholdError(VocalprobeError):
    """A run folder that cannot be re-thresholded (no scores, mixed options) or an output folder that is not new."""


@dataclass(frozen=True)
class Rethreshold:
    """What changes: each option None (or empty) keeps the run's. ``min_conf``/``thresholds``: as ``stream``'s
    --min-conf (one number, or a class table and the threshold of the classes it does not list)."""

    min_conf: float | None = None
    thresholds: tuple[tuple[str, float], ...] = ()
    top_k: int | None = None
    merge: bool | None = None
    ignore: frozenset[str] | None = None
    report_background: bool | None = None
    formats: tuple[str, ...] | None = None


@dataclass(frozen=True)
class RethresholdSummary:
    done: int
    failed: int
    detections: int
    windows: int
    options: dict


@dataclass(frozen=True)
class _Model:
    """What ``detect`` needs of a model: its classes (the scores' columns) and sample rate."""

    classes: tuple[str, ...]
    sample_rate: int


def _scores_of(record: FileRecord) -> str | None:
    return next((o for o in record.outputs if o.endswith(tuple(SCORE_SUFFIXES.values()))), None)


def _run_options(run_dir: Path, records: Sequence[FileRecord]) -> dict:
    found = {}
    for record in records:
        if record.status == DONE and record.options is not None:
            found.setdefault(repr(sorted(record.options.items())), record.options)
    if len(found) > 1:
        a, b = list(found.values())[:2]
        changed = ", ".join(sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)))
        raise RethresholdError(f"{run_dir}: its files were written with other output options (changed: {changed}); "
                               "re-run `vocalprobe stream` there with --rewrite-outputs first")
    return next(iter(found.values()), {})


def _config(change: Rethreshold, run: dict, plan: WindowPlan, classes: Sequence[str]) -> DetectConfig:
    if change.min_conf is not None or change.thresholds:
        min_conf = change.min_conf if change.min_conf is not None else run.get("min_conf", 0.5)
        thresholds = tuple(change.thresholds)
    else:
        min_conf, thresholds = run.get("min_conf", 0.5), tuple(sorted((run.get("thresholds") or {}).items()))
    negative = frozenset(negative_classes(classes))
    ignore = frozenset(run.get("ignore", ()))
    if change.ignore is not None or change.report_background is not None:
        given = change.ignore if change.ignore is not None else ignore - negative
        ignore = frozenset(given) | (frozenset() if change.report_background else negative)
    unknown = sorted(ignore - set(classes))
    if unknown:
        raise RethresholdError(f"--ignore {', '.join(unknown)}: not a class of the run (classes: "
                               f"{', '.join(classes)})")
    config = DetectConfig(plan, min_conf=float(min_conf), thresholds=thresholds, ignore=ignore,
                          top_k=change.top_k if change.top_k is not None else run.get("top_k"),
                          merge=change.merge if change.merge is not None else bool(run.get("merge", False)))
    config.class_thresholds(classes)  # a table naming classes the run lacks is refused before any work
    return config


def _predictions(path: Path, classes: Sequence[str], sample_rate: int) -> Iterator[Prediction]:
    index = 0
    for starts, ends, probs in score_chunks(path, classes, sample_rate):
        windows = [Window(index + i, int(s), int(e)) for i, (s, e) in enumerate(zip(starts, ends))]
        index += len(windows)
        yield Prediction(windows, probs)


def _params(run_dir: Path, config: DetectConfig, formats: Sequence[str]) -> list[tuple[str, str]] | None:
    """The run's ``analysis_params.csv`` with this re-threshold's output rows."""
    path = run_dir / PARAMS_NAME
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [tuple(r) for r in csv.reader(handle)][1:]
    names = [r[0] for r in rows]
    kept = rows[:names.index(FIRST_OUTPUT_PARAM)] if FIRST_OUTPUT_PARAM in names else rows
    return [*kept, *output_params(config, formats)]


def _check_out(out_dir: Path, run_dir: Path) -> None:
    if out_dir.resolve() == run_dir.resolve():
        raise RethresholdError(f"{out_dir} is the run folder; give a new --out folder")
    if out_dir.is_dir() and any(p.name != LOCK_NAME for p in out_dir.iterdir()) or (
            out_dir.exists() and not out_dir.is_dir()):
        raise RethresholdError(f"{out_dir} is not empty; give a new --out folder")


def rethreshold(run_dir: str | Path, out_dir: str | Path, change: Rethreshold = Rethreshold()) -> RethresholdSummary:
    """Write NEW_DIR (``out_dir``, new or empty) from RUN_DIR's scores; see the module docstring."""
    from vocalprobe.runtime.field.outputs import Outputs

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    _check_out(out_dir, run_dir)
    settings = read_settings(run_dir)
    lock = OutputLock(run_dir)  # no stream may be writing it
    lock.acquire()
    try:
        with RunState(run_dir, settings) as state:
            records = sorted(state.records(), key=run_order)
        done = [r for r in records if r.status == DONE]
        missing = [r.name for r in done if _scores_of(r) is None]
        if missing:
            raise RethresholdError(f"{run_dir}: no per-window scores ({len(missing)} of {len(done)} file(s), first "
                                   f"{missing[0]}); re-run `vocalprobe stream` with --scores (into this folder: "
                                   "with --rewrite-outputs)")
        run = _run_options(run_dir, records)
        rate = int(settings["sample_rate"])
        plan = WindowPlan(int(settings["window"]), int(settings["hop"]), settings["final_window"])
        classes = score_classes(run_dir / _scores_of(done[0])) if done else ()
        model = _Model(tuple(classes), rate)
        config = _config(change, run, plan, classes)
        formats = tuple(change.formats) if change.formats is not None else tuple(run.get("formats", ()))
        options = output_options(config, formats)
        params = _params(run_dir, config, formats)
        new: list[FileRecord] = []
        n_detections = n_windows = 0
        overlap_s = (plan.window - plan.hop) / rate
        with Outputs(out_dir, formats, rate / 2, overlap_s=overlap_s) as outputs, \
                RunState(out_dir, settings, options) as out_state:
            outputs.open()
            if params is not None:
                outputs.write_params(params)
            jsonl_end = None
            for record in records:
                if record.status != DONE:
                    new.append(replace(record, options=None))
                    continue
                try:
                    outputs.begin(record.name, path=record.key, source_rate=record.source_rate)
                except OutputNameError as exc:
                    outputs.discard()
                    new.append(FileRecord(record.key, record.name, FAILED, record.fingerprint, problem=exc.problem,
                                          position=record.position))
                    continue
                found, windows = detect(_predictions(run_dir / _scores_of(record), classes, rate), record.name,
                                        model, config, on_event=outputs.event, on_row=outputs.row)
                written = outputs.finish_tables(record.name, record.seconds)
                jsonl_end = outputs.commit()
                n_detections += found
                n_windows += windows
                new.append(replace(record, detections=found, outputs=tuple(written), options=None))
            out_state.merge(new, jsonl_committed=jsonl_end)
            outputs.write_errors(out_state.problems())  # failed files and those read only in part
            outputs.combine(out_state.done_tables)
    finally:
        lock.release()
    return RethresholdSummary(sum(r.status == DONE for r in new), sum(r.status == FAILED for r in new),
                              n_detections, n_windows, options)
