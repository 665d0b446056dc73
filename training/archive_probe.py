"""`vocalprobe probe fit`: train the paper's probe (or a linear one) on an archive's annotated windows, from the
stored vectors alone (no audio is read, no backbone runs).

Targets: a window's positive label; a window with only negative annotations trains ``background`` (never
reported); a window with two different positive labels is left out (counted). The labelled windows are split per
class, seeded, into train / val / test (60/20/20): val drives the paper's early stopping, test gives the held-out
UAR and its bootstrap CI, and each class's threshold is the lowest score at which the held-out windows (val + test,
none trained on) reach the target precision. The head folder is what ``runtime.archive.head`` reads.

Minimums: fewer than ``MIN_PER_CLASS`` (3) labelled windows in a class is refused (no train/val/test window each).
A class with fewer than ``MIN_HELD_OUT_PER_CLASS`` (4) held-out windows (about 10 labelled) still trains, but one or
two windows cannot show a precision: its ``precision_reached`` is False (not shown), a warning says so, and the
report lists it in ``too_few_held_out``.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vocalprobe.runtime.archive.head import BACKGROUND, HEAD_JSON, PROBE_STEM, THRESHOLDS_CSV, HeadRecord
from vocalprobe.runtime.archive.store import POSITIVE, ArchiveDB
from vocalprobe.runtime.core.atomic import atomic_write_text
from vocalprobe.runtime.core.errors import VocalprobeError
from vocalprobe.runtime.core.metrics import bootstrap_uar_ci, uar

log = logging.getLogger(__name__)

#: The fewest labelled windows per class that still leave one each for train, val and test.
MIN_PER_CLASS = 3
#: The fewest held-out (val + test) windows of a class on which its threshold's precision counts as shown; the 20 %
#: val + 20 % test split gives them from about 10 labelled windows of the class on.
MIN_HELD_OUT_PER_CLASS = 4
#: Labelled windows per class that give ``MIN_HELD_OUT_PER_CLASS`` held-out ones (what the warning asks for).
RECOMMENDED_PER_CLASS = 10


class ArchiveProbeError(VocalprobeError):
    """Annotations that cannot train a probe (too few, one class only)."""


@dataclass
class FitReport:
    classes: tuple[str, ...]
    counts: dict[str, int]
    n_train: int
    n_val: int
    n_test: int
    test_uar: float
    test_uar_ci95: tuple[float, float]
    thresholds: dict[str, float]
    precision_reached: dict[str, bool]
    left_out: int  # windows with conflicting positive labels
    out_dir: Path
    held_out: dict[str, int] | None = None  # held-out (val + test) windows per class: what each threshold was set on
    too_few_held_out: tuple[str, ...] = ()  # classes under MIN_HELD_OUT_PER_CLASS: precision not shown


def labelled_windows(archive: ArchiveDB) -> tuple[np.ndarray, list[str], int]:
    """``(window_ids, labels, left_out)`` from the archive's annotations (see the module docs)."""
    positive: dict[int, set[str]] = {}
    negative: set[int] = set()
    for window_id, label, label_type in archive.annotations():
        if label_type == POSITIVE:
            positive.setdefault(window_id, set()).add(label)
        else:
            negative.add(window_id)
    ids, labels, left_out = [], [], 0
    for window_id in sorted(set(positive) | negative):
        found = positive.get(window_id, set())
        if len(found) > 1:
            left_out += 1
            continue
        ids.append(window_id)
        labels.append(next(iter(found)) if found else BACKGROUND)
    return np.array(ids, np.int64), labels, left_out


