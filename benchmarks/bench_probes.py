"""Probes per hour, one at a time (ProbeClassifier) vs batched (probe_batched.fit_probes), and the paper's probe phase.

Two cases, random features (the time of a step does not depend on the values), 1,536 features (mean+std of a
768-wide layer), 11 classes, Val = 2/7 of Train (the paper's 70:20 split):

* ``done``: issue 23's "Done means" case: 7 layers x 3 seeds on 2,000 Train clips (125 steps an epoch), whole
  epochs.
* ``imv``: IMV-sized: 13 layers x 3 seeds; a 51,000-clip epoch has 3,188 steps, so one shortened epoch of ``--steps``
  Train batches (and the same share of Val) is timed and scaled.

Both trainers run in one process, interleaved (batched run, then a slice of the one-at-a-time probes, repeated), so a
shared machine's load falls on both alike; wall time and this process's CPU time are printed. One at a time runs on
one thread (as the study did before batching); the batched trainer on ``--workers`` threads, a group each
(default: torch's thread count, the cores). Rates are per probe and
per batch-16 step, Val included; a probe's full protocol is 30 epochs (early stopping only shortens both trainers
alike). The paper config's probe phase is projected from each case's rate: 7 backbones x 13 layers x 3 seeds per
dataset, Train sizes 70 % of IMV 72,920, Watkins 1,697 and Abzaliev 8,034 clips: 819 probes.

* ``study``: the "Done means" case end to end: 7 layers x 3 seeds, 2,000 Train, 571 Val and 571 Test clips of
  features with a class signal whose strength differs by layer, the full protocol (early stopping included) both ways;
  prints both wall times, the speed-up, each trainer's best layer (mean Val UAR over seeds) and how far any probe's
  Val or Test UAR moved. Minutes: the one-at-a-time half is the slow one.

    python benchmarks/bench_probes.py                 # done and imv
    python benchmarks/bench_probes.py --case done --epochs 1 --repeats 1
    python benchmarks/bench_probes.py --case study
    python benchmarks/bench_probes.py --case study --train 112   # tiny (benchmarks/gpu_check.py --quick)
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import replace

import numpy as np
import torch

from vocalprobe.training.probe import ProbeClassifier, ProbeConfig
from vocalprobe.training.probe_batched import GROUP_SIZE, ProbeJob, fit_probes

N_FEATURES, N_CLASSES, EPOCHS, BATCH = 1_536, 11, 30, 16
PAPER_TRAIN = {"IMV": 51_044, "Watkins": 1_188, "Abzaliev": 5_624}  # 70 % of the paper's clips
PAPER_PROBES_PER_DATASET = 7 * 13 * 3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("done", "imv", "both", "study"), default="both")
    parser.add_argument("--epochs", type=int, default=2, help="done: whole epochs timed per run (default 2)")
    parser.add_argument("--steps", type=int, default=200, help="imv: Train batches of the shortened epoch")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--train", type=int, default=2_000,
                        help="done and study: Train clips (default 2,000; Val and Test 2/7 of it)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--group-size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None,
                        help="groups the batched trainer trains at once, a thread each (default: the CPU cores)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    group = args.group_size or GROUP_SIZE.get(device.type, GROUP_SIZE["cuda"])
    workers = args.workers or torch.get_num_threads()
    print(f"device {device}, torch {torch.__version__}, {os.cpu_count()} cores, batched groups of at most {group} on "
          f"{workers} worker thread(s), one at a time on 1 thread; "
          f"load average {os.getloadavg()[0]:.2f} at start (the machine may be shared: wall times swing with it, "
          "the ratio of interleaved runs less)")
    if args.case in ("done", "both"):
        run_case(f"done: 7 layers x 3 seeds, {args.train:,} Train clips", args.train, 7, 3, args.epochs, args, group)
    if args.case in ("imv", "both"):
        run_case(f"imv: 13 layers x 3 seeds, 1 epoch of {args.steps} steps", args.steps * BATCH, 13, 3, 1, args,
                 group, full_steps=math.ceil(PAPER_TRAIN["IMV"] / BATCH))
    if args.case == "study":
        run_study(args, group)
    print(f"load average at end {os.getloadavg()[0]:.2f}")


def run_study(args, group: int) -> None:
    """The Done-means case, full protocol: times, speed-up, best layers and UAR differences."""
    from vocalprobe.runtime.core.metrics import uar

    n_train, n_layers, n_seeds = args.train, 7, 3
    n_val = n_test = round(n_train * 2 / 7)
    n = n_train + n_val + n_test
    rng = np.random.default_rng(0)
    y = rng.integers(0, N_CLASSES, n)
    signal = np.array([0.02, 0.04, 0.07, 0.09, 0.06, 0.04, 0.025])  # per layer: scale of the class means
    x = np.stack([rng.standard_normal((N_CLASSES, N_FEATURES), dtype=np.float32)[y] * s
                  + rng.standard_normal((n, N_FEATURES), dtype=np.float32) for s in signal], axis=1)
    x = x.astype(np.float32) * 3.0 + 10.0  # (n, n_layers, N_FEATURES), offset and scaled so z-scoring matters
    train, val, test = np.arange(n_train), np.arange(n_train, n_train + n_val), np.arange(n_train + n_val, n)
    jobs = [ProbeJob(layer, seed) for layer in range(n_layers) for seed in range(n_seeds)]
    cfg = ProbeConfig(device=args.device)
    half = len(jobs) // 2

    def single(some):
        return [ProbeClassifier(replace(cfg, seed=j.seed)).fit(x[train, j.layer], y[train], x[val, j.layer], y[val],
                                                                n_classes=N_CLASSES) for j in some]

    ref: list = []
    t_single = _clock(lambda: ref.extend(single(jobs[:half])))
    got: list = []
    t_batched = _clock(lambda: got.extend(fit_probes(x, y, train=train, val=val, jobs=jobs, config=cfg,
                                                     n_classes=N_CLASSES, group_size=group,
                                                     workers=args.workers)))
    t_single += _clock(lambda: ref.extend(single(jobs[half:])))

    def table(fitted):
        val_uar = np.array([[fitted[layer * n_seeds + s].score(x[val, layer], y[val]) for s in range(n_seeds)]
                            for layer in range(n_layers)])
        test_uar = np.array([[uar(y[test], fitted[layer * n_seeds + s].predict(x[test, layer]))
                              for s in range(n_seeds)] for layer in range(n_layers)])
        return val_uar, test_uar

    (v_ref, t_ref), (v_got, t_got) = table(ref), table(got)
    epochs = [len(c.history_) for c in ref]
    print(f"\nstudy: 7 layers x 3 seeds, full protocol, {n_train:,} Train / {n_val:,} Val / {n_test:,} Test clips; "
          f"epochs run {min(epochs)}-{max(epochs)} (mean {np.mean(epochs):.1f})")
    print(f"  one at a time: {t_single[0]:7.1f} s wall ({t_single[1]:7.1f} s CPU)")
    print(f"        batched: {t_batched[0]:7.1f} s wall ({t_batched[1]:7.1f} s CPU)")
    print(f"  speed-up: {t_single[0] / t_batched[0]:.1f}x wall, {t_single[1] / t_batched[1]:.1f}x CPU time")
    print(f"  mean Val UAR per layer, one at a time: {np.round(v_ref.mean(1), 4).tolist()}")
    print(f"  mean Val UAR per layer, batched:       {np.round(v_got.mean(1), 4).tolist()}")
    print(f"  best layer: one at a time {int(v_ref.mean(1).argmax())}, batched {int(v_got.mean(1).argmax())}; "
          f"largest UAR difference of any probe: Val {np.abs(v_ref - v_got).max():.2g}, "
          f"Test {np.abs(t_ref - t_got).max():.2g}; same epochs run: "
          f"{epochs == [len(c.history_) for c in got]}")


def run_case(title: str, n_train: int, n_layers: int, n_seeds: int, epochs: int, args, group: int,
             full_steps: int | None = None) -> None:
    n_val = round(n_train * 2 / 7)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n_train + n_val, n_layers, N_FEATURES), dtype=np.float32)
    y = rng.integers(0, N_CLASSES, n_train + n_val)
    train, val = np.arange(n_train), np.arange(n_train, n_train + n_val)
    jobs = [ProbeJob(layer, seed) for layer in range(n_layers) for seed in range(n_seeds)]
    cfg = ProbeConfig(max_epochs=epochs, device=args.device)
    steps = math.ceil(n_train / BATCH) * epochs  # per probe and run
    full_steps = full_steps or math.ceil(n_train / BATCH)  # per probe and full-size epoch

    fit_probes(x, y, train=train[:64], val=val[:32], jobs=jobs[:2], config=cfg, n_classes=N_CLASSES)  # warm up
    ProbeClassifier(cfg).fit(x[:64, 0], y[:64], x[val[:32], 0], y[val[:32]], n_classes=N_CLASSES)
    batched, single, n_single = np.zeros(2), np.zeros(2), 0
    for r in range(args.repeats):
        batched += _clock(lambda: fit_probes(x, y, train=train, val=val, jobs=jobs, config=cfg, n_classes=N_CLASSES,
                                             group_size=group, workers=args.workers))
        some = jobs[r::args.repeats]  # each repeat a different slice; together every probe once
        single += _clock(lambda: [ProbeClassifier(replace(cfg, seed=j.seed)).fit(
            x[train, j.layer], y[train], x[val, j.layer], y[val], n_classes=N_CLASSES) for j in some])
        n_single += len(some)
    per_step_b = batched / (args.repeats * len(jobs) * steps)  # seconds per probe-step: wall, CPU
    per_step_s = single / (n_single * steps)
    print(f"\n{title} ({n_val} Val clips): {len(jobs)} probes batched x {args.repeats}, {n_single} one at a time")
    for name, rate in (("one at a time", per_step_s), ("batched", per_step_b)):
        probe_s = rate * full_steps * EPOCHS
        phase_h = sum(PAPER_PROBES_PER_DATASET * math.ceil(n / BATCH) * EPOCHS * rate for n in PAPER_TRAIN.values())
        phase_h /= 3600
        print(f"  {name:>13}: {rate[0] * 1e3:6.3f} ms per probe-step wall ({rate[1] * 1e3:6.3f} CPU), "
              f"{3600 / probe_s[0]:8.1f} probes per hour at this size, paper's 819 probes in {phase_h[0]:6.1f} h wall "
              f"({phase_h[1]:6.1f} h CPU)")
    print(f"  speed-up: {per_step_s[0] / per_step_b[0]:.1f}x wall, {per_step_s[1] / per_step_b[1]:.1f}x CPU time")


def _clock(run) -> np.ndarray:
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return np.array([time.perf_counter() - wall, time.process_time() - cpu])


if __name__ == "__main__":
    main()
