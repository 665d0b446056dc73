"""The paper's protocol: a seeded random 70:20:10 Train/Val/Test split, written into the manifest.

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


ClipKey = tuple[str, float | None, float | None]


def clip_key(row: ManifestRow) -> ClipKey:
    """What makes two rows the same clip: the same audio (normalised path) and the same start and end."""
    return posixpath.normpath(row.path.replace("\\", "/")), row.start, row.end


@dataclass
class SplitReport:
    counts: dict[str, Counter] = field(default_factory=dict)  # label -> Counter(split -> n)
    duplicates: dict[ClipKey, list[str]] = field(default_factory=dict)  # clip -> labels of its rows (2 or more)

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


def _cut(n: int, ratios: tuple[float, float, float]) -> tuple[int, int]:
    """Boundaries of Train and Val in a shuffled list of n items (rounded cumulative fractions)."""
    first = int(round(n * ratios[0]))
    second = int(round(n * (ratios[0] + ratios[1])))
    return first, max(first, second)


def assign_splits(rows: list[ManifestRow] | tuple[ManifestRow, ...], *, seed: int = DEFAULT_SEED,
                  ratios: tuple[float, float, float] = DEFAULT_RATIOS,
                  stratify: bool = False) -> tuple[list[ManifestRow], SplitReport]:
    """Return the rows (same order) with ``split`` set, and a report of per-class split counts."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise ManifestError(f"split ratios must be three non-negative numbers summing to 1, got {ratios}")
    rng = np.random.default_rng(seed)
    rows_of: dict[ClipKey, list[int]] = {}  # clip -> its rows, in first-appearance order
    for i, row in enumerate(rows):
        rows_of.setdefault(clip_key(row), []).append(i)
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
    out = [row.with_split(split_of[i]) for i, row in enumerate(rows)]
    report = SplitReport(duplicates={key: [rows[i].label for i in indices] for key, indices in rows_of.items()
                                     if len(indices) > 1})
    for row in out:
        report.counts.setdefault(row.label, Counter())[row.split] += 1
    return out, report
