"""How the product's preprocessing composes with Whisper's log-mel front end, measured on real recordings.

vocalprobe peak-normalises every clip (and tiles clips under 5,000 samples) before any backbone; Whisper's own
front end then takes log10 of the mel power, floors it at the clip's maximum - 8 and maps it with (x + 4) / 4. Peak
normalisation therefore shifts a clip's whole log-mel by a constant (2 log10(1 / peak) / 4), and the encoder, trained
on speech at its recorded level, sees every clip at full scale. This compares, on the farm-animals set
(tests/real_audio.py) and trained tiny.en, the pooled features with and without peak normalisation: their relative
difference per layer, and a leave-one-recording-out nearest-class-mean UAR (a read-out with no training noise).

    python benchmarks/bench_whisper_preprocessing.py
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def nearest_mean_uar(features: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """Leave one recording out: z-score on the rest, assign each held-out clip to the nearest class mean."""
    predicted = np.empty(len(labels), dtype=labels.dtype)
    for group in np.unique(groups):
        test = groups == group
        train = ~test
        mu, sd = features[train].mean(0), features[train].std(0) + 1e-8
        z_train, z_test = (features[train] - mu) / sd, (features[test] - mu) / sd
        classes = np.unique(labels[train])
        means = np.stack([z_train[labels[train] == c].mean(0) for c in classes])
        predicted[test] = classes[np.argmin(((z_test[:, None, :] - means[None]) ** 2).sum(-1), axis=1)]
    recalls = [np.mean(predicted[labels == c] == c) for c in np.unique(labels)]
    return float(np.mean(recalls))


def main() -> None:
    import torch
    from real_audio import farm_dataset
    from whisper_weights import cache_root

    from vocalprobe.runtime.core.audio import read_audio
    from vocalprobe.runtime.core.resample import resample
    from vocalprobe.training.backbones import load_backbone
    from vocalprobe.training.features import LayerFeatures, clip_features
    from vocalprobe.training.whisper.convert import convert_whisper
    from vocalprobe.training.whisper.pinned import ct2_folder

    torch.set_num_threads(2)
    dataset = farm_dataset()
    folder = REPO / "artifacts" / "bench" / "whisper-tiny.en"
    if not (folder / "conversion.json").is_file():
        convert_whisper(ct2_folder("tiny.en", cache_root()), folder, overwrite=True)
    module = LayerFeatures(load_backbone(folder).model)
    rows = list(csv.DictReader(open(dataset / "manifest.csv", newline="")))
    variants = {"peak-normalised (the product)": module.peak_normalize, "recorded level": lambda x: x,
                "40 dB quieter": lambda x: 0.01 * x}
    features = {}
    peaks = []
    with torch.inference_mode():
        for name, normalise in variants.items():
            module.peak_normalize = normalise
            feats = []
            for row in rows:
                start = float(row["start"]) if row["start"] else None
                end = float(row["end"]) if row["end"] else None
                samples, rate = read_audio(dataset / row["path"], start, end)
                samples = resample(samples, rate)
                if name.startswith("peak"):
                    peaks.append(float(np.abs(samples).max()))
                feats.append(clip_features(module, samples, 20 * 16_000))
            features[name] = np.stack(feats)  # (clips, layers, 2D)
    labels = np.array([r["label"] for r in rows])
    groups = np.array([r["group"] for r in rows])
    print(f"farm animals: {len(rows)} clips, {len(set(groups))} recordings, {len(set(labels))} classes; clip peaks "
          f"{np.min(peaks):.3f}-{np.max(peaks):.3f} (median {np.median(peaks):.3f}); chance UAR 14.3 %")
    print("leave-one-recording-out nearest-class-mean UAR %, and the median relative feature difference")
    names = list(variants)
    print(f"{'layer':>5}  " + "  ".join(f"{n:>30}" for n in names) + "   (UAR; median |Δf| / |f| vs the product)")
    base = features[names[0]]
    for i, layer in enumerate(module.layers):
        cells = []
        for name in names:
            f = features[name][:, i]
            diff = np.median(np.linalg.norm(f - base[:, i], axis=1) / np.linalg.norm(base[:, i], axis=1))
            cells.append(f"{100 * nearest_mean_uar(f, labels, groups):5.1f} ({diff:.3f})")
        print(f"{layer:>5}  " + "  ".join(f"{c:>30}" for c in cells))


if __name__ == "__main__":
    main()