def stratified_split(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index arrays (train, val, test): per class 20% val and 20% test (at least one each), the rest train."""
    rng = np.random.default_rng(seed)
    parts: tuple[list, list, list] = ([], [], [])
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_held = max(1, int(round(0.2 * len(idx))))
        parts[1].extend(idx[:n_held])
        parts[2].extend(idx[n_held:2 * n_held])
        parts[0].extend(idx[2 * n_held:])
    return tuple(np.sort(np.array(p, np.int64)) for p in parts)


def precision_threshold(scores: np.ndarray, positive: np.ndarray, target: float) -> tuple[float, bool]:
    """The lowest threshold whose detections (score >= threshold) reach ``target`` precision; 1.0 when none does."""
    order = np.argsort(-scores, kind="stable")
    s, p = scores[order], positive[order]
    tp = np.cumsum(p)
    precision = tp / np.arange(1, len(s) + 1)
    best = None
    for i in range(len(s)):
        if i + 1 < len(s) and s[i + 1] == s[i]:
            continue  # a threshold keeps every window of equal score
        if p[:i + 1].any() and precision[i] >= target:
            best = float(s[i])
    return (best, True) if best is not None else (1.0, False)


def _linear_config(seed: int):
    from vocalprobe.training.probe import ProbeConfig

    class LinearProbeConfig(ProbeConfig):
        """The paper's protocol with no hidden block: z-score then one Linear layer."""

        def __post_init__(self) -> None:
            object.__setattr__(self, "hidden_sizes", ())

    return LinearProbeConfig(seed=seed)


def fit_head(db: str | Path, out_dir: str | Path, *, linear: bool = False, precision: float = 0.9, seed: int = 0,
             resamples: int = 1000) -> FitReport:
    from vocalprobe.training.probe import ProbeClassifier, ProbeConfig, ProbeInfo, save_probe

    if not 0.0 < precision <= 1.0:
        raise ArchiveProbeError(f"--precision must be within (0, 1], got {precision}")
    out_dir = Path(out_dir)
    with ArchiveDB.open_reader(db) as archive:
        settings = archive.settings()
        ids, labels, left_out = labelled_windows(archive)
        if len(ids) == 0:
            raise ArchiveProbeError(f"{db}: no annotated windows; import reviewed tables with `vocalprobe label "
                                    "import` first")
        X = archive.vectors(ids)
    classes = tuple(sorted(set(labels) - {BACKGROUND})) + ((BACKGROUND,) if BACKGROUND in labels else ())
    counts = {c: labels.count(c) for c in classes}
    if len(classes) < 2:
        raise ArchiveProbeError(f"a probe needs two classes, the annotations have {list(classes)}; add negative "
                                "examples (label import --class NAME with negative rows) or a second class")
    few = [f"{c} ({n})" for c, n in counts.items() if n < MIN_PER_CLASS]
    if few:
        raise ArchiveProbeError(f"label at least {MIN_PER_CLASS} windows per class (one each for train, val and "
                                f"test); too few: {', '.join(few)}")
    y = np.array([classes.index(label) for label in labels], np.int64)
    train, val, test = stratified_split(y, seed)
    config = _linear_config(seed) if linear else ProbeConfig(seed=seed)
    clf = ProbeClassifier(config).fit(X[train], y[train], X[val], y[val], n_classes=len(classes))
    test_pred = clf.predict(X[test])
    test_uar = uar(y[test], test_pred)
    ci = bootstrap_uar_ci(y[test], test_pred, n_resamples=resamples, seed=seed)
    held = np.concatenate([val, test])
    held_probs = clf.predict_proba(X[held])
    thresholds, reached = {}, {}
    held_out = {c: int(np.sum(y[held] == j)) for j, c in enumerate(classes)}
    too_few = tuple(c for c in classes if c != BACKGROUND and held_out[c] < MIN_HELD_OUT_PER_CLASS)
    for j, c in enumerate(classes):
        thresholds[c], reached[c] = precision_threshold(held_probs[:, j], y[held] == j, precision)
        if c in too_few:
            reached[c] = False
            log.warning("class %s: only %d held-out window(s) (fewer than %d): its threshold's precision and the "
                        "held-out UAR are not evidence; label at least %d windows per class", c, held_out[c],
                        MIN_HELD_OUT_PER_CLASS, RECOMMENDED_PER_CLASS)
        elif not reached[c] and c != BACKGROUND:
            log.warning("class %s: no threshold reaches precision %.2f on the held-out windows; set to 1.0", c,
                        precision)
    info = ProbeInfo(backbone=str(settings.get("backbone") or "archive"), backbone_id=settings["graph_file"],
                     backbone_revision=None, layer=int(settings.get("layer") or 0), labels=classes,
                     n_features=int(X.shape[1]), hidden_sizes=tuple(clf.model_.hidden_sizes),
                     val_uar=float(clf.best_val_uar_), test_uar=float(test_uar), seed=seed, dataset=str(db),
                     probe_config={} if linear else config.to_dict())
    out_dir.mkdir(parents=True, exist_ok=True)
    save_probe(out_dir / PROBE_STEM, clf.model_, info)
    head = HeadRecord(kind="linear" if linear else "mlp", classes=classes,
                      hidden_sizes=tuple(clf.model_.hidden_sizes), thresholds=thresholds, precision_target=precision,
                      precision_reached=reached, graph_sha256=settings["graph_sha256"],
                      embedding_dim=int(X.shape[1]), seed=seed, counts=counts,
                      split={"train": int(len(train)), "val": int(len(val)), "test": int(len(test))},
                      test_uar=float(test_uar), test_uar_ci95=(float(ci[0]), float(ci[1])),
                      val_uar=float(clf.best_val_uar_), database=str(Path(db).resolve()))
    atomic_write_text(out_dir / HEAD_JSON, head.to_json())
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("class", "threshold"))
    writer.writerows((c, repr(t)) for c, t in thresholds.items() if c != BACKGROUND)
    atomic_write_text(out_dir / THRESHOLDS_CSV, buffer.getvalue())
    return FitReport(classes, counts, len(train), len(val), len(test), float(test_uar), (float(ci[0]), float(ci[1])),
                     thresholds, reached, left_out, out_dir, held_out, too_few)
