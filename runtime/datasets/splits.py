"""A seeded 70:20:10 Train/Val/Test split, written into the manifest: per group, or per clip (the paper's protocol).

Clips of one individual or recording are alike; scored on a Test split that shares them with Train, a probe can score
100% by recognising the individual, not the call. So when the manifest names groups (its ``group`` column) the unit of
the split is the group (``group_by="group"``, the default then): each group lands in one split, groups are dealt so
that every class comes close to 70:20:10 (a greedy, seeded version of scikit-learn's StratifiedGroupKFold idea). The
paper's per-clip protocol stays available as ``group_by="none"``.

With ``stratify`` every class is split on its own, so small classes still reach Val and Test where they can. A class
too small to appear in every split is kept (never dropped) and reported, so the user knows which scores it can't enter.
The unit of the split is the clip (path, start, end), not the row: duplicate rows share one split, so the same audio can
never be trained on and tested on, and they are reported.
"""

from __future__ import annotations

import posixpath
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from vocalprobe.runtime.core.errors import ManifestError
from vocalprobe.runtime.core.manifest import SPLITS, ManifestRow

DEFAULT_RATIOS = (0.7, 0.2, 0.1)
DEFAULT_SEED = 42
GROUP_BY = ("group", "none")  # the unit of the split: the manifest's group, or the clip (the paper's protocol)


ClipKey = tuple[str, float | None, float | None]


def clip_key(row: ManifestRow) -> ClipKey:
    """What makes two rows the same clip: the same audio (normalised path) and the same start and end."""
    return posixpath.normpath(row.path.replace("\\", "/")), row.start, row.end


@dataclass
class SplitReport:
    counts: dict[str, Counter] = field(default_factory=dict)  # label -> Counter(split -> n)
    duplicates: dict[ClipKey, list[str]] = field(default_factory=dict)  # clip -> labels of its rows (2 or more)
    group_by: str = "none"
    groups: dict[str, int] = field(default_factory=dict)  # split -> number of groups in it (group_by="group")

    @property
    def incomplete_classes(self) -> dict[str, list[str]]:
        """Classes missing from at least one split, with the splits they miss."""
        return {label: [s for s in SPLITS if c[s] == 0] for label, c in sorted(self.counts.items())
                if any(c[s] == 0 for s in SPLITS)}

    def warnings(self) -> list[str]:
        out = [f"class {label!r} ({sum(self.counts[label].values())} clips) has no clips in {', '.join(missing)}; "
               "it is kept, but cannot be scored there" for label, missing in self.incomplete_classes.items()]
        for (path, start, end), labels in self.duplicates.items():
            where = path if start is None and end is None else f"{path} [{start}-{end} s]"
            conflict = f", with different labels ({', '.join(sorted(set(labels)))})" if len(set(labels)) > 1 else ""
            out.append(f"{where} is listed {len(labels)} times{conflict}; its rows are kept in one split")
        return out


def resolve_group_by(rows, group_by: str | None) -> str:
    """``None`` (the default): by group when any row names one, else per clip; an explicit choice is checked."""
    if group_by is None:
        return "group" if any(row.group for row in rows) else "none"
    if group_by not in GROUP_BY:
        raise ManifestError(f"group_by must be one of {', '.join(GROUP_BY)}, got {group_by!r}")
    if group_by == "group" and not any(row.group for row in rows):
        raise ManifestError("--group-by group: the manifest has no group column (or it is empty); add one (the "
                            "individual or recording of each clip) or split per clip with --group-by none")
    return group_by


def _cut(n: int, ratios: tuple[float, float, float]) -> tuple[int, int]:
    """Boundaries of Train and Val in a shuffled list of n items (rounded cumulative fractions)."""
    first = int(round(n * ratios[0]))
    second = int(round(n * (ratios[0] + ratios[1])))
    return first, max(first, second)


