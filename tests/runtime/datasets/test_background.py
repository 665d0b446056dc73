"""`data prepare folders SRC --background DIR`: field recordings cut into a grouped `background` class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
from typer.testing import CliRunner

from vocalprobe.cli import app
from vocalprobe.runtime.core.audio import read_audio
from vocalprobe.runtime.core.manifest import read_manifest

runner = CliRunner()


def write(path: Path, seconds: float, sr: int = 16_000, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.1 * np.random.default_rng(seed).normal(size=int(seconds * sr))).astype(np.float32), sr)
    return path


def dataset(root: Path) -> tuple[Path, Path]:
    for label in ("owl", "wren"):
        for i in range(6):
            write(root / "src" / label / f"{i}.wav", (1.0, 2.0, 2.0)[i % 3], seed=i)
    write(root / "field" / "night.wav", 21.0, sr=8_000, seed=1)  # 10 windows of 2 s (the last second is left)
    write(root / "field" / "deep" / "dawn.flac", 7.0, seed=2)  # 3 windows
    write(root / "field" / "blip.wav", 0.5, seed=3)  # shorter than a window
    return root / "src", root / "field"


def test_background_windows_are_a_grouped_class_that_a_group_split_keeps_together(tmp_path):
    src, field = dataset(tmp_path)
    out = tmp_path / "out"
    result = runner.invoke(app, ["data", "prepare", "folders", str(src), "--out", str(out), "--background",
                                 str(field), "--background-max", "0"])
    assert result.exit_code == 0, result.output
    assert "background: 13 window(s) of 2 s from 2 recording(s)" in result.output
    assert "shorter than the 2 s window" in result.output
    manifest = read_manifest(out / "manifest.csv")
    bg = [r for r in manifest.rows if r.label == "background"]
    assert sorted(manifest.labels) == ["background", "owl", "wren"]
    assert len(bg) == 13 and all(r.end - r.start == 2.0 for r in bg)
    night = [r for r in bg if r.path.endswith("night.wav")]
    assert [r.start for r in night] == [2.0 * i for i in range(10)] and {r.group for r in night} == {night[0].path}
    assert {r.group for r in bg} == {r.path for r in bg}  # the group is the source recording
    for r in bg:  # every window is inside its recording and reads as 2 s of audio
        samples, sr = read_audio(manifest.root / r.path, r.start, r.end)
        assert len(samples) == 2 * sr
    for group in {r.group for r in bg}:  # the default split is by group: one recording, one split
        assert len({r.split for r in bg if r.group == group}) == 1
    assert all(r.group is None for r in manifest.rows if r.label != "background")


def test_background_defaults_to_the_largest_class_evenly_spread(tmp_path):
    src, field = dataset(tmp_path)
    out = tmp_path / "out"
    result = runner.invoke(app, ["data", "prepare", "folders", str(src), "--out", str(out), "--background",
                                 str(field), "--background-seconds", "1.5"])
    assert result.exit_code == 0, result.output
    bg = [r for r in read_manifest(out / "manifest.csv").rows if r.label == "background"]
    assert len(bg) == 6 and {r.end - r.start for r in bg} == {1.5}  # as many as the largest class (6 clips)
    assert {Path(r.path).name for r in bg} == {"night.wav", "dawn.flac"}  # spread over both recordings


def test_background_refusals_are_one_line(tmp_path):
    src, field = dataset(tmp_path)
    write(src / "background" / "x.wav", 1.0)
    clash = runner.invoke(app, ["data", "prepare", "folders", str(src), "--out", str(tmp_path / "o"),
                                "--background", str(field)])
    assert clash.exit_code == 1 and "already has a 'background' class" in clash.output
    (src / "background" / "x.wav").unlink()
    (src / "background").rmdir()
    none = runner.invoke(app, ["data", "prepare", "folders", str(src), "--out", str(tmp_path / "o"),
                               "--background", str(field), "--background-seconds", "60"])
    assert none.exit_code == 1 and "no wav" in none.output and "at least 60 s" in none.output
    synthetic = runner.invoke(app, ["data", "prepare", "synthetic", "--out", str(tmp_path / "s"),
                                    "--background", str(field)])
    assert synthetic.exit_code == 1 and "own background class" in synthetic.output
