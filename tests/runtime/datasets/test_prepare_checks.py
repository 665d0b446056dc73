"""`data prepare` refuses bad data loudly: every file decoded, links kept as links, nothing skipped without a word."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from vocalprobe.cli import app
from vocalprobe.runtime.core.audio import AUDIO_EXTENSIONS
from vocalprobe.runtime.core.manifest import read_manifest
from vocalprobe.runtime.datasets import preparers

runner = CliRunner()


def wav(path: Path, samples: np.ndarray | None = None, subtype: str = "PCM_16", sr: int = 16_000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if samples is None:
        samples = np.random.default_rng(len(str(path))).uniform(-.3, .3, sr // 5).astype(np.float32)
    sf.write(path, samples, sr, subtype=subtype)
    return path


def bad_files(folder: Path) -> set[str]:
    """One file of each kind a header check lets through or libsndfile refuses; returns their names."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero.wav").write_bytes(b"")
    (folder / "text.wav").write_text("not audio\n" * 40)
    cut = wav(folder / "truncated.wav").read_bytes()
    (folder / "truncated.wav").write_bytes(cut[: len(cut) // 2])
    nan = np.full(3200, 0.1, np.float32)
    nan[1000] = np.nan
    wav(folder / "nan.wav", nan, subtype="FLOAT")
    flac = folder / "corrupt.flac"
    sf.write(flac, np.random.default_rng(1).uniform(-.5, .5, 48_000).astype(np.float32), 16_000)
    data = bytearray(flac.read_bytes())
    for k in range(len(data) // 2, len(data) // 2 + 2000):  # scramble frames in the middle, keep the header
        data[k] = (data[k] * 7 + 13) % 256
    flac.write_bytes(bytes(data))
    assert sf.info(str(flac)).frames == 48_000  # the header alone looks fine
    return {"zero.wav", "text.wav", "truncated.wav", "nan.wav", "corrupt.flac"}


def good_files(folder: Path, n: int = 3) -> set[str]:
    return {wav(folder / f"ok{i}.wav").name for i in range(n)}


def prepare(src: Path, out: Path, *extra: str):
    return runner.invoke(app, ["data", "prepare", "folders", str(src), "--out", str(out), *extra])


def test_every_bad_file_is_listed_and_no_manifest_is_written(tmp_path):
    good_files(tmp_path / "src" / "owl")
    bad = bad_files(tmp_path / "src" / "frog")
    good_files(tmp_path / "src" / "frog", 2)
    result = prepare(tmp_path / "src", tmp_path / "out")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    for name in bad:
        assert f"problem: {tmp_path / 'src' / 'frog' / name}: " in result.output
    assert "error: 5 unusable file(s)" in result.output and "--skip-bad" in result.output
    assert not (tmp_path / "out" / "manifest.csv").exists()
    with (tmp_path / "out" / "errors.csv").open(newline="") as handle:
        listed = {Path(r["path"]).name: r["problem"] for r in csv.DictReader(handle)}
    assert set(listed) == bad
    assert "NaN" in listed["nan.wav"] and "truncated" in listed["truncated.wav"]
    assert "0 bytes" in listed["zero.wav"] and "flac decoder" in listed["corrupt.flac"]


def test_skip_bad_leaves_them_out_and_reports_them(tmp_path):
    good = good_files(tmp_path / "src" / "frog") | good_files(tmp_path / "src" / "owl")
    bad = bad_files(tmp_path / "src" / "frog")
    result = prepare(tmp_path / "src", tmp_path / "out", "--skip-bad")
    assert result.exit_code == 0, result.output
    assert sum(line.startswith("left out: ") for line in result.output.splitlines()) == len(bad)
    manifest = read_manifest(tmp_path / "out" / "manifest.csv")
    assert {Path(r.path).name for r in manifest} == good
    assert (tmp_path / "out" / "errors.csv").is_file()
    for name in bad:  # a clean run afterwards leaves no stale errors.csv behind
        (tmp_path / "src" / "frog" / name).unlink()
    assert prepare(tmp_path / "src", tmp_path / "out").exit_code == 0
    assert not (tmp_path / "out" / "errors.csv").exists()


def test_files_not_processed_are_counted(tmp_path):
    good_files(tmp_path / "src" / "owl")
    (tmp_path / "src" / "owl" / "notes.txt").write_text("field notes")
    (tmp_path / "src" / "owl" / "._ok0.wav").write_bytes(b"\0" * 10)  # macOS AppleDouble file
    wav(tmp_path / "src" / "loose.wav")  # not inside a class folder
    prepared = preparers.prepare_folders(tmp_path / "src", tmp_path / "out")
    assert len(prepared.rows) == 3 and not prepared.problems
    assert sum(prepared.skipped.values()) == 3
    result = prepare(tmp_path / "src", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "1 file not processed: not inside a class folder" in result.output
    assert "1 file not processed: hidden" in result.output
    assert "1 file not processed: not wav/flac/ogg" in result.output


@pytest.mark.skipif(".mp3" not in AUDIO_EXTENSIONS, reason="this libsndfile cannot read MP3")
def test_mp3_is_listed(tmp_path):
    path = tmp_path / "src" / "owl" / "call.MP3"
    path.parent.mkdir(parents=True)
    sf.write(path, np.random.default_rng(0).uniform(-.3, .3, 16_000).astype(np.float32), 16_000, format="MP3")
    rows = preparers.prepare_folders(tmp_path / "src", tmp_path / "out").rows
    assert [Path(r.path).name for r in rows] == ["call.MP3"]


def test_symlinks_keep_their_path_and_may_not_leave_the_tree(tmp_path):
    src = tmp_path / "src"
    good_files(src / "owl")
    outside = wav(tmp_path / "elsewhere" / "far.wav")
    (src / "frog").mkdir()
    (src / "frog" / "inside.wav").symlink_to(src / "owl" / "ok0.wav")  # same audio as owl/ok0.wav
    (src / "frog" / "own.wav").symlink_to(wav(src / ".store" / "frog1.wav"))  # a hidden store
    (src / "frog" / "far.wav").symlink_to(outside)
    (src / "toad").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    prepared = preparers.prepare_folders(src, tmp_path / "out")
    problems = {Path(p.path).name: p.problem for p in prepared.problems}
    assert "leaves the source folder" in problems["far.wav"] and "--follow-links" in problems["far.wav"]
    assert "leaves the source folder" in problems["toad"]
    assert "same file as" in problems["ok0.wav"] and "frog/inside.wav" in problems["ok0.wav"]  # frog/ is listed first
    paths = {r.path for r in prepared.rows}
    assert "../src/frog/own.wav" in paths  # the link, not its target src/.store/frog1.wav
    assert not any("elsewhere" in p for p in paths)

    followed = preparers.prepare_folders(src, tmp_path / "out", follow_links=True)
    paths = {r.path for r in followed.rows}
    assert {"../src/frog/far.wav", "../src/toad/far.wav"} & paths == {"../src/frog/far.wav"}  # one file, once
    assert not any("elsewhere" in p for p in paths)

    result = prepare(src, tmp_path / "out")
    assert result.exit_code == 1 and "far.wav" in result.output and "Traceback" not in result.output


def test_symlink_loop_and_broken_link_are_reported(tmp_path):
    src = tmp_path / "src"
    good_files(src / "owl")
    (src / "owl" / "again").symlink_to(src / "owl", target_is_directory=True)
    (src / "owl" / "self.wav").symlink_to(src / "owl" / "self.wav")
    (src / "owl" / "gone.wav").symlink_to(src / "owl" / "deleted.wav")
    prepared = preparers.prepare_folders(src, tmp_path / "out")
    problems = {Path(p.path).name: p.problem for p in prepared.problems}
    assert "symlink loop" in problems["again"]
    assert "symlink loop" in problems["self.wav"]
    assert "broken symlink" in problems["gone.wav"]
    assert len(prepared.rows) == 3


def test_unreadable_audio_inside_imv_is_a_file_problem(tmp_path):
    src = tmp_path / "imv"
    wav(src / "data" / "twin_1" / "rec_1.wav", sr=44_100, samples=np.full(44_100 * 2, .1, np.float32))
    (src / "data" / "twin_1" / "rec_2.wav").write_text("not audio")
    (src / "labels.csv").write_text("filename,start,end,duration,calltype,caller\n"
                                    "rec_1.wav,0.1,0.3,0.2,Phee,A1\nrec_2.wav,0.1,0.3,0.2,Phee,A1\n"
                                    "rec_2.wav,0.5,0.7,0.2,Trill,A1\n")
    prepared = preparers.prepare_imv(src, tmp_path / "out")
    assert [r.label for r in prepared.rows] == ["Phee"]
    assert [Path(p.path).name for p in prepared.problems] == ["rec_2.wav"]  # reported once, not per segment


def test_watkins_annotation_leaving_the_tree_is_refused(tmp_path):
    src = tmp_path / "watkins"
    wav(src / "a.wav")
    wav(tmp_path / "outside.wav")
    (src / "annotations.csv").write_text("path,species\na.wav,X\n../outside.wav,Y\n")
    prepared = preparers.prepare_watkins(src, tmp_path / "out")
    assert [r.label for r in prepared.rows] == ["X"]
    assert "outside the source folder" in prepared.problems[0].problem
    (src / "annotations.csv").write_text("path,species\na.wav,X,extra\n")
    with pytest.raises(preparers.DatasetError, match="line 2: 3 fields, the header has 2"):
        preparers.prepare_watkins(src, tmp_path / "out")


def test_manifest_paths_are_relative_to_the_real_output_folder(tmp_path):
    """A symlinked --out still gives paths that resolve from the manifest's (resolved) folder."""
    good_files(tmp_path / "src" / "owl")
    (tmp_path / "real_out").mkdir()
    os.symlink(tmp_path / "real_out", tmp_path / "out_link")
    assert prepare(tmp_path / "src", tmp_path / "out_link").exit_code == 0
    manifest = read_manifest(tmp_path / "out_link" / "manifest.csv")
    assert all(manifest.audio_path(r).is_file() for r in manifest)
