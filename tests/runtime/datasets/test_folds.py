"""Group k-fold folds: group-disjoint, every clip once in Test, stratified, seeded; a fold's Train/Val/Test share
no group."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from vocalprobe.runtime.core.errors import ManifestError
from vocalprobe.runtime.core.manifest import ManifestRow
from vocalprobe.runtime.datasets.folds import assign_folds, fold_rows


def grouped_rows(seed: int = 0) -> list[ManifestRow]:
    """30 individuals of 3 classes with 1..7 clips each; one clip listed twice."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(30):
        label = ("a", "b", "c")[g % 3]
        for j in range(int(rng.integers(1, 8))):
            rows.append(ManifestRow(f"clips/{g}_{j}.wav", label, group=f"ind{g}"))
    return rows + [rows[0]]


@pytest.mark.parametrize("k", [2, 3, 5])
def test_folds_are_group_disjoint_and_cover_every_clip_once_as_test(k):
    rows = grouped_rows()
    folds = assign_folds(rows, k, seed=7)
    assert folds.group_by == "group" and folds.n_units == 30 and len(folds.fold) == len(rows)
    fold_of_group: dict[str, set] = {}
    for row, f in zip(rows, folds.fold):
        fold_of_group.setdefault(row.group, set()).add(f)
    assert all(len(f) == 1 for f in fold_of_group.values())  # a group in one fold only
    assert sorted(i for f in range(k) for i in folds.test_rows(f)) == list(range(len(rows)))  # once each
    tested = Counter()
    for f in range(k):
        split = fold_rows(rows, folds, f)
        assert [r.path for r in split] == [r.path for r in rows]  # same rows, same order
        assert {i for i, r in enumerate(split) if r.split == "test"} == set(folds.test_rows(f))
        groups = {s: {r.group for r in split if r.split == s} for s in ("train", "val", "test")}
        assert all(groups[s] for s in groups)  # no empty split
        assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"])
        assert not (groups["val"] & groups["test"])
        for i, r in enumerate(split):
            tested[i] += r.split == "test"
    assert set(tested.values()) == {1}


def test_folds_are_stratified_by_class_and_balanced_in_size():
    rows = grouped_rows(1)
    folds = assign_folds(rows, 3, seed=0)
    totals = Counter(r.label for r in rows)
    for f in range(3):
        in_test = Counter(rows[i].label for i in folds.test_rows(f))
        for label, n in totals.items():
            assert abs(in_test[label] - n / 3) <= 4, (f, label, in_test, totals)  # groups hold up to 7 clips


def test_folds_are_reproducible_from_the_seed_and_change_with_it():
    rows = grouped_rows()
    assert assign_folds(rows, 4, seed=3) == assign_folds(rows, 4, seed=3)
    assert fold_rows(rows, assign_folds(rows, 4, seed=3), 1) == fold_rows(rows, assign_folds(rows, 4, seed=3), 1)
    assert assign_folds(rows, 4, seed=3).fold != assign_folds(rows, 4, seed=4).fold


def test_without_groups_the_unit_is_the_clip_and_duplicates_stay_together():
    rows = [ManifestRow(f"c{i}.wav", "ab"[i % 2]) for i in range(12)]
    rows.append(rows[3])
    folds = assign_folds(rows, 3, seed=0)
    assert folds.group_by == "none" and folds.n_units == 12
    assert folds.fold[3] == folds.fold[12]
    assert sorted(len(folds.test_rows(f)) for f in range(3)) == [4, 4, 5]


def test_too_few_groups_or_folds_are_clear_errors():
    rows = [ManifestRow(f"c{i}.wav", "ab"[i % 2], group=f"g{i % 2}") for i in range(6)]
    with pytest.raises(ManifestError, match="3 folds need at least 3 groups, the manifest has 2"):
        assign_folds(rows, 3)
    with pytest.raises(ManifestError, match="2 or more"):
        assign_folds(rows, 1)
