"""Scaling on one machine, in one run: 1 worker x 2 threads vs 2 workers x 1 thread vs Ray with 2 CPUs, for a layer-3
int8-conv stand-in (a random-init HuBERT-base cut after layer 3, exported and quantized as `vocalprobe export` does;
see bench_stream.py) on a folder of 1-minute 48 kHz files. Prints x real time, peak RSS (the main process plus its
children: workers, or Ray's actors and daemons, sampled every 0.2 s) and whether each run's tables are byte-identical
to the first's.

    python benchmarks/bench_scale.py                   # 8 files of 60 s
    python benchmarks/bench_scale.py --files 16 --graph my.onnx

Each configuration runs in its own process, so peak RSS is that configuration's alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

RUN = r"""
import json, sys, time
from pathlib import Path
from vocalprobe.runtime.engine.onnx_model import OnnxModel
from vocalprobe.runtime.field.run_state import RunState
from vocalprobe.runtime.engine.sources import collect_files
from vocalprobe.runtime.field.outputs import Outputs
from vocalprobe.runtime.field.stream import DetectConfig, output_options, run_settings, run_sources
from vocalprobe.runtime.engine.windows import WindowPlan
from vocalprobe.runtime.engine.pool import run_with_workers
from vocalprobe.runtime.engine.scale import ModelSpec

def main(graph, folder, out, mode, batch):
    threads = 2 if mode == "1x2" else 1
    model = OnnxModel(graph, threads=threads)
    config = DetectConfig(WindowPlan.from_seconds(model.sample_duration, None, model.sample_rate), batch=batch)
    formats = ("raven", "csv", "jsonl")
    with Outputs(out, formats, model.sample_rate / 2) as outputs, RunState(
            out, run_settings(model, config), output_options(config, formats)) as state:
        todo = list(state.todo(collect_files([folder])))
        started = time.perf_counter()
        if mode == "1x2":
            summary = run_sources(todo, model, config, outputs, state)
        elif mode == "2x1":
            summary = run_with_workers(todo, model, config, outputs, state, workers=2,
                                       spec=ModelSpec((graph,), threads=1))
        else:
            import ray
            from vocalprobe.runtime.engine.ray_engine import run_with_ray
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            summary = run_with_ray(todo, model, config, outputs, state, spec=ModelSpec((graph,), threads=1),
                                   concurrency=2)
        wall = time.perf_counter() - started
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))  # not inherited over exec
    print(json.dumps({"audio_s": summary.audio_seconds, "wall_s": wall, "rss_self_mb": int(hwm.split()[1]) / 1024,
                      "files": len(summary.done)}))

if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
"""


def make_folder(folder: Path, n: int, seconds: float, rate: int = 48_000) -> Path:
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        path = folder / f"2021050{i % 9 + 1}_{i:02d}0000.wav"
        if not path.exists():
            t = np.arange(int(seconds * rate)) / rate
            x = 0.05 * rng.standard_normal(t.size) + 0.3 * np.sin(2 * np.pi * (800 + 300 * i) * t) * (t % 7 < 2)
            sf.write(path, x.astype(np.float32), rate, subtype="PCM_16")
    return folder


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, now."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            for line in open(f"/proc/{current}/status"):
                if line.startswith("VmRSS"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return total / 1024


def run_sampled(command: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``command``; its output and the peak resident memory of its process tree."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, tree_rss_mb(proc.pid))
        time.sleep(0.2)
    stdout, stderr = proc.communicate()
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr), peak


def tables(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(".vocalprobe")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graph", type=Path, default=None, help="an exported graph (default: the L3 int8-conv "
                        "stand-in; needs torch + transformers to build once)")
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--modes", default="1x2,2x1,ray")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "vocalprobe-bench")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    graph = args.graph
    if graph is None:
        sys.path.insert(0, str(HERE))
        from bench_stream import quantized, stand_in

        graph = quantized(stand_in(3, args.cache), "int8-conv")
    folder = make_folder(args.cache / f"scale-{args.files}x{args.seconds:g}s", args.files, args.seconds)
    script = args.cache / "bench_scale_run.py"
    script.write_text(RUN)
    print(f"graph {graph.name}; {args.files} files x {args.seconds:g} s at 48 kHz; batch {args.batch}; "
          "each configuration in its own process", flush=True)
    reference = None
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            out = Path(tmp) / mode
            started = time.perf_counter()
            done, peak = run_sampled([sys.executable, str(script), str(graph), str(folder), str(out), mode,
                                      str(args.batch)])
            if done.returncode != 0:
                print(f"{mode}: failed\n{done.stderr[-2000:]}")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            same = tables(out)
            identical = "reference" if reference is None else ("identical" if same == reference else "DIFFERENT")
            reference = reference if reference is not None else same
            label = {"1x2": "1 worker x 2 threads", "2x1": "2 workers x 1 thread", "ray": "Ray, 2 CPUs (2 actors)"}
            print(f"{label.get(mode, mode):24s}: {r['audio_s'] / r['wall_s']:6.1f}x real time "
                  f"({r['wall_s']:.1f} s for {r['audio_s']:.0f} s of audio, {time.perf_counter() - started:.1f} s "
                  f"with start-up); peak RSS {peak:.0f} MB in all (main process {r['rss_self_mb']:.0f} MB); "
                  f"tables {identical}", flush=True)


if __name__ == "__main__":
    main()
