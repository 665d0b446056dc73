"""What quantization costs in UAR, measured with ``vocalprobe validate --reference`` on enough clips to see it.

The demo's Test split has 48 clips, so one changed decision moves a UAR by ~2 points and a change under 1 point
cannot be resolved there. This script takes the embedded default study (``artifacts/studies/default``; it runs the
study first when missing), exports every backbone's best layer and the paper's fusion as fp32 and in each
``--modes`` quantization, and validates each quantized graph against its fp32 graph on the same clips:

* the study's own Test split (what ``vocalprobe demo`` reports), and
* a held-out synthetic set: ``--clips-per-class`` new clips per class generated with another seed (``--seed``),
  never seen by the study (default 200 per class: 1,600 clips, one decision ~0.06 points).

It prints, per graph: fp32 UAR, quantized UAR, the difference in points and the decisions changed. The backbones
are the demo's tiny UNTRAINED ones: their pooled features differ little between clips, so decisions sit close to
each other and quantization noise moves them more easily than it would with a trained backbone (a worst case).
Usage: ``python benchmarks/bench_quantize_accuracy.py [--modes int8,int8-conv]`` (default: every quantized mode of
``export.quant_modes``; ~5 minutes).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from vocalprobe.export import quant_modes


def heldout_manifest(folder: Path, *, seed: int, clips_per_class: int) -> Path:
    """A synthetic set from another seed, every clip in the Test split."""
    from vocalprobe.runtime.core.manifest import read_manifest, write_manifest
    from vocalprobe.runtime.datasets.synthetic import generate_dataset

    source = generate_dataset(folder, seed=seed, clips_per_class=clips_per_class, field_minutes=0)
    rows = [row.with_split("test") for row in read_manifest(source).rows]
    out = folder / "heldout.csv"
    write_manifest(out, rows)
    return out


def export_all(study_dir: Path, out_dir: Path, modes: list[str]) -> dict[tuple[str, str], Path]:
    """{(graph name, mode): path} for each backbone's best layer and the fusion, fp32 ("none") and each mode.

    The fusion of a mode is built from that mode's member graphs exported here (the paper's fusion: the mean of
    the best layers' posteriors), so no member is exported twice."""
    from vocalprobe.export.fusion import fuse_models
    from vocalprobe.export.onnx_export import ExportError, export_from_study
    from vocalprobe.export.parity import ParityError
    from vocalprobe.training.study.results import load_summary, safe_name

    out_dir.mkdir(parents=True, exist_ok=True)
    graphs = {}
    members: dict[str, list[Path]] = {}
    for choice in load_summary(study_dir).choices:
        for mode in ["none", *modes]:
            path = out_dir / f"{safe_name(choice.backbone)}.{mode}.onnx"
            try:
                export_from_study(study_dir, path, backbone=choice.backbone, quantize=mode)
            except (ExportError, ParityError) as exc:  # the parity guard refused it: measure it anyway, say so
                print(f"note: {choice.backbone} {mode}: refused by the parity guard ({str(exc).splitlines()[-1]}); "
                      "exported without the guard to measure it", flush=True)
                export_from_study(study_dir, path, backbone=choice.backbone, quantize=mode, parity=False)
            graphs[(f"{choice.backbone} L{choice.best_layer}", mode)] = path
            members.setdefault(mode, []).append(path)
    for mode, paths in members.items():
        graphs[("fusion", mode)] = fuse_models(paths, out_dir / f"fusion.{mode}.onnx")
    return graphs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="Folder holding artifacts/ (the demo's root).")
    parser.add_argument("--modes", default=",".join(m for m in quant_modes.names() if m != "none"))
    parser.add_argument("--clips-per-class", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7, help="Seed of the held-out set (the study's data uses 42).")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]

    import onnxruntime as ort
    import torch

    from vocalprobe.runtime.engine.onnx_model import OnnxModel
    from vocalprobe.runtime.field.validate import validate
    from vocalprobe.training.study.default import default_study_config, run_default_study

    torch.set_num_threads(args.threads)
    ort.set_default_logger_severity(3)
    root = args.root
    started = time.perf_counter()
    study_dir = run_default_study(root, progress=False)  # reuses a finished study
    study_manifest = Path(default_study_config(root).datasets[0].manifest)
    work = root / "artifacts" / "bench" / "quantize_accuracy"
    heldout = heldout_manifest(work / "heldout", seed=args.seed, clips_per_class=args.clips_per_class)
    graphs = export_all(study_dir, work / "models", modes)
    print(f"study {study_dir}; held-out set {heldout} ({args.clips_per_class} clips per class, seed {args.seed}); "
          f"exports done in {time.perf_counter() - started:.0f} s", flush=True)
    rows = []
    names = sorted({name for name, _ in graphs}, key=lambda n: (n == "fusion", n))
    for name in names:
        reference = OnnxModel(graphs[(name, "none")], threads=args.threads)
        for mode in modes:
            if (name, mode) not in graphs:
                continue
            model = OnnxModel(graphs[(name, mode)], threads=args.threads)
            for label, manifest in (("study Test", study_manifest), ("held-out", heldout)):
                report = validate(model, manifest, split="test", reference_model=reference, n_resamples=200)
                rows.append((name, mode, label, report.n_scored, report.reference_uar, report.uar,
                             report.difference_points, report.decisions_changed))
                print(f"{name:22s} {mode:12s} {label:10s} fp32 {100 * report.reference_uar:6.2f}  "
                      f"{mode} {100 * report.uar:6.2f}  Δ {report.difference_points:+6.2f}  "
                      f"changed {report.decisions_changed}/{report.n_scored}", flush=True)
    print("\n| graph | quantization | clips | fp32 UAR [%] | quantized UAR [%] | Δ [points] | decisions changed |")
    print("|---|---|---|---:|---:|---:|---:|")
    for name, mode, label, n, ref, score, diff, changed in rows:
        print(f"| {name} | {mode} | {label} ({n}) | {100 * ref:.2f} | {100 * score:.2f} | {diff:+.2f} "
              f"| {changed} ({100 * changed / n:.1f}%) |")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
