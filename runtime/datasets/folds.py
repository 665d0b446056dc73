"""Group k-fold cross-validation folds: every clip is in exactly one fold's Test, and a group never spans two folds.

On a small dataset one 10% Test split holds a handful of clips per class, and its UAR moves by tens of points with
one clip. K folds score every clip once, each on probes that never saw its group. Folds are dealt like
scikit-learn's StratifiedGroupKFold: whole groups (or clips, when the manifest names none), largest first in a
seeded order, each to the fold where it brings every class closest to 1/K of its clips. Within a fold, Val is taken
from the other folds' groups (``splits.assign_splits`` with no Test share), so Train, Val and Test share no group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vocalprobe.runtime.core.errors import ManifestError
from vocalprobe.runtime.core.manifest import ManifestRow
from vocalprobe.runtime.datasets.splits import (DEFAULT_SEED, _units, assign_splits, clip_key, resolve_group_by,
                                                unit_class_counts)

#: Val's share of the clips outside a fold's Test: Train:Val = 70:20, as in the default split.
VAL_SHARE = 2 / 9


@dataclass(frozen=True)
class Folds:
    """Which fold's Test each manifest row is in (same order as the rows), and how they were dealt."""

    fold: tuple[int, ...]  # per row, 0 .. k-1
    k: int
    seed: int
    group_by: str  # "group" or "none"
    n_units: int  # groups (or clips) dealt

    def test_rows(self, fold: int) -> list[int]:
        return [i for i, f in enumerate(self.fold) if f == fold]


def assign_folds(rows: list[ManifestRow] | tuple[ManifestRow, ...], k: int, *, seed: int = DEFAULT_SEED,
                 group_by: str | None = None) -> Folds:
    """Deal the rows' groups (``group_by="group"``; None picks it when rows name groups) or clips into ``k`` folds."""
    if k < 2:
        raise ManifestError(f"--folds must be 2 or more, got {k}")
    group_by = resolve_group_by(rows, group_by)
    rows_of: dict = {}
    for i, row in enumerate(rows):
        rows_of.setdefault(clip_key(row), []).append(i)
    # per clip, each clip is its own unit (duplicate rows of a clip stay together either way)
    units = _units(rows, rows_of) if group_by == "group" else list(rows_of.values())
    if len(units) < k:
        unit = "groups" if group_by == "group" else "clips"
        raise ManifestError(f"{k} folds need at least {k} {unit}, the manifest has {len(units)}; use fewer folds")
    labels, counts = unit_class_counts(rows, units)
    totals = counts.sum(0)
    target = totals / k  # per class, in every fold
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(units))
    order = order[np.argsort(-counts[order].sum(1), kind="stable")]  # largest first, seeded among equal sizes
    have = np.zeros((k, len(labels)))
    fold_of_unit = np.zeros(len(units), dtype=int)
    for u in order:
        costs = []
        for f in range(k):
            trial = have[f] + counts[u]
            class_cost = (((trial - target) / totals) ** 2).sum() - (((have[f] - target) / totals) ** 2).sum()
            size_cost = ((trial.sum() - target.sum()) / totals.sum()) ** 2 - ((have[f].sum() - target.sum())
                                                                                / totals.sum()) ** 2
            costs.append((round(class_cost + size_cost, 12), have[f].sum(), f))  # ties: the emptiest, then lowest
        best = min(costs)[2]
        fold_of_unit[u] = best
        have[best] += counts[u]
    for f in range(k):  # a fold left empty takes the smallest unit of the fullest fold that can spare one
        if not (fold_of_unit == f).any():
            donor = max(range(k), key=lambda d: (fold_of_unit == d).sum())
            members = np.flatnonzero(fold_of_unit == donor)
            fold_of_unit[members[np.argmin(counts[members].sum(1))]] = f
    fold = [0] * len(rows)
    for u, indices in enumerate(units):
        for i in indices:
            fold[i] = int(fold_of_unit[u])
    return Folds(tuple(fold), k, seed, group_by, len(units))


def fold_rows(rows: list[ManifestRow] | tuple[ManifestRow, ...], folds: Folds, fold: int) -> list[ManifestRow]:
    """The rows (same order) split for one fold: its Test, and Train/Val dealt from the other folds' groups, seeded
    by ``folds.seed + fold``."""
    test = set(folds.test_rows(fold))
    rest = [i for i in range(len(rows)) if i not in test]
    if not rest:
        raise ManifestError(f"fold {fold} holds every clip; nothing is left to train on")
    split, _ = assign_splits([rows[i] for i in rest], seed=folds.seed + fold, ratios=(1 - VAL_SHARE, VAL_SHARE, 0.0),
                             stratify=True, group_by=folds.group_by)
    out = [row.with_split("test") for row in rows]
    for i, row in zip(rest, split):
        out[i] = row
    return out
