"""`vocalprobe validate`: score an exported graph with onnxruntime alone on a manifest split, and compare the UAR
with the one the study measured in PyTorch (stored in the graph's metadata), or with a reference graph's UAR on the
same clips (``reference=``: e.g. a quantized graph against its fp32 graph, on any labelled manifest).

Each clip is fed whole, resampled to the model's rate, one at a time (``predict_clip``). Clips that cannot be read
are listed in the report and counted; the UAR is over the clips that could be read, and the report says so.

Beside the UAR (the best class of each clip), the report gives each class's precision and recall at the thresholds a
``stream`` run with the same options uses (``run.resolve_thresholds``: --min-conf, else the graph's own
``class_thresholds``, else 0.5; the background/negative class left out unless asked for): what those detections
would be worth, clip by clip.

With worker pools (``--workers N``: ``engine.pool.WorkerPool``, one per graph) the clips are read here and submitted
ahead, and their answers read back in manifest order, so the report is the one of one process.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np

from vocalprobe.runtime.core.atomic import atomic_write_text
from vocalprobe.runtime.core.clips import load_row
from vocalprobe.runtime.core.errors import AudioError, ManifestError
from vocalprobe.runtime.core.manifest import SPLITS, Manifest, read_manifest
from vocalprobe.runtime.core.metrics import bootstrap_uar_ci, confusion_matrix, uar
from vocalprobe.runtime.engine.long_clips import predict_clip
from vocalprobe.runtime.engine.onnx_model import ModelError, OnnxModel

#: Default allowed |ONNX UAR - study UAR|, in UAR points (percent).
DEFAULT_TOLERANCE_POINTS = 0.5
_REFERENCE_KEY = {"test": "test_uar", "val": "val_uar"}


class ClipPool(Protocol):
    """What ``validate`` needs of ``engine.pool.WorkerPool``: whole clips in, their probabilities back by ticket."""

    processes: list

    def submit(self, array: np.ndarray, operation: str = "predict") -> int: ...

    def result(self, seq: int) -> np.ndarray: ...


def _clip_probabilities(manifest, subset, model: OnnxModel, reference_model: OnnxModel | None,
                        pool: ClipPool | None, reference_pool: ClipPool | None
                        ) -> Iterator[tuple[object, np.ndarray | None, np.ndarray | None, str | None]]:
    """(row, probabilities, reference probabilities, problem) of every row, in order; with pools, the clips of
    the next rows are predicted while the answers of earlier ones are read."""
    if pool is None:
        for row in subset:
            try:
                samples = load_row(manifest, row, model.sample_rate)
            except AudioError as exc:
                yield row, None, None, exc.problem
                continue
            yield (row, predict_clip(model, samples),
                   predict_clip(reference_model, samples) if reference_model is not None else None, None)
        return
    ahead = 2 * len(pool.processes) + 2
    pending: deque = deque()

    def oldest():
        row, seq, ref_seq, problem = pending.popleft()
        if problem is not None:
            return row, None, None, problem
        return row, pool.result(seq), None if ref_seq is None else reference_pool.result(ref_seq), None

    for row in subset:
        try:
            samples = load_row(manifest, row, model.sample_rate)
        except AudioError as exc:
            pending.append((row, None, None, exc.problem))
        else:
            ref_seq = reference_pool.submit(samples, "clip") if reference_model is not None else None
            pending.append((row, pool.submit(samples, "clip"), ref_seq, None))
        while len(pending) > ahead:
            yield oldest()
    while pending:
        yield oldest()


@dataclass
class ValidationReport:
    model: str
    manifest: str
    split: str
    n_clips: int
    n_scored: int
    uar: float | None
    uar_ci95: tuple[float, float] | None
    reference_key: str | None
    reference_uar: float | None
    difference_points: float | None  # (onnx - reference) x 100
    tolerance_points: float
    passed: bool | None  # None: nothing to compare with
    manifest_matches_study: bool | None
    classes: list[str]
    confusion: list[list[int]]
    unreadable: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reference_model: str | None = None  # the graph compared with, when not the study's UAR
    decisions_changed: int | None = None  # clips whose predicted class differs from the reference graph's
    thresholds_source: str | None = None  # where the thresholds came from (as `stream` says it)
    #: per reported class: its threshold, and the clips whose probability reaches it (true and false positives)
    #: or does not (false negatives), with precision and recall (None when nothing to divide by)
    detection: dict[str, dict] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)  # classes not reported (the background class, as in stream)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


#: ``--split all``: every row of the manifest, split column or not (e.g. a labelled set of one's own recordings).
ALL_SPLITS = "all"


def clips_to_score(manifest: Manifest, split: str) -> Manifest:
    """The rows ``validate`` scores: one split, or every row with ``split="all"``."""
    if split == ALL_SPLITS:
        return manifest
    if split in SPLITS and any(row.split is None for row in manifest.rows):
        raise ManifestError(f"the manifest has no split column, so it has no {split!r} split; score every clip with "
                            f"--split {ALL_SPLITS}, or run `vocalprobe data split MANIFEST` first")
    return manifest.split(split)


def validate(model: OnnxModel, manifest_path: str | Path, *, split: str = "test",
             tolerance_points: float = DEFAULT_TOLERANCE_POINTS, n_resamples: int = 1000, seed: int = 0,
             on_clip: Callable[[], None] | None = None, reference_model: OnnxModel | None = None,
             pool: ClipPool | None = None, reference_pool: ClipPool | None = None, min_conf: float | None = None,
             thresholds: tuple[tuple[str, float], ...] = (), report_background: bool = False) -> ValidationReport:
    """Score ``model`` on ``split``; compare with the study's UAR in its metadata, or with ``reference_model``'s
    UAR on the same clips when one is given (its classes are matched by name). ``pool`` (and ``reference_pool``
    with a reference): worker processes holding the same graphs, which then do the predicting. ``min_conf``,
    ``thresholds`` and ``report_background``: stream's options, for the per-class detection figures."""
    from vocalprobe.runtime.core.graph_contract import negative_classes
    from vocalprobe.runtime.field.run import resolve_thresholds

    if tolerance_points < 0:
        raise ManifestError(f"--tolerance must be >= 0 UAR points, got {tolerance_points}")
    default_conf, table, thresholds_source = resolve_thresholds(model, min_conf, thresholds)
    not_classes = sorted(set(dict(table)) - set(model.classes))
    if not_classes:
        raise ModelError(f"--min-conf: {', '.join(not_classes)}: not a class of the model (classes: "
                         f"{', '.join(model.classes)})")
    per_class = dict(table)
    class_threshold = np.array([per_class.get(c, default_conf) for c in model.classes])
    ignored = [] if report_background else list(negative_classes(model.classes))
    manifest = read_manifest(manifest_path)
    subset = clips_to_score(manifest, split)
    if len(subset) == 0:
        raise ManifestError(f"{manifest_path}: the {split!r} split is empty")
    index = {name: i for i, name in enumerate(model.classes)}
    unknown = sorted({row.label for row in subset} - set(index))
    if unknown:
        raise ModelError(f"{manifest_path}: label(s) {', '.join(unknown)} are not classes of {model.path.name} "
                         f"({', '.join(model.classes)}); is this the manifest the model was trained on?")
    to_model_class = None
    if reference_model is not None:
        if set(reference_model.classes) != set(model.classes) or reference_model.sample_rate != model.sample_rate:
            raise ModelError(f"the reference {reference_model.path.name} has other classes or another sample rate "
                             f"than {model.path.name}; compare graphs of the same probe")
        to_model_class = np.array([index[name] for name in reference_model.classes])
    y_true, y_pred, y_ref, unreadable = [], [], [], []
    reached = []  # per scored clip: which classes' probabilities reach their threshold
    if reference_model is not None and pool is not None and reference_pool is None:
        raise ModelError("validate with workers and a reference graph needs a worker pool for each graph")
    for row, probs, ref_probs, problem in _clip_probabilities(manifest, subset, model, reference_model, pool,
                                                              reference_pool):
        if problem is not None:
            unreadable.append({"path": row.path, "start": row.start, "end": row.end, "problem": problem})
        else:
            y_true.append(index[row.label])
            y_pred.append(int(np.argmax(probs)))
            reached.append(np.asarray(probs) >= class_threshold)
            if reference_model is not None:
                y_ref.append(int(to_model_class[np.argmax(ref_probs)]))
        if on_clip is not None:
            on_clip()
    notes = []
    meta = model.info.metadata
    manifest_matches = None
    if "manifest_sha256" in meta and reference_model is None:
        manifest_matches = meta["manifest_sha256"] == manifest.content_hash()
        if not manifest_matches:
            notes.append("the manifest differs from the one the study used (manifest_sha256): the UARs may not be "
                         "comparable")
    if unreadable:
        notes.append(f"{len(unreadable)} clip(s) could not be read and are not scored")
    reference_key = _REFERENCE_KEY.get(split)
    reference = getattr(model.info, reference_key) if reference_key else None
    changed = None
    if reference_model is not None:
        reference_key = f"{reference_model.path.name} on the same clips"
        reference = uar(np.asarray(y_true), np.asarray(y_ref)) if y_true else None
        changed = int(np.sum(np.asarray(y_pred) != np.asarray(y_ref)))
    if reference is None and reference_model is None:
        notes.append(f"the model's metadata has no {reference_key or 'reference UAR for split ' + split!s}; "
                     "nothing to compare with")
    score = ci = diff = None
    y_true_a, y_pred_a = np.asarray(y_true), np.asarray(y_pred)
    if y_true:
        score = uar(y_true_a, y_pred_a)
        ci = bootstrap_uar_ci(y_true_a, y_pred_a, n_resamples=n_resamples, seed=seed)
        if reference is not None:
            diff = (score - reference) * 100.0
    else:
        notes.append("no clip could be read: no UAR")
    passed = None if reference is None else (diff is not None and abs(diff) <= tolerance_points)
    matrix = confusion_matrix(y_true_a, y_pred_a, len(model.classes)) if y_true else np.zeros(
        (len(model.classes),) * 2, dtype=np.int64)
    detection = _detection(model.classes, class_threshold, ignored, y_true_a, reached)
    return ValidationReport(str(model.path), str(manifest_path), split, len(subset), len(y_true), score, ci,
                            reference_key if reference is not None else None, reference, diff, tolerance_points,
                            passed, manifest_matches, list(model.classes), matrix.tolist(), unreadable, notes,
                            None if reference_model is None else str(reference_model.path), changed,
                            thresholds_source, detection, ignored)


