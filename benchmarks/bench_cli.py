"""How long `vocalprobe --help` takes, in fresh interpreters: the median of N runs of the console script's help
next to the floors under it (the interpreter alone, and a one-command typer app printing its help), as wall clock
and as CPU time (user + system: what a loaded machine changes least).

    python benchmarks/bench_cli.py            # 15 runs each
    python benchmarks/bench_cli.py --runs 31

Also prints which project modules and heavy libraries the help loaded (none of the runtime, training or export, and
no numpy: each command imports its work inside its body). Wall times move with the machine's load; compare figures
within one run.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time

HELP = ("import sys; sys.argv = ['vocalprobe', '--help']\nfrom vocalprobe.cli import main\ntry:\n    main()\n"
        "except SystemExit:\n    pass\n")
BARE = "pass"
TYPER = ("import typer\napp = typer.Typer(add_completion=False)\n@app.command()\ndef hello(name: str = 'x') -> None:\n"
         "    'Say hello.'\napp(['--help'], standalone_mode=False)\n")
LOADED = ("import sys; sys.argv = ['vocalprobe', '--help']\nfrom vocalprobe.cli import main\ntry:\n    main()\n"
          "except SystemExit:\n    pass\n"
          "heavy = ('numpy', 'torch', 'onnxruntime', 'vocalprobe.runtime', 'vocalprobe.training',\n"
          "         'vocalprobe.export')\n"
          "print(sorted(m for m in sys.modules if m.startswith(heavy)), file=sys.stderr)\n")


def median_seconds(code: str, runs: int) -> tuple[float, float]:
    """Median wall and CPU (user + system) seconds of ``python -c code``."""
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.DEVNULL)
        walls.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    figures = {}
    for name, code in (("python -c pass", BARE), ("typer app --help", TYPER), ("vocalprobe --help", HELP)):
        figures[name] = median_seconds(code, args.runs)
        wall, cpu = figures[name]
        print(f"{name:<20} median {wall * 1000:7.1f} ms wall, {cpu * 1000:7.1f} ms CPU over {args.runs} runs",
              flush=True)
    above = [a - b for a, b in zip(figures["vocalprobe --help"], figures["typer app --help"])]
    print(f"vocalprobe --help costs {above[0] * 1000:.1f} ms wall ({above[1] * 1000:.1f} ms CPU) more than a bare "
          "typer app's help")
    loaded = subprocess.run([sys.executable, "-c", LOADED], check=True, capture_output=True, text=True).stderr.strip()
    print(f"runtime/training/export modules and heavy libraries loaded by --help: {loaded}")


if __name__ == "__main__":
    main()
