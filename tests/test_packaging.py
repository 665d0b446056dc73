"""The install layout: training/, export/ and runtime/ install as vocalprobe.* subpackages, nothing bare."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"vocalprobe"}
    for top in ("training", "export", "runtime", "commands"):
        for init in (ROOT / top).rglob("__init__.py"):
            found.add(".".join(("vocalprobe",) + init.parent.relative_to(ROOT).parts))
    assert found == listed, "pyproject's packages list must name every folder with an __init__.py"


@pytest.mark.slow
def test_regular_install_gives_namespaced_imports(tmp_path):
    """`pip install .` (not editable): vocalprobe.runtime etc. import from the installed copy, no bare `runtime`."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(target), str(ROOT)], check=True, capture_output=True)
    assert not (target / "runtime").exists() and not (target / "export").exists()
    code = ("import vocalprobe, vocalprobe.runtime.core.audio, vocalprobe.training, vocalprobe.export, vocalprobe.cli; "
            "print(vocalprobe.__file__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}).stdout
    assert out.strip().startswith(str(target))


def test_importing_the_cli_imports_no_heavy_library():
    """`vocalprobe --help` stays instant and the runtime commands work without torch: the console script and every
    command's CLI face defer torch, transformers and onnx to inside the commands that need them."""
    faces = ["vocalprobe.cli", "vocalprobe.demo", "vocalprobe.runtime.engine.long_clips"]
    code = ("import importlib, sys\n"
            f"for name in {faces!r}: importlib.import_module(name)\n"
            "print(sorted(m for m in ('torch', 'transformers', 'onnx', 'onnxscript') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


def test_importing_the_cli_loads_no_work_and_no_numpy():
    """`import vocalprobe.cli` assembles the command groups only: every command imports its work (runtime, training,
    export, numpy) inside its body, so `vocalprobe --help` pays for typer alone (benchmarks/bench_cli.py)."""
    code = ("import sys\nimport vocalprobe.cli\n"
            "work = ('vocalprobe.runtime', 'vocalprobe.training', 'vocalprobe.export', 'vocalprobe.demo')\n"
            "print(sorted(m for m in sys.modules if m == 'numpy' or m.startswith(('numpy.', *work))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"