def _detection(classes, class_threshold: np.ndarray, ignored, y_true: np.ndarray, reached: list) -> dict[str, dict]:
    """Each reported class's clip-level detections at its threshold (a clip is one window of stream)."""
    hits = np.asarray(reached, dtype=bool).reshape(len(reached), len(classes))
    out = {}
    for i, name in enumerate(classes):
        if name in ignored:
            continue
        is_class = y_true == i
        tp, fp, fn = (int(np.sum(hits[:, i] & is_class)), int(np.sum(hits[:, i] & ~is_class)),
                      int(np.sum(~hits[:, i] & is_class)))
        out[name] = {"threshold": float(class_threshold[i]), "true_positives": tp, "false_positives": fp,
                     "false_negatives": fn, "precision": tp / (tp + fp) if tp + fp else None,
                     "recall": tp / (tp + fn) if tp + fn else None}
    return out


def write_report(report: ValidationReport, out_dir: str | Path) -> tuple[Path, Path | None, str | None]:
    """report.json, and confusion.png when matplotlib is installed (else a note saying why there is none)."""
    out_dir = Path(out_dir)
    json_path = out_dir / "report.json"
    atomic_write_text(json_path, report.to_json())
    try:
        import matplotlib
    except ModuleNotFoundError:
        return json_path, None, "matplotlib is not installed: no confusion-matrix PNG (pip install matplotlib)"
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from vocalprobe.runtime.core.atomic import atomic_open

    matrix = np.asarray(report.confusion)
    n = len(report.classes)
    fig, ax = plt.subplots(figsize=(1.5 + 0.5 * n, 1.2 + 0.5 * n))
    rows = matrix.sum(axis=1, keepdims=True)
    ax.imshow(np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0), cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            if matrix[i, j]:
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(n), report.classes, rotation=90, fontsize=7)
    ax.set_yticks(range(n), report.classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    title = f"{Path(report.model).name} on {report.split}"
    if report.uar is not None:
        title += f": UAR {report.uar * 100:.1f}"
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    png_path = out_dir / "confusion.png"
    with atomic_open(png_path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=120)
    plt.close(fig)
    return json_path, png_path, None
