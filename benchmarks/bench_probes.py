"""Probes per hour, one at a time (ProbeClassifier) vs batched (probe_batched.fit_probes), on IMV-sized features.

IMV-sized: 51,000 Train and 14,600 Val clips, 1,536 features (mean+std of a 768-wide layer), 11 classes, 13 layers
x 3 seeds per (dataset, backbone). A full run of one probe is 30 epochs of 3,188 batch-16 steps; this script times
one shortened epoch (``--steps`` Train batches and the same share of Val clips) of every probe, both ways, and
projects an hour and the paper config's probe phase (7 backbones x 13 layers x 3 seeds x 3 datasets = 819 probes)
from the rates, every probe running all 30 epochs (early stopping only shortens both). Random features: the time
of a step does not depend on the values.

    python benchmarks/bench_probes.py            # 13 layers x 3 seeds, 200 steps
    python benchmarks/bench_probes.py --quick    # 4 layers x 2 seeds, 50 steps
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from vocalprobe.training.probe import ProbeClassifier, ProbeConfig
from vocalprobe.training.probe_batched import GROUP_SIZE, ProbeJob, fit_probes

N_TRAIN, N_VAL, N_FEATURES, N_CLASSES = 51_000, 14_600, 1_536, 11
PAPER_PROBES, EPOCHS = 819, 30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 layers x 2 seeds, 50 steps")
    parser.add_argument("--steps", type=int, default=None, help="Train batches timed per probe (default 200)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--group-size", type=int, default=None)
    parser.add_argument("--single", type=int, default=None, help="probes timed one at a time (default all)")
    args = parser.parse_args()
    layers, seeds, steps = (4, 2, 50) if args.quick else (13, 3, 200)
    steps = args.steps or steps
    device = torch.device(args.device)
    cfg = ProbeConfig(max_epochs=1, device=str(device))
    n_train = steps * 16
    n_val = max(1, round(N_VAL * n_train / N_TRAIN))  # Val work in proportion to a full epoch's
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n_train + n_val, layers, N_FEATURES), dtype=np.float32)
    y = rng.integers(0, N_CLASSES, n_train + n_val)
    train, val = np.arange(n_train), np.arange(n_train, n_train + n_val)
    jobs = [ProbeJob(layer, seed) for layer in range(layers) for seed in range(seeds)]
    group = args.group_size or GROUP_SIZE.get(device.type, GROUP_SIZE["cuda"])
    full_epoch = (N_TRAIN // 16 + 1) / steps  # shortened epochs per full one
    print(f"device {device}, torch {torch.__version__}, load average {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} cores; {len(jobs)} probes ({layers} layers x {seeds} seeds), {steps} steps + "
          f"{n_val} Val clips each; batched in groups of {group}")

    def report(name: str, seconds_per_probe: float) -> float:
        per_probe = seconds_per_probe * full_epoch * EPOCHS  # one probe, full protocol
        print(f"{name:>14}: {seconds_per_probe / steps * 1e3:6.3f} ms per probe-step, {3600 / per_probe:7.1f} probes "
              f"per hour, paper's {PAPER_PROBES} probes in {PAPER_PROBES * per_probe / 3600:7.1f} h")
        return per_probe

    fit_probes(x, y, train=train[:64], val=val, jobs=jobs[:2], config=cfg, n_classes=N_CLASSES)  # warm up
    start = time.perf_counter()
    fit_probes(x, y, train=train, val=val, jobs=jobs, config=cfg, n_classes=N_CLASSES, group_size=group)
    batched = report("batched", (time.perf_counter() - start) / len(jobs))

    some = jobs[:args.single or len(jobs)]
    start = time.perf_counter()
    for job in some:
        ProbeClassifier(replace_seed(cfg, job.seed)).fit(x[train, job.layer], y[train], x[val, job.layer], y[val],
                                                         n_classes=N_CLASSES)
    single = report("one at a time", (time.perf_counter() - start) / len(some))
    print(f"speed-up {single / batched:.1f}x; load average after {os.getloadavg()[0]:.2f}")


def replace_seed(cfg: ProbeConfig, seed: int) -> ProbeConfig:
    from dataclasses import replace

    return replace(cfg, seed=seed)


if __name__ == "__main__":
    main()
