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


def test_prepare_folders_takes_groups_from_the_folders_under_each_class(tmp_path):
    """CLASS/INDIVIDUAL/clip.wav with --group-folders: the individual is the group and the split keeps it whole;
    without the option the command says the sub-folders could be groups."""
    for label in ("a", "b"):
        for individual in range(5):
            for i in range(4):
                path = tmp_path / "src" / label / f"ind{individual}" / f"{i}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, np.full(1600, 0.1 * (i + 1), np.float32), 16_000)
    (tmp_path / "src" / "a" / "loose.wav").write_bytes((tmp_path / "src" / "a" / "ind0" / "0.wav").read_bytes())
    result = runner.invoke(app, ["data", "prepare", "folders", str(tmp_path / "src"), "--out", str(tmp_path / "g"),
                                 "--group-folders"])
    assert result.exit_code == 0, result.output
    rows = list(read_manifest(tmp_path / "g" / "manifest.csv"))
    assert {r.group for r in rows if r.label == "b"} == {f"b/ind{i}" for i in range(5)}
    assert {r.group for r in rows if r.path.endswith("loose.wav")} == {"a/loose.wav"}
    splits: dict[str, set[str]] = {}
    for row in rows:
        splits.setdefault(row.group, set()).add(row.split)
    assert all(len(s) == 1 for s in splits.values()) and {"train", "test"} <= set().union(*splits.values())
    plain = runner.invoke(app, ["data", "prepare", "folders", str(tmp_path / "src"), "--out", str(tmp_path / "p")])
    assert plain.exit_code == 0 and "pass --group-folders" in plain.output
    assert all(r.group is None for r in read_manifest(tmp_path / "p" / "manifest.csv"))
    wrong = runner.invoke(app, ["data", "prepare", "watkins", str(tmp_path / "src"), "--group-folders"])
    assert wrong.exit_code == 1 and "--group-folders is for `data prepare folders`" in wrong.output


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


def _tone_folders(root: Path, layout: dict[str, int]) -> None:
    for rel, n in layout.items():
        for i in range(n):
            path = root / rel / f"{i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, np.full(1600, 0.1, np.float32), 16_000)


def test_prepare_without_out_never_writes_the_synthetic_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _tone_folders(tmp_path / "birds", {"a": 4, "b": 4})
    _tone_folders(tmp_path / "dogs", {"Ind1/bark": 3, "Ind1/growl": 3, "Ind2/bark": 3, "Ind2/growl": 3})
    assert runner.invoke(app, ["data", "prepare", "folders", "birds"]).exit_code == 0
    assert runner.invoke(app, ["data", "prepare", "abzaliev", "dogs"]).exit_code == 0
    assert (tmp_path / "artifacts/data/birds/manifest.csv").is_file()
    assert (tmp_path / "artifacts/data/abzaliev/manifest.csv").is_file()
    assert not (tmp_path / "artifacts/data/synthetic").exists()
    assert '"kind": "folders"' in (tmp_path / "artifacts/data/birds/dataset.json").read_text()


def test_prepare_and_split_keep_groups_apart_unless_asked_per_clip(tmp_path):
    layout = {f"Ind{g}/{call}": 3 for g in range(10) for call in ("bark", "growl")}
    _tone_folders(tmp_path / "dogs", layout)
    result = runner.invoke(app, ["data", "prepare", "abzaliev", str(tmp_path / "dogs"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "split by group" in result.output

    def shared(manifest_path: Path) -> set[str]:
        splits: dict[str, set[str]] = {}
        for row in read_manifest(manifest_path):
            splits.setdefault(row.split, set()).add(row.group)
        return (splits["train"] & splits["test"]) | (splits["train"] & splits["val"])

    manifest_path = tmp_path / "o" / "manifest.csv"
    assert not shared(manifest_path)
    per_clip = runner.invoke(app, ["data", "split", str(manifest_path), "--group-by", "none"])
    assert per_clip.exit_code == 0 and "per clip" in per_clip.output
    assert shared(manifest_path)
    by_group = runner.invoke(app, ["data", "split", str(manifest_path)])
    assert by_group.exit_code == 0 and "by group" in by_group.output
    assert not shared(manifest_path)


def test_split_keeps_and_mentions_metadata_columns(tmp_path):
    _tone_folders(tmp_path, {"a": 3, "b": 3})
    lines = ["path,label,country"] + [f"{c}/{i}.wav,{c},FR" for c in "ab" for i in range(3)]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["data", "split", str(tmp_path / "m.csv")])
    assert result.exit_code == 0, result.output
    assert "column(s) country kept but not used" in result.output
    assert read_manifest(tmp_path / "m.csv").rows[0].extra == ("FR",)