def assign_splits(rows: list[ManifestRow] | tuple[ManifestRow, ...], *, seed: int = DEFAULT_SEED,
                  ratios: tuple[float, float, float] = DEFAULT_RATIOS, stratify: bool = False,
                  group_by: str | None = None) -> tuple[list[ManifestRow], SplitReport]:
    """Return the rows (same order) with ``split`` set, and a report of per-class split counts.

    ``group_by``: "group" keeps each group in one split (always balanced per class; ``stratify`` is not needed),
    "none" splits per clip (the paper's protocol; ``stratify`` splits every class on its own), None picks "group"
    when the rows name groups.
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise ManifestError(f"split ratios must be three non-negative numbers summing to 1, got {ratios}")
    group_by = resolve_group_by(rows, group_by)
    rng = np.random.default_rng(seed)
    rows_of: dict[ClipKey, list[int]] = {}  # clip -> its rows, in first-appearance order
    for i, row in enumerate(rows):
        rows_of.setdefault(clip_key(row), []).append(i)
    if group_by == "group":
        return _by_group(rows, rows_of, rng, ratios)
    clips = list(rows_of)  # without duplicates, clip k is row k: the seeded split is the one rows always had
    if stratify:
        by_label: dict[str, list[int]] = defaultdict(list)
        for k, key in enumerate(clips):
            by_label[rows[rows_of[key][0]].label].append(k)
        pools = [by_label[label] for label in sorted(by_label)]
    else:
        pools = [list(range(len(clips)))]
    split_of: dict[int, str] = {}
    for pool in pools:
        order = [pool[j] for j in rng.permutation(len(pool))]
        first, second = _cut(len(order), ratios)
        for rank, k in enumerate(order):
            for index in rows_of[clips[k]]:
                split_of[index] = "train" if rank < first else "val" if rank < second else "test"
    return _finish(rows, rows_of, split_of, SplitReport())


def _finish(rows, rows_of: dict[ClipKey, list[int]], split_of: dict[int, str],
            report: SplitReport) -> tuple[list[ManifestRow], SplitReport]:
    out = [row.with_split(split_of[i]) for i, row in enumerate(rows)]
    report.duplicates = {key: [rows[i].label for i in indices] for key, indices in rows_of.items() if len(indices) > 1}
    for row in out:
        report.counts.setdefault(row.label, Counter())[row.split] += 1
    return out, report


def _units(rows, rows_of: dict[ClipKey, list[int]]) -> list[list[int]]:
    """Row indices per unit of a group split: rows of one group, or of one clip, are one unit (a clip listed under
    two groups joins them). A row without a group is a unit of its own clip. In first-appearance order."""
    parent: dict = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for key, indices in rows_of.items():
        for i in indices:
            if rows[i].group:
                parent[find(("clip", key))] = find(("group", rows[i].group))
    members: dict = {}
    for key, indices in rows_of.items():
        members.setdefault(find(("clip", key)), []).extend(indices)
    return list(members.values())


def unit_class_counts(rows, units: list[list[int]]) -> tuple[list[str], np.ndarray]:
    """The sorted labels and, per unit (a group's or a clip's row indices), its rows per label."""
    labels = sorted({row.label for row in rows})
    column = {label: j for j, label in enumerate(labels)}
    counts = np.zeros((len(units), len(labels)))
    for u, indices in enumerate(units):
        for i in indices:
            counts[u, column[rows[i].label]] += 1
    return labels, counts


def _by_group(rows, rows_of: dict[ClipKey, list[int]], rng: np.random.Generator,
              ratios: tuple[float, float, float]) -> tuple[list[ManifestRow], SplitReport]:
    """Deal whole groups to splits: largest first (seeded order among equals), each to the split where it brings
    every class's counts closest to its 70:20:10 targets; then no split that should have data is left empty."""
    units = _units(rows, rows_of)
    labels, counts = unit_class_counts(rows, units)
    totals = counts.sum(0)
    share = np.asarray(ratios, dtype=float)
    target = share[:, None] * totals[None, :]  # (3 splits, classes)
    order = rng.permutation(len(units))
    order = order[np.argsort(-counts[order].sum(1), kind="stable")]  # largest first, seeded among equal sizes
    have = np.zeros_like(target)
    split_of_unit = np.zeros(len(units), dtype=int)
    for u in order:
        costs = []
        for s in range(3):
            trial = have.copy()
            trial[s] += counts[u]
            class_cost = (((trial - target) / totals) ** 2).sum()
            size_cost = (((trial.sum(1) - target.sum(1)) / totals.sum()) ** 2).sum()
            deficit = (target[s].sum() - have[s].sum()) / max(target[s].sum(), 1e-9)  # ties: the emptiest split
            costs.append((round(class_cost + size_cost, 12), -deficit, s))
        best = min(c for c in costs if share[c[2]] > 0)[2]
        split_of_unit[u] = best
        have[best] += counts[u]
    for s in (2, 1):  # Test, then Val: give an empty split the smallest group of the fullest split that can spare one
        if share[s] > 0 and not (split_of_unit == s).any():
            donors = [d for d in (0, 1, 2) if d != s and (split_of_unit == d).sum() > 1]
            if donors:
                donor = max(donors, key=lambda d: (split_of_unit == d).sum())
                members = np.flatnonzero(split_of_unit == donor)
                split_of_unit[members[np.argmin(counts[members].sum(1))]] = s
    split_of = {i: SPLITS[split_of_unit[u]] for u, indices in enumerate(units) for i in indices}
    report = SplitReport(group_by="group", groups={name: int((split_of_unit == s).sum())
                                                   for s, name in enumerate(SPLITS)})
    return _finish(rows, rows_of, split_of, report)
