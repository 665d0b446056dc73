"""One-line errors instead of tracebacks: permissions, a full disk, a read-only folder, non-UTF-8 and non-finite
manifests. Real files and real OS refusals; root is stripped of its file-permission override where it would bite."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import typer
from typer.testing import CliRunner

from vocalprobe.cli import app
from vocalprobe.commands.errors import friendly_errors

runner = CliRunner()
ROOT_CAPS = "dac_override,dac_read_search"  # what lets root read and write files whatever their mode


def wav(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.full(1600, 0.1, np.float32), 16_000)
    return path


def run_cli_without_override(*args: str) -> subprocess.CompletedProcess:
    """`vocalprobe ARGS` in a subprocess where chmod is honoured: as root, drop the capabilities that ignore it."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        drop = [f"--inh-caps=-{ROOT_CAPS.replace(',', ',-')}", f"--bounding-set=-{ROOT_CAPS.replace(',', ',-')}"]
        if setpriv is None or subprocess.run([setpriv, *drop, "true"], capture_output=True).returncode != 0:
            pytest.skip("running as root without a usable setpriv: file permissions cannot bite")
        prefix = [setpriv, *drop]
    return subprocess.run([*prefix, sys.executable, "-m", "vocalprobe", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "300"})


@contextlib.contextmanager
def tiny_tmpfs(path: Path, options: str):
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (to fill a disk for real) needs root; this test runs as a user")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mount -t tmpfs failed even as root (a container without CAP_SYS_ADMIN?): "
                    f"{mounted.stderr.strip() or mounted.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def one_line_error(result, *expected: str) -> None:
    assert result.exit_code == 1, result.output
    output = result.output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    for text in expected:
        assert text in errors[0], output


def test_unreadable_audio_says_permission_denied(tmp_path):
    clip = wav(tmp_path / "clip.wav")
    (tmp_path / "m.csv").write_text("path,label\nclip.wav,a\n")
    clip.chmod(0)
    result = run_cli_without_override("data", "describe", str(tmp_path / "m.csv"))
    assert result.returncode == 1, result.stderr
    assert "clip.wav: cannot be opened: permission denied" in result.stdout + result.stderr
    assert "System error" not in result.stdout + result.stderr


def test_unreadable_manifest_and_unwritable_out_folder(tmp_path):
    wav(tmp_path / "src" / "owl" / "a.wav")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    result = run_cli_without_override("data", "prepare", "folders", str(tmp_path / "src"), "--out",
                                      str(locked / "out"))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"error: {locked / 'out'}: permission denied" in result.stderr
    (tmp_path / "m.csv").write_text("path,label\nsrc/owl/a.wav,a\n")
    (tmp_path / "m.csv").chmod(0)
    result = run_cli_without_override("data", "split", str(tmp_path / "m.csv"))
    assert result.returncode == 1 and f"error: {tmp_path / 'm.csv'}: permission denied" in result.stderr


def test_read_only_out_folder(tmp_path):
    wav(tmp_path / "src" / "owl" / "a.wav")
    with tiny_tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        result = runner.invoke(app, ["data", "prepare", "folders", str(tmp_path / "src"), "--out", str(ro / "o")])
    one_line_error(result, f"{tmp_path / 'ro' / 'o'}: read-only file system")


def test_full_disk_on_a_tiny_tmpfs(tmp_path):
    with tiny_tmpfs(tmp_path / "full", "size=64k") as disk:
        lines = "".join(f"clip_{i:04d}_with_a_long_name.wav,owl\n" for i in range(400))
        (disk / "m.csv").write_text("path,label\n" + lines)
        with contextlib.suppress(OSError), (disk / "filler").open("wb") as filler:
            while True:
                filler.write(b"\0" * 4096)
        result = runner.invoke(app, ["data", "split", str(disk / "m.csv")])
        one_line_error(result, "no space left on device")
        assert (disk / "m.csv").read_text() == "path,label\n" + lines  # the manifest is untouched
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "m.csv"]  # no temp file left


def test_full_disk_at_the_lowest_level(tmp_path, monkeypatch):
    (tmp_path / "m.csv").write_text("path,label\na.wav,owl\nb.wav,owl\n")

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    result = runner.invoke(app, ["data", "split", str(tmp_path / "m.csv")])
    one_line_error(result, f"{tmp_path / 'm.csv'}: no space left on device; free some space")


@pytest.mark.parametrize("command", ["describe", "split"])
def test_latin1_manifest(tmp_path, command):
    wav(tmp_path / "a.wav")
    (tmp_path / "m.csv").write_bytes("path,label\na.wav,mésange\n".encode("latin-1"))
    result = runner.invoke(app, ["data", command, str(tmp_path / "m.csv")])
    one_line_error(result, "manifest is not UTF-8 (line 2): re-save it as UTF-8")


@pytest.mark.parametrize("end", ["inf", "1e400"])
def test_infinite_segment_in_a_manifest(tmp_path, end):
    wav(tmp_path / "a.wav")
    (tmp_path / "m.csv").write_text(f"path,label,start,end\na.wav,owl,0,{end}\n")
    result = runner.invoke(app, ["data", "describe", str(tmp_path / "m.csv")])
    one_line_error(result, "line 2: end must be a finite number of seconds")


def test_split_reports_duplicates(tmp_path):
    rows = "".join(f"{i}.wav,owl\n" for i in range(8))
    (tmp_path / "m.csv").write_text("path,label\n" + rows + "3.wav,owl\n")
    result = runner.invoke(app, ["data", "split", str(tmp_path / "m.csv")])
    assert result.exit_code == 0 and "warning: 3.wav is listed 2 times" in result.output


def test_programming_errors_keep_their_traceback():
    @friendly_errors
    def buggy():
        raise ValueError("a bug")

    @friendly_errors
    def refused():
        raise PermissionError(errno.EACCES, "Permission denied", "/data/out")

    with pytest.raises(ValueError, match="a bug"):
        buggy()
    with pytest.raises(typer.Exit) as caught:
        refused()
    assert caught.value.exit_code == 1


def test_unlistable_sub_folder_is_reported(tmp_path):
    wav(tmp_path / "src" / "owl" / "a.wav")
    wav(tmp_path / "src" / "owl" / "night" / "b.wav")
    (tmp_path / "src" / "owl" / "night").chmod(0)
    try:
        result = run_cli_without_override("data", "prepare", "folders", str(tmp_path / "src"), "--out",
                                          str(tmp_path / "out"))
    finally:
        (tmp_path / "src" / "owl" / "night").chmod(0o755)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    night = tmp_path / "src" / "owl" / "night"
    assert f"problem: {night}: folder cannot be listed (permission denied)" in result.stderr
    assert "night" in (tmp_path / "out" / "errors.csv").read_text()
    assert not (tmp_path / "out" / "manifest.csv").exists()
