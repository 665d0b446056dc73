"""int8 on trained Whisper encoders: decisions changed and embedding change against the fp32 graph.

For a study folder and a layer it exports the fp32 graph (``vocalprobe export``'s own path, parity checked), then
quantizes that graph three ways and scores every graph on the study's Val and Test clips (each clip whole, chunked
like the runtime does):

* ``int8 per-tensor``: dynamic int8 MatMuls, one weight scale per tensor;
* ``int8 per-channel``: one weight scale per output column (what ``--quantize int8`` writes);
* ``int8 per-channel, outliers fp32``: as above, the MatMuls whose activation has a channel above ``--ratio`` x the
  median channel (``export.outliers``, measured on the parity clips) kept fp32;

It prints, per graph: decisions changed vs fp32 (share of clips), relative embedding change (median over clips of
||Δe|| / ||e||, and the largest max |Δe| / max |e|), max |Δprobability|, and the MatMuls kept fp32 with their channel
ratios. Usage: ``python benchmarks/bench_whisper_int8.py STUDY_DIR --layer 2 [--ratio 20]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--layer", default="best")
    parser.add_argument("--ratio", type=float, default=20.0)
    parser.add_argument("--max-clips", type=int, default=400)
    args = parser.parse_args()

    from vocalprobe.export.onnx_export import export_from_study, parity_clips, select_probe
    from vocalprobe.export.outliers import matmul_ranges
    from vocalprobe.export.quantize import quantize_dynamic_matmul
    from vocalprobe.runtime.core.clips import load_row
    from vocalprobe.runtime.core.manifest import read_manifest
    from vocalprobe.runtime.engine.long_clips import predict_long
    from vocalprobe.runtime.engine.onnx_model import OnnxModel

    selection = select_probe(args.study, dataset=None, backbone=None, layer=args.layer)
    manifest = read_manifest(selection.manifest)
    rows = [row for split in ("val", "test") for row in manifest.split(split).rows][: args.max_clips]
    clips = [load_row(manifest, row) for row in rows]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fp32 = tmp / "fp32.onnx"
        result = export_from_study(args.study, fp32, layer=args.layer)
        print(result.parity.summary())
        chunk = int(result.metadata["max_chunk_samples"])
        ranges = matmul_ranges(fp32, parity_clips(manifest, chunk)[:3])
        outliers = tuple(r.node for r in ranges if r.ratio > args.ratio)
        print(f"{selection.backbone_label} layer {result.metadata['layer']}: {len(ranges)} weight MatMuls; channel "
              f"ratio (largest / median channel max |x|) per MatMul: "
              + ", ".join(f"{r.ratio:.0f}" for r in ranges))
        print(f"kept fp32 at ratio > {args.ratio:g}: {len(outliers)} ({', '.join(outliers) or 'none'})")
        graphs = {"fp32": fp32}
        for label, options in (("int8 per-tensor", dict(per_channel=False)), ("int8 per-channel", {}),
                               ("int8 per-channel, outliers fp32", dict(exclude=outliers))):
            graphs[label] = quantize_dynamic_matmul(fp32, tmp / f"{len(graphs)}.onnx", **options)
        outputs = {}
        for label, path in graphs.items():
            model = OnnxModel(path, provider="cpu")
            outputs[label] = [predict_long(model, clip, chunk) for clip in clips]
        reference = outputs["fp32"]
        print(f"\n{len(clips)} Val/Test clips of {selection.dataset}")
        print(f"{'graph':34s} {'decisions changed':>18s} {'median ||Δe||/||e||':>20s} {'max |Δe|/max|e|':>16s} "
              f"{'max |Δp|':>9s}")
        for label, got in outputs.items():
            changed = np.mean([np.argmax(p) != np.argmax(r[0]) for (p, _), r in zip(got, reference)])
            rel = [np.linalg.norm(e - r[1]) / np.linalg.norm(r[1]) for (_, e), r in zip(got, reference)]
            peak = max(np.abs(e - r[1]).max() / np.abs(r[1]).max() for (_, e), r in zip(got, reference))
            dp = max(np.abs(p - r[0]).max() for (p, _), r in zip(got, reference))
            print(f"{label:34s} {100 * changed:17.2f}% {np.median(rel):20.2e} {peak:16.2e} {dp:9.2e}", flush=True)


if __name__ == "__main__":
    main()
