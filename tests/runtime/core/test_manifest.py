"""Manifests (runtime/core/manifest.py): round trip, content hash, invalid files; atomic outputs."""

from __future__ import annotations

import pytest

from vocalprobe.runtime.core.errors import ManifestError
from vocalprobe.runtime.core.manifest import ManifestRow, read_manifest, write_manifest


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
    ("path,label\na.wav,x\n\nb.wav,owl, juvenile\n", "line 4: 3 fields, the header has 2 .*double quotes"),
    ("path,label,start,end\na.wav,x,0,inf\n", "line 2: end must be a finite number of seconds, got 'inf'"),
    ("path,label,start,end\na.wav,x,1e400,\n", "line 2: start must be a finite number of seconds, got '1e400'"),
    ("path,label,start\na.wav,x,nan\n", "start must be a finite number"),
])
def test_invalid_manifests(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ManifestError, match=message):
        read_manifest(path)


def test_atomic_outputs_get_normal_permissions(tmp_path):
    import os
    import stat

    from vocalprobe.runtime.core.atomic import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "table.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "table.txt").stat().st_mode) == 0o644


def test_latin1_manifest_names_the_line(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes("path,label\na.wav,owl\nb.wav,mésange\n".encode("latin-1"))
    with pytest.raises(ManifestError, match="m.csv: manifest is not UTF-8 \\(line 3\\): re-save it as UTF-8"):
        read_manifest(path)


def test_quoted_comma_in_a_label_is_kept(tmp_path):
    path = tmp_path / "m.csv"
    write_manifest(path, [ManifestRow("a.wav", "owl, juvenile")])
    assert read_manifest(path).rows[0].label == "owl, juvenile"


def test_full_disk_error_names_the_manifest(tmp_path, monkeypatch):
    """ENOSPC surfaces in fsync, with no file name; write_manifest adds it so the CLI can name the file."""
    import errno
    import os

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError) as caught:
        write_manifest(tmp_path / "m.csv", rows({"a": 2}))
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "m.csv")
    assert not list(tmp_path.iterdir())  # no half-written manifest, no temp file


def test_unknown_columns_are_kept_ignored_and_left_out_of_the_hash(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("path,label,country,recordist,group\na.wav,x,France,Ann,s1\nb.wav,y,,Bob,s2\n")
    loaded = read_manifest(path)
    assert loaded.unused_columns == ("country", "recordist")
    assert [(r.path, r.label, r.group) for r in loaded] == [("a.wav", "x", "s1"), ("b.wav", "y", "s2")]
    write_manifest(path, loaded.with_rows(r.with_split("train") for r in loaded))
    again = read_manifest(path)
    assert again.rows[1].extra == ("", "Bob") and again.unused_columns == ("country", "recordist")
    assert path.read_text().splitlines()[0] == "path,label,split,group,country,recordist"
    plain = tmp_path / "plain.csv"
    plain.write_text("path,label,group\na.wav,x,s1\nb.wav,y,s2\n")
    assert read_manifest(plain).content_hash() == write_manifest(tmp_path / "p.csv", loaded).content_hash()
