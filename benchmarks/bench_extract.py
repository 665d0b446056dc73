"""Feature extraction throughput of a base-size backbone: one pass for all layers vs one pass per layer.

Random weights (a base HuBERT config: 12 layers, D=768, ~95 M parameters) have the real cost, so no download is
needed. Synthetic clips of 0.1-3 s (uniform) are generated in memory; the figures printed are clips/s and audio
seconds per second of wall time for:

- ``one-pass``: ``LayerFeatures`` with all 13 layers (0..12) from one forward per clip;
- ``packed``: the same 13 layers with the frames of many clips packed (``PackedFeatures``, what
  ``extract_features`` runs in float32 on the CPU), timed interleaved with ``one-pass`` (best of ``--rounds``),
  with the largest relative L2 difference of its features to ``one-pass`` (per clip and layer) and how many clips
  are bitwise equal; also whether a clip's packed features change with its pack neighbours (packs in reverse);
- ``per-layer``: 13 truncated modules, one forward each (what extraction per layer would cost);
- ``extract``: ``extract_features`` end to end on the same clips written as wav files (reading, resampling,
  packing, caching off).

``--batching`` adds the measurement behind the batching policy: features of clips zero-padded into one batch vs
alone (how much padding changes them), and throughput of equal-length batches vs one clip at a time on short
calls (all padded to 5,000 samples, as IMV's are).

    python benchmarks/bench_extract.py                 # ~2 minutes on 2 CPU cores
    python benchmarks/bench_extract.py --clips 300 --device cuda --batching
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from vocalprobe.runtime.core.manifest import ManifestRow, write_manifest
from vocalprobe.runtime.core.preprocess import repeat_pad
from vocalprobe.training.backbones import Backbone, resolve_device
from vocalprobe.training.extract import extract_features
from vocalprobe.training.features import LayerFeatures
from vocalprobe.training.packed_features import DEFAULT_MAX_FRAMES, PackedFeatures

RATE = 16_000


def base_hubert(device: torch.device) -> Backbone:
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    model = HubertModel(HubertConfig()).eval().to(device)  # facebook/hubert-base-ls960's architecture
    return Backbone(model=model, name="hubert-base-random", source="random", revision=None, family="hubert",
                    fingerprint="random-seed-0", spec=None)


def synthetic_clips(n: int, seed: int, low: float = 0.1, high: float = 3.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    clips = []
    for duration in rng.uniform(low, high, n):
        t = np.arange(int(duration * RATE)) / RATE
        f0 = rng.uniform(300, 4000)
        clips.append((0.5 * np.sin(2 * np.pi * f0 * t * (1 + 0.2 * t)) + 0.05 * rng.standard_normal(t.size))
                     .astype(np.float32))
    return clips


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_modules(modules: list[LayerFeatures], clips: list[np.ndarray], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for clip in clips:
            x = torch.from_numpy(clip)[None].to(device)
            for module in modules:
                module(x).cpu()
    _sync(device)
    return time.perf_counter() - start


def bf16_comparison(module: LayerFeatures, clips: list[np.ndarray], device: torch.device, rounds: int = 2) -> None:
    """One pass in fp32 vs under bf16 autocast (AVX-512 BF16 / AMX where the CPU has them), interleaved, best
    round; and how far bf16 moves the pooled features (relative L2 per clip and layer, the quantity a probe sees)."""
    audio = sum(c.size for c in clips) / RATE
    best = {"fp32": float("inf"), "bf16": float("inf")}
    for _ in range(rounds):
        for mode in best:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "bf16"):
                best[mode] = min(best[mode], time_modules([module], clips, device))
    for mode, seconds in best.items():
        report(f"one-pass {mode}", len(clips), audio, seconds)
    errors = []
    with torch.inference_mode():
        for clip in clips:
            x = torch.from_numpy(clip)[None].to(device)
            exact = module(x).float()
            with torch.autocast(device.type, dtype=torch.bfloat16):
                approx = module(x).float()
            errors.append(((approx - exact).norm(dim=-1) / exact.norm(dim=-1).clamp_min(1e-12)).flatten().cpu())
    errors = torch.cat(errors).numpy()
    print(f"bf16 is {best['fp32'] / best['bf16']:.2f}x fp32; pooled-feature error (relative L2, clips x layers): "
          f"median {np.median(errors):.4f}, p95 {np.percentile(errors, 95):.4f}, max {errors.max():.4f}")


def packed_comparison(module: LayerFeatures, clips: list[np.ndarray], device: torch.device, rounds: int,
                      max_frames: int) -> None:
    """One pass per clip vs packed frames, interleaved, best round each; then how far apart their features are."""
    padded = [torch.from_numpy(repeat_pad(c)).to(device) for c in clips]  # as extract_features hands them over
    audio = sum(c.size for c in clips) / RATE
    packed = PackedFeatures(module, max_frames=max_frames)
    best = {"one-pass": float("inf"), "packed": float("inf")}
    with torch.inference_mode():
        packed.features(padded[:2])  # warm-up
        for _ in range(rounds):
            best["one-pass"] = min(best["one-pass"], time_modules([module], [c.numpy() for c in padded], device))
            _sync(device)
            start = time.perf_counter()
            packed.features(padded)
            _sync(device)
            best["packed"] = min(best["packed"], time.perf_counter() - start)
        alone = [module(c[None])[0] for c in padded]
        together = packed.features(padded)
        reordered = packed.features(padded[::-1])[::-1]
    for mode, seconds in best.items():
        report(f"{mode} (best of {rounds})", len(clips), audio, seconds)
    rel = max(float(((p - a).norm(dim=-1) / a.norm(dim=-1).clamp_min(1e-12)).max()) for p, a in zip(together, alone))
    equal = sum(torch.equal(p, a) for p, a in zip(together, alone))
    same = sum(torch.equal(p, r) for p, r in zip(together, reordered))
    print(f"packed ({max_frames} frames per pack) is {best['one-pass'] / best['packed']:.2f}x one-pass; features: max "
          f"relative L2 difference {rel:.3g}, {equal}/{len(clips)} clips bitwise equal to one-pass, "
          f"{same}/{len(clips)} bitwise equal when packed in reverse order")


def report(name: str, n_clips: int, audio_s: float, seconds: float) -> None:
    print(f"{name:<28} {n_clips:5d} clips {seconds:8.2f} s   {n_clips / seconds:8.2f} clips/s   "
          f"{audio_s / seconds:8.1f} audio-s/s")


def batching(backbone: Backbone, device: torch.device, n_short: int) -> None:
    module = LayerFeatures(backbone.model)
    clips = synthetic_clips(8, seed=1, low=0.5, high=3.0)
    longest = max(c.size for c in clips)
    padded = np.stack([np.pad(c, (0, longest - c.size)) for c in clips])
    with torch.inference_mode():
        alone = [module(torch.from_numpy(c)[None].to(device))[0].cpu().numpy() for c in clips]
        batch = module(torch.from_numpy(padded).to(device)).cpu().numpy()
    rel = [np.linalg.norm(batch[i] - alone[i]) / np.linalg.norm(alone[i]) for i in range(len(clips))]
    print(f"zero-padded batch vs alone (8 clips 0.5-3 s): relative L2 change per clip "
          f"min {min(rel):.3g} max {max(rel):.3g} (0 for the longest clip: {min(rel) == 0})")
    equal = np.stack([clips[0][:RATE]] * 4)
    with torch.inference_mode():
        batched = module(torch.from_numpy(equal).to(device)).cpu().numpy()
        single = module(torch.from_numpy(equal[:1]).to(device)).cpu().numpy()
    print(f"equal-length batch of 4 vs alone: max abs diff {np.abs(batched - single).max():.3g}")

    short = [repeat_pad(c) for c in synthetic_clips(n_short, seed=2, low=0.05, high=0.3)]
    audio = sum(c.size for c in short) / RATE
    report("short calls one at a time", len(short), audio, time_modules([module], short, device))
    _sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, len(short), 16):
            module(torch.from_numpy(np.stack(short[first:first + 16])).to(device)).cpu()
    _sync(device)
    report("short calls batched by 16", len(short), audio, time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=40, help="synthetic clips of 0.1-3 s (default 40; "
                        "use a few hundred where time allows)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default). On a "
                        "shared, oversubscribed machine use 1: OpenMP threads waiting on busy cores ran 8x slower")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the packed vs one-pass timing (best kept)")
    parser.add_argument("--max-frames", type=int, default=DEFAULT_MAX_FRAMES, help="frames per pack")
    parser.add_argument("--skip-packed", action="store_true", help="skip the packed vs one-pass comparison")
    parser.add_argument("--skip-per-layer", action="store_true", help="skip the (much slower) per-layer mode")
    parser.add_argument("--batching", action="store_true", help="also measure the batching policy")
    parser.add_argument("--bf16", action="store_true", help="also time one pass under bf16 autocast and measure "
                        "how far it moves the pooled features")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    backbone = base_hubert(device)
    n_layers = backbone.num_layers
    clips = synthetic_clips(args.clips, seed=0)
    audio = sum(c.size for c in clips) / RATE
    params = sum(p.numel() for p in backbone.model.parameters()) / 1e6
    print(f"backbone: base HuBERT architecture, random weights, {params:.1f} M parameters, {n_layers} layers, "
          f"device {device}, torch threads {torch.get_num_threads()}")
    print(f"clips: {len(clips)} of 0.1-3 s, {audio:.1f} s of audio in all")

    one_pass = LayerFeatures(backbone.model)
    time_modules([one_pass], clips[:2], device)  # warm-up
    one = time_modules([one_pass], clips, device)
    report(f"one-pass ({n_layers + 1} layers)", len(clips), audio, one)
    if not args.skip_packed:
        packed_comparison(one_pass, clips, device, args.rounds, args.max_frames)
    if args.bf16:
        bf16_comparison(one_pass, clips, device)
    if not args.skip_per_layer:
        per_layer = [LayerFeatures(backbone.model, layers=[k], max_layer=k) for k in range(n_layers + 1)]
        several = time_modules(per_layer, clips, device)
        report(f"per-layer ({n_layers + 1} passes)", len(clips), audio, several)
        print(f"one pass is {several / one:.1f}x faster than one pass per layer")

    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for i, clip in enumerate(clips):
            sf.write(str(Path(tmp) / f"c{i:04d}.wav"), clip, RATE, subtype="PCM_16")
            rows.append(ManifestRow(f"c{i:04d}.wav", f"class{i % 4}", split="train"))
        manifest = write_manifest(Path(tmp) / "manifest.csv", rows)
        result = extract_features(manifest, backbone, device=str(device), progress=False)
        report("extract (files, packed)", len(clips), audio, result.stats["seconds"])

    if args.batching:
        batching(backbone, device, n_short=max(32, args.clips))


if __name__ == "__main__":
    main()
