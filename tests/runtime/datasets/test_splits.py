"""Seeded 70:20:10 splits (runtime/datasets/splits.py)."""

from __future__ import annotations

from collections import Counter

import pytest

from vocalprobe.runtime.core.errors import ManifestError
from vocalprobe.runtime.core.manifest import ManifestRow, write_manifest
from vocalprobe.runtime.datasets.splits import assign_splits


def rows(n_per_class: dict[str, int]) -> list[ManifestRow]:
    return [ManifestRow(f"{label}/{i}.wav", label) for label, n in n_per_class.items() for i in range(n)]


def test_split_requires_split_column(tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", rows({"a": 3}))
    with pytest.raises(ManifestError, match="no split column"):
        manifest.split("train")


def test_split_is_70_20_10_and_seeded():
    data = rows({"a": 50, "b": 30, "c": 20})
    first, _ = assign_splits(data, seed=42)
    again, _ = assign_splits(data, seed=42)
    other, _ = assign_splits(data, seed=7)
    assert [r.split for r in first] == [r.split for r in again]
    assert [r.split for r in first] != [r.split for r in other]
    assert Counter(r.split for r in first) == {"train": 70, "val": 20, "test": 10}
    assert [r.path for r in first] == [r.path for r in data]  # order kept


def test_stratified_split_keeps_class_proportions():
    out, report = assign_splits(rows({"a": 50, "b": 30, "c": 20}), seed=1, stratify=True)
    counts = report.counts
    assert counts["a"] == {"train": 35, "val": 10, "test": 5}
    assert counts["b"] == {"train": 21, "val": 6, "test": 3}
    assert counts["c"] == {"train": 14, "val": 4, "test": 2}


def test_tiny_classes_are_kept_and_reported():
    out, report = assign_splits(rows({"big": 40, "rare": 2, "single": 1}), seed=0, stratify=True)
    assert Counter(r.label for r in out) == {"big": 40, "rare": 2, "single": 1}
    assert set(report.incomplete_classes) == {"rare", "single"}
    assert any("'single' (1 clips) has no clips in val, test" in w for w in report.warnings())


def test_bad_ratios():
    with pytest.raises(ManifestError, match="summing to 1"):
        assign_splits(rows({"a": 3}), ratios=(0.5, 0.2, 0.2))


def test_duplicate_clips_share_one_split_and_are_reported():
    unique = rows({"a": 30, "b": 20})
    doubled = [r for r in unique for _ in range(2)] + [ManifestRow("./a/0.wav", "b")]  # same clip, another label
    for stratify in (False, True):
        out, report = assign_splits(doubled, seed=3, stratify=stratify)
        split_of: dict[str, set[str]] = {}
        for row in out:
            split_of.setdefault(row.path.removeprefix("./"), set()).add(row.split)
        assert all(len(splits) == 1 for splits in split_of.values())
        assert len(report.duplicates) == 50
        assert any("a/0.wav is listed 3 times, with different labels (a, b)" in w for w in report.warnings())


def test_segments_of_one_file_are_different_clips():
    segments = [ManifestRow("long.wav", "a", float(i), float(i + 1)) for i in range(10)]
    out, report = assign_splits(segments, seed=0)
    assert not report.duplicates and len({r.split for r in out}) > 1


def test_without_duplicates_the_split_is_unchanged():
    """The seeded split of a duplicate-free manifest is what it always was (existing manifests keep their splits)."""
    out, _ = assign_splits(rows({"a": 6, "b": 4}), seed=42)
    assert [r.split for r in out] == ["train", "val", "train", "train", "train", "train", "train", "train", "test",
                                      "val"]  # what assign_splits gave before duplicates were handled


def grouped(n_groups: int, per_class: dict[str, int]) -> list[ManifestRow]:
    """``n_groups`` individuals, each with ``per_class[label]`` clips of every class."""
    return [ManifestRow(f"ind{g}/{label}{i}.wav", label, group=f"ind{g}") for g in range(n_groups)
            for label, n in per_class.items() for i in range(n)]


def groups_per_split(out: list[ManifestRow]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for row in out:
        found.setdefault(row.split, set()).add(row.group)
    return found


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_a_manifest_with_groups_is_split_by_group_by_default(seed):
    out, report = assign_splits(grouped(12, {"a": 3, "b": 2, "c": 4}), seed=seed)
    found = groups_per_split(out)
    assert report.group_by == "group"
    assert not (found["train"] & found["test"]) and not (found["train"] & found["val"])
    assert not (found["val"] & found["test"])
    assert all(found[s] for s in ("train", "val", "test"))
    assert sum(report.groups.values()) == 12
    for label, counts in report.counts.items():  # every class in every split, close to 70:20:10 in groups
        assert all(counts[s] > 0 for s in ("train", "val", "test")), (label, counts)
        assert counts["train"] > counts["val"] >= counts["test"]


def test_group_split_is_seeded_and_deterministic():
    data = grouped(20, {"a": 2, "b": 3})
    first, _ = assign_splits(data, seed=5)
    assert [r.split for r in first] == [r.split for r in assign_splits(data, seed=5)[0]]
    assert [r.split for r in first] != [r.split for r in assign_splits(data, seed=6)[0]]


def test_small_groups_still_give_every_split_a_group():
    out, report = assign_splits(grouped(5, {"a": 2, "b": 2}), seed=1)
    assert report.groups == {"train": 3, "val": 1, "test": 1}


def test_per_clip_protocol_is_kept_and_named():
    data = grouped(8, {"a": 3, "b": 3})
    out, report = assign_splits(data, seed=42, group_by="none")
    assert report.group_by == "none"
    found = groups_per_split(out)
    assert found["train"] & found["test"]  # the paper's protocol: individuals shared (what group_by="group" avoids)
    assert [r.split for r in out] == [r.split for r in assign_splits([r.__class__(r.path, r.label) for r in data],
                                                                     seed=42)[0]]


def test_group_by_group_without_groups_is_an_error():
    with pytest.raises(ManifestError, match="no group column"):
        assign_splits(rows({"a": 5}), group_by="group")
    with pytest.raises(ManifestError, match="group_by must be one of"):
        assign_splits(rows({"a": 5}), group_by="individual")


def test_a_clip_listed_under_two_groups_joins_them():
    data = grouped(10, {"a": 2, "b": 2})
    data.append(ManifestRow(data[0].path, "a", group="ind9"))  # ind0's first clip again, under ind9
    out, _ = assign_splits(data, seed=3)
    split_of = {}
    for row in out:
        split_of.setdefault(row.group, set()).add(row.split)
    assert split_of["ind0"] == split_of["ind9"] and len(split_of["ind0"]) == 1
