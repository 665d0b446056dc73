"""Run code in a fresh interpreter where torch, transformers, optimum and torchaudio cannot be imported: what a
recorder or a Raspberry Pi has. Shared by every test that proves a runtime command needs no torch."""

from __future__ import annotations

import os
import subprocess
import sys

BLOCKED = ("torch", "transformers", "optimum", "torchaudio")

_PRELUDE = f"""
import sys
for name in {BLOCKED!r}:
    sys.modules[name] = None   # any `import torch` (or `import torch.nn`) now raises ImportError
"""

_CLI = _PRELUDE + f"""
from vocalprobe.cli import main
sys.argv = ["vocalprobe"] + sys.argv[1:]
try:
    main()
except SystemExit as exc:
    code = exc.code or 0
else:
    code = 0
leaked = [m for m in {BLOCKED!r} if sys.modules.get(m) is not None]
print("LEAKED", leaked, file=sys.stderr)
sys.exit(code)
"""


def _run(code: str, args, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout)


def run_cli_without_torch(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    """``vocalprobe ARGS...`` with torch blocked; stderr ends with ``LEAKED [...]`` naming any blocked module that
    got imported anyway (``LEAKED []`` when none did)."""
    return _run(_CLI, args, timeout)


def run_python_without_torch(code: str, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    """Python ``code`` with torch blocked (``sys.argv[1:]`` = ``args``)."""
    return _run(_PRELUDE + code, args, timeout)
