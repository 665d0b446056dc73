"""Manifests (CSV round trip, validation) and the seeded 70:20:10 split."""

from __future__ import annotations

from collections import Counter

import pytest

from vocalprobe.runtime.errors import ManifestError
from vocalprobe.runtime.manifest import ManifestRow, read_manifest, write_manifest
from vocalprobe.runtime.splits import assign_splits


def rows(n_per_class: dict[str, int]) -> list[ManifestRow]:
    return [ManifestRow(f"{label}/{i}.wav", label) for label, n in n_per_class.items() for i in range(n)]


def test_round_trip_and_relative_paths(tmp_path):
    original = [ManifestRow("a/1.wav", "x", 1.5, 2.25, "train", "caller1"), ManifestRow("b/2.wav", "y")]
    path = tmp_path / "sub" / "manifest.csv"
    write_manifest(path, original)
    loaded = read_manifest(path)
    assert list(loaded.rows) == original
    assert loaded.audio_path(loaded.rows[0]) == (tmp_path / "sub" / "a" / "1.wav").resolve()
    assert loaded.labels == ["x", "y"]
    assert not list(path.parent.glob(".*tmp"))  # atomic write leaves no temp file behind


def test_content_hash_changes_with_any_field(tmp_path):
    base = write_manifest(tmp_path / "m.csv", rows({"a": 3}))
    changed = write_manifest(tmp_path / "n.csv", [r.with_split("val") if i == 0 else r for i, r in enumerate(base)])
    assert base.content_hash() != changed.content_hash()
    assert base.content_hash() == read_manifest(tmp_path / "m.csv").content_hash()


@pytest.mark.parametrize("text,message", [
    ("path,lable\na.wav,x\n", "missing column\\(s\\) label; unknown column\\(s\\) lable"),
    ("path,label\n", "no rows"),
    ("path,label\na.wav,\n", "line 2: path and label must not be empty"),
    ("path,label,start,end\na.wav,x,2,1\n", "line 2: end \\(1.0\\) must be after start"),
    ("path,label,start\na.wav,x,abc\n", "start must be a number"),
    ("path,label,split\na.wav,x,dev\n", "split must be one of"),
])
def test_invalid_manifests(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ManifestError, match=message):
        read_manifest(path)


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


def test_atomic_outputs_get_normal_permissions(tmp_path):
    import os
    import stat

    from vocalprobe.runtime.atomic import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "table.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "table.txt").stat().st_mode) == 0o644
