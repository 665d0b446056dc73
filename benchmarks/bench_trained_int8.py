"""int8 against fp32 on trained weights and real recordings: the studies of bench_trained_accuracy.py, each split's
trained Whisper tiny.en probe (its layer chosen on Val) exported as fp32 and as every quantization mode that applies
to Whisper, then validated with onnxruntime on all 73 farm-animal clips, the quantized graph against its fp32 graph.

    python benchmarks/bench_trained_accuracy.py --out DIR     # first: the studies
    python benchmarks/bench_trained_int8.py --out DIR

Printed per split and mode: the layer, the clips whose class changed, and the UAR over all clips (Train, Val and
Test: a comparison of two graphs on the same clips, not a generalisation figure) of fp32 and of the quantized graph.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench" / "trained_accuracy")
    args = parser.parse_args()

    from vocalprobe.api import export_graph
    from vocalprobe.export import quant_modes
    from vocalprobe.runtime.engine.onnx_model import OnnxModel
    from vocalprobe.runtime.field.validate import validate
    from vocalprobe.training.study.results import load_summary

    modes = [m.name for m in quant_modes.MODES if m.name != "none" and m.applies_to("whisper")]
    studies = sorted(p for p in args.out.glob("split*") if (p / "summary.json").is_file())
    if not studies:
        sys.exit(f"no studies under {args.out}: run benchmarks/bench_trained_accuracy.py --out {args.out} first")
    print(f"{'split':>5}  {'layer':>5}  {'mode':>10}  {'changed':>9}  {'UAR fp32':>8}  {'UAR mode':>8}")
    changed_total = clips_total = 0
    for study in studies:
        (choice,) = [c for c in load_summary(study).choices if not c.backbone.endswith("random")]
        graphs = study / "graphs"
        fp32 = graphs / "tiny-en.onnx"
        export_graph(study, fp32, backbone=choice.backbone)
        manifest = study / "manifest.csv"
        for mode in modes:
            path = graphs / f"tiny-en.{mode}.onnx"
            export_graph(study, path, backbone=choice.backbone, quantize=mode)
            report = validate(OnnxModel(path), manifest, split="all", reference_model=OnnxModel(fp32))
            reference = validate(OnnxModel(fp32), manifest, split="all")
            changed_total += report.decisions_changed
            clips_total += report.n_scored
            print(f"{study.name:>5}  {choice.best_layer:>5}  {mode:>10}  {report.decisions_changed:>3} of "
                  f"{report.n_scored:>2}  {100 * reference.uar:>8.1f}  {100 * report.uar:>8.1f}", flush=True)
    print(f"all splits: {changed_total} of {clips_total} decisions changed "
          f"({100 * changed_total / max(clips_total, 1):.2f} %)")


if __name__ == "__main__":
    main()
