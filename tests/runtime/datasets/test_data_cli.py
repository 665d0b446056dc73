"""The `vocalprobe data` commands as a user runs them, and the torch-free promise of the runtime commands."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import soundfile as sf
from torch_blocked import run_python_without_torch
from typer.testing import CliRunner

from vocalprobe.cli import app
from vocalprobe.runtime.core.manifest import read_manifest

runner = CliRunner()


def test_help_lists_subcommands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "data" in result.output


def test_prepare_synthetic_then_describe(tmp_path):
    out = tmp_path / "syn"
    result = runner.invoke(app, ["data", "prepare", "synthetic", "--out", str(out), "--clips-per-class", "4",
                                 "--field-minutes", "0"])
    assert result.exit_code == 0, result.output
    assert "Table I" in result.output and "mixed (22.05/44.1/48)" in result.output
    described = runner.invoke(app, ["data", "describe", str(out / "manifest.csv")])
    assert described.exit_code == 0 and "up_sweep" in described.output and "train" in described.output


def test_prepare_folders_with_split_options(tmp_path):
    for label in ("a", "b"):
        for i in range(10):
            path = tmp_path / "src" / label / f"{i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, np.full(1600, 0.1, np.float32), 16_000)
    result = runner.invoke(app, ["data", "prepare", "folders", str(tmp_path / "src"), "--out", str(tmp_path / "o"),
                                 "--stratify", "--seed", "5"])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "o" / "manifest.csv")
    assert sum(r.split == "train" for r in manifest) == 14
    resplit = runner.invoke(app, ["data", "split", str(tmp_path / "o" / "manifest.csv"), "--seed", "6"])
    assert resplit.exit_code == 0
    assert [r.split for r in read_manifest(tmp_path / "o" / "manifest.csv")] != [r.split for r in manifest]


def test_user_errors_are_one_line(tmp_path):
    missing = runner.invoke(app, ["data", "describe", str(tmp_path / "none.csv")])
    assert missing.exit_code == 1
    assert "error: manifest not found" in missing.output and "Traceback" not in missing.output
    no_source = runner.invoke(app, ["data", "prepare", "watkins", "--out", str(tmp_path)])
    assert no_source.exit_code == 1 and "needs the dataset folder" in no_source.output
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\nx.wav,a\n")
    wrong = runner.invoke(app, ["data", "describe", str(bad)])
    assert wrong.exit_code == 1 and "missing column(s) path" in wrong.output


def test_unreadable_clip_is_reported_by_describe(tmp_path):
    (tmp_path / "broken.wav").write_bytes(b"garbage")
    (tmp_path / "m.csv").write_text("path,label\nbroken.wav,a\n")
    result = runner.invoke(app, ["data", "describe", str(tmp_path / "m.csv")])
    assert result.exit_code == 1 and "broken.wav" in result.output


def test_runtime_commands_work_where_torch_cannot_be_imported(tmp_path):
    """A recorder has no torch: block it (and transformers) at import, then run the data commands end to end."""
    script = textwrap.dedent(f"""
        import importlib, pkgutil, sys
        import vocalprobe.runtime as rt
        for mod in pkgutil.walk_packages(rt.__path__, 'vocalprobe.runtime.'):
            importlib.import_module(mod.name)
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit('torch was importable: the blocker failed')
        from vocalprobe.cli import app
        sys.argv = ['vocalprobe', 'data', 'prepare', 'synthetic', '--out', {str(tmp_path / 'd')!r},
                    '--clips-per-class', '2', '--field-minutes', '0']
        app()
    """)
    result = run_python_without_torch(script)
    assert result.returncode == 0, result.stderr + result.stdout
    assert (Path(tmp_path / "d" / "manifest.csv")).exists()
