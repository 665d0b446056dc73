"""The GPU paths end to end, with figures: the one script a GPU session runs (benchmarks/gpu_check.sh calls it with
``--device cuda``); tests/test_gpu_check.py runs it with ``--device cpu --quick`` so that it cannot rot unnoticed.

Sections, each a line starting with ``== `` and then its figures (times on one H100 are estimates: no GPU was lent
while this was written; on a 2-core CPU the full sizes of a, b and d took 134, 49 and 89 s):

a. study feature extraction on the device: a random-init HuBERT-base, 64 clips of 5 s, float32 vs bfloat16 (cuda
   only): x real time and bfloat16's difference to float32. ~30 s on one H100, most of it making the backbone.
b. an fp32 graph (bench_stream.stand_in: HuBERT-base cut after layer 3) under onnxruntime's CUDAExecutionProvider vs
   the CPU one, through `vocalprobe stream`'s ``run_stream`` on 4 files of 60 s: the providers really in use and x real
   time (``--quick``: bench_stream's small test graph, no export). ~1-2 min: the export and the CPU provider's run.
c. the batched probes on the device (issue 23): bench_probes' ``done`` case (1 epoch, 1 repeat) with its projection
   of the paper's probe phase, and its ``study`` case (full protocol, one at a time vs batched: speed-up and best
   layers). ~2-4 min: the study case's one-at-a-time half.
d. a study end to end through the CLI (`python -m vocalprobe study ... --device DEVICE`) on 60 synthetic clips of 3 s
   with the HuBERT-base of (a): wall time, and that it wrote report.md. ~1 min.
e. stream with 2 Ray GPU actors (`vocalprobe stream --engine ray --num-gpus 1 --concurrency 2`) where there are >= 2
   GPUs; skipped otherwise. ~1 min.

The whole run fits ~8 minutes on one H100. ``--quick``: a few clips of seconds, a tiny random backbone, tiny probe
cases; all of it runs on a CPU in well under a minute. A failing section is reported and the others still run; the
exit status is then 1. With ``--device cuda`` it stops at once, saying why, where torch sees no GPU. Needs a CUDA
build of torch; (b)'s CUDA provider and (e) need onnxruntime-gpu (pip uninstall -y onnxruntime && pip install
onnxruntime-gpu; without it they say what they skipped and the torch sections run), and (e) `pip install
'vocalprobe[ray]'`.

    python benchmarks/gpu_check.py [--device cuda|cpu] [--quick] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
STAND_IN_LAYER = 3


@dataclass(frozen=True)
class Sizes:
    clips: int  # (a) clips of noise, clip_seconds each
    clip_seconds: float
    files: int  # (b) and (e) recordings of file_seconds each
    file_seconds: float
    probe_train: int  # (c) Train clips of bench_probes' cases
    study_clips: int  # (d) synthetic clips of study_seconds each
    study_seconds: float
    study_seeds: int
    tiny: bool  # a tiny random HuBERT instead of HuBERT-base


FULL = Sizes(clips=64, clip_seconds=5.0, files=4, file_seconds=60.0, probe_train=2_000, study_clips=60,
             study_seconds=3.0, study_seeds=3, tiny=False)
QUICK = Sizes(clips=4, clip_seconds=2.0, files=2, file_seconds=4.0, probe_train=48, study_clips=15,
              study_seconds=1.0, study_seeds=1, tiny=True)


class CheckFailed(Exception):
    """A section's command failed; the message says how."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: seconds of audio, a tiny backbone")
    parser.add_argument("--workdir", type=Path, default=None, help="where clips, models and outputs go "
                        "(default: a new temporary folder; a given one is reused: backbone, graph and audio)")
    args = parser.parse_args(argv)
    n_gpus = require_device(args.device)
    sizes = QUICK if args.quick else FULL
    work = args.workdir or Path(tempfile.mkdtemp(prefix="vocalprobe-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    work = work.resolve()  # (d) and (e) run the CLI in it
    sys.path.insert(0, str(HERE))  # bench_stream, bench_scale, bench_probes
    started = time.perf_counter()
    sections = [("a", extraction), ("b", stream_providers), ("c", probes), ("d", study_cli), ("e", ray_stream)]
    failed, took = [], []
    for name, section in sections:
        begun = time.perf_counter()
        try:
            section(args.device, sizes, work, n_gpus)
        except Exception as exc:  # noqa: BLE001 -- report it, run the other sections, exit 1 at the end
            traceback.print_exc()
            print(f"  FAILED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", flush=True)
            failed.append(name)
        took.append(f"{name} {time.perf_counter() - begun:.0f} s")
    print(f"== gpu_check done in {time.perf_counter() - started:.0f} s ({', '.join(took)}; {work})"
          + (f"; FAILED sections: {', '.join(failed)}" if failed else ""), flush=True)
    if failed:
        print(f"gpu_check: section(s) {', '.join(failed)} failed (see above)", file=sys.stderr)
        return 1
    return 0


def require_device(device: str) -> int:
    """The number of GPUs torch sees; for cuda, exits with the reason where torch or onnxruntime cannot use one."""
    import onnxruntime
    import torch

    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "cuda":
        if n_gpus < 1:
            sys.exit("gpu_check: no CUDA GPU visible to torch (torch.cuda.is_available() is False); run this on a "
                     "GPU machine")
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(n_gpus))
        print(f"== device cuda: {n_gpus} GPU(s): {names}; torch {torch.__version__}, onnxruntime "
              f"{onnxruntime.__version__}", flush=True)
        if not _onnx_cuda():  # the torch sections (a, c, d) still say what they measure
            print("== this onnxruntime has no CUDAExecutionProvider: (b) runs the CPU provider only and (e) is "
                  "skipped; for them: pip uninstall -y onnxruntime && pip install onnxruntime-gpu", flush=True)
    else:
        print(f"== device cpu: {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
              f"onnxruntime {onnxruntime.__version__}", flush=True)
    return n_gpus


def _onnx_cuda() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


# ---------------------------------------------------------------------------------------------------------------
# shared inputs (made once per workdir)


def backbone_folder(work: Path, sizes: Sizes) -> Path:
    """A random-init HuBERT-base checkpoint folder (a tiny HuBERT with ``--quick``)."""
    import torch
    import transformers

    from vocalprobe.training.backbones import make_tiny_checkpoint

    if sizes.tiny:
        folder = work / "hubert-tiny-random"
        if not (folder / "config.json").exists():
            make_tiny_checkpoint("hubert", folder, seed=0, num_layers=STAND_IN_LAYER)
        return folder
    folder = work / "hubert-random"
    if not (folder / "config.json").exists():
        transformers.utils.logging.disable_progress_bar()  # a bar for one file
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            transformers.HubertModel(transformers.HubertConfig()).save_pretrained(folder)
    return folder


def stand_in_graph(work: Path, sizes: Sizes) -> Path:
    """HuBERT-base cut after layer 3 as `vocalprobe export` writes it; with ``--quick`` the band-filter test graph
    (torch's ONNX export alone takes ~15 s on a small CPU, even for a tiny backbone)."""
    from bench_stream import small_graph, stand_in

    return small_graph(work) if sizes.tiny else stand_in(STAND_IN_LAYER, work)


def recordings(work: Path, sizes: Sizes) -> Path:
    from bench_scale import make_folder

    return make_folder(work / f"rec-{sizes.files}x{sizes.file_seconds:g}s", sizes.files, sizes.file_seconds)


def write_clips(folder: Path, n: int, seconds: float, *, tones: bool) -> Path:
    """``n`` 16 kHz clips and their manifest: three classes, each in Train (3/5), Val and Test (1/5 each).
    ``tones``: a class-dependent tone in the noise (the study has something to find); else noise alone."""
    import soundfile as sf

    from vocalprobe.runtime.core.manifest import ManifestRow, write_manifest

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * 16_000)) / 16_000
    rows = []
    for i in range(n):
        label = i % 3
        x = 0.1 * rng.standard_normal(t.size)
        if tones:
            x += 0.4 * np.sin(2 * np.pi * (300 + 250 * label) * t)
        sf.write(folder / f"c{i:03d}.wav", x.astype(np.float32), 16_000)
        split = ("train", "train", "train", "val", "test")[(i // 3) % 5]
        rows.append(ManifestRow(f"c{i:03d}.wav", f"call{label}", split=split))
    path = folder / "manifest.csv"
    write_manifest(path, rows)
    return path


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise CheckFailed(f"exit status {done.returncode}: {' '.join(cmd[1:5])} ...")
    return done


# ---------------------------------------------------------------------------------------------------------------
# sections


def extraction(device: str, sizes: Sizes, work: Path, n_gpus: int) -> None:
    from vocalprobe.runtime.core.manifest import read_manifest
    from vocalprobe.training.backbones import load_backbone
    from vocalprobe.training.extract import extract_features

    what = "a tiny random HuBERT" if sizes.tiny else "a random-init HuBERT-base"
    print(f"== study feature extraction on {device} ({what}, {sizes.clips} clips of {sizes.clip_seconds:g} s): "
          "float32 vs bfloat16", flush=True)
    manifest = read_manifest(write_clips(work / f"clips-{sizes.clips}x{sizes.clip_seconds:g}s", sizes.clips,
                                         sizes.clip_seconds, tones=False))
    backbone = load_backbone(str(backbone_folder(work, sizes)), device=device)
    extract_features(manifest.with_rows(manifest.rows[:2]), backbone, device=device, progress=False)  # warm up
    for dtype in ("float32", "bfloat16"):
        if dtype != "float32" and device != "cuda":
            print(f"  {dtype}: skipped (autocast to bfloat16 is checked on cuda only)", flush=True)
            continue
        _sync(device)
        started = time.perf_counter()
        fs = extract_features(manifest, backbone, device=device, dtype=dtype, progress=False)
        _sync(device)
        wall = time.perf_counter() - started
        extra = (f"; vs float32 on {fs.precision['clips']} clips: max abs diff {fs.precision['max_abs_diff']:.3g}, "
                 f"max relative L2 diff {fs.precision['max_rel_l2_diff']:.3g}" if fs.precision else "")
        print(f"  {dtype}: {fs.stats['audio_seconds'] / wall:.0f}x real time ({len(fs.rows)} clips, "
              f"{fs.features.shape[1]} layers, in {wall:.2f} s){extra}", flush=True)


def stream_providers(device: str, sizes: Sizes, work: Path, n_gpus: int) -> None:
    from vocalprobe.runtime.field.run import StreamJob, run_stream

    providers = ("cuda", "cpu") if device == "cuda" and _onnx_cuda() else ("cpu",)
    what = "the band-filter test graph" if sizes.tiny else f"HuBERT-base cut after layer {STAND_IN_LAYER}"
    print(f"== an fp32 graph ({what}) under onnxruntime's "
          f"{' vs '.join(p.upper() for p in providers)} provider (stream, {sizes.files} files of "
          f"{sizes.file_seconds:g} s)", flush=True)
    graph = stand_in_graph(work, sizes)
    folder = recordings(work, sizes)
    for provider in providers:
        out = work / f"out-{provider}"
        shutil.rmtree(out, ignore_errors=True)  # a run into an earlier run's folder would resume: nothing to do
        said: list[str] = []
        job = StreamJob((graph,), out, (str(folder),), formats=("csv",), batch=32, provider=provider)
        summary = run_stream(job, say=said.append).summary
        in_use = next((line for line in said if line.startswith("providers in use")), "providers in use: ?")
        if len(summary.done) != sizes.files:
            raise CheckFailed(f"{provider}: {len(summary.done)} of {sizes.files} files done; failed: "
                              f"{summary.failed_all}")
        print(f"  {provider}: {in_use}: {summary.audio_seconds / summary.wall_seconds:.0f}x real time "
              f"({summary.audio_seconds:.0f} s of audio in {summary.wall_seconds:.2f} s)", flush=True)


def probes(device: str, sizes: Sizes, work: Path, n_gpus: int) -> None:
    import bench_probes

    train = ["--train", str(sizes.probe_train)]
    print(f"== batched probes on {device} (issue 23; bench_probes --case done --epochs 1 --repeats 1, then "
          f"--case study; {sizes.probe_train:,} Train clips)", flush=True)
    bench_probes.main(["--case", "done", "--epochs", "1", "--repeats", "1", "--device", device, *train])
    bench_probes.main(["--case", "study", "--device", device, *train])
    sys.stdout.flush()


def study_cli(device: str, sizes: Sizes, work: Path, n_gpus: int) -> None:
    backbone = backbone_folder(work, sizes)
    what = "a tiny random HuBERT" if sizes.tiny else "a random-init HuBERT-base"
    print(f"== study on {device} through the CLI ({sizes.study_clips} clips of {sizes.study_seconds:g} s, {what}, "
          f"{sizes.study_seeds} seed(s))", flush=True)
    manifest = write_clips(work / f"study-{sizes.study_clips}x{sizes.study_seconds:g}s", sizes.study_clips,
                           sizes.study_seconds, tones=True)
    out = work / "studies"
    for earlier in (out, work / "artifacts"):  # finished probes and cached features would be reused
        shutil.rmtree(earlier, ignore_errors=True)
    cmd = [sys.executable, "-m", "vocalprobe", "study", "--data", str(manifest), "--backbone", str(backbone),
           "--device", device, "--seeds", str(sizes.study_seeds), "--no-progress", "--out", str(out),
           "--name", "gpu-check"]
    started = time.perf_counter()
    _run(cmd, cwd=work)  # cwd: the default feature cache (artifacts/cache) goes into the workdir
    wall = time.perf_counter() - started
    report = out / "gpu-check" / "report.md"
    if not report.is_file():
        raise CheckFailed(f"the study wrote no {report}")
    with open(report.with_name("best_layers.csv"), newline="") as f:
        best = [f"L{row['best_layer_on_val']} (Val UAR {float(row['val_uar_mean']):.3f}, Test UAR "
                f"{float(row['test_uar_mean']):.3f})" for row in csv.DictReader(f)]
    print(f"  {wall:.1f} s wall (process start included); {report.name} written ({report.stat().st_size:,} bytes); "
          f"best layer on Val: {', '.join(best)}", flush=True)


def ray_stream(device: str, sizes: Sizes, work: Path, n_gpus: int) -> None:
    if device != "cuda" or n_gpus < 2:
        print(f"== stream with 2 Ray GPU actors: skipped ({n_gpus} GPU(s) visible to torch; needs 2)", flush=True)
        return
    if not _onnx_cuda():
        print("== stream with 2 Ray GPU actors: skipped (this onnxruntime has no CUDAExecutionProvider)", flush=True)
        return
    if importlib.util.find_spec("ray") is None:
        print("== stream with 2 Ray GPU actors: skipped (Ray is not installed: pip install 'vocalprobe[ray]')",
              flush=True)
        return
    print(f"== stream with 2 Ray GPU actors ({sizes.files} files of {sizes.file_seconds:g} s)", flush=True)
    graph = stand_in_graph(work, sizes)
    folder = recordings(work, sizes)
    out = work / "out-ray"
    shutil.rmtree(out, ignore_errors=True)
    done = _run([sys.executable, "-m", "vocalprobe", "stream", str(folder), "-m", str(graph), "-o", str(out),
                 "--engine", "ray", "--num-gpus", "1", "--concurrency", "2", "--provider", "cuda", "--batch", "32",
                 "--format", "csv", "--no-progress"], cwd=work)
    for line in (done.stdout + done.stderr).splitlines():
        if "providers" in line or line.startswith("done:"):
            print(f"  {line}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
