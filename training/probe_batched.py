"""Many probes of one (dataset, backbone) trained at once: every layer x seed as one stacked module.

A study trains 13 layers x 3 seeds probes on the same clips. One at a time, each batch-16 step of a probe is mostly
framework overhead; here a group of probes shares every step: the parameters carry a leading probe axis, each
Linear is one batched matmul (``torch.baddbmm``), the backward is written out (no autograd graph per step) into
gradient buffers allocated once, and Adam is torch's fused kernel over the stacked tensors. What remains per probe and
step is the arithmetic of the first Linear (forward and weight gradient) and Adam's pass over its weights.
The paper's protocol is unchanged, per probe: weights initialised by ``MLPProbe`` under the probe's seed (the same
tensors ``ProbeClassifier`` starts from), its own batch order from its seed, z-scoring with its layer's Train
statistics, Adam, its own Val-loss plateau schedule, early stopping on its Val UAR and its best-Val-UAR checkpoint.
A probe that stops leaves the group and no longer changes.

``fit_probes`` returns one fitted ``ProbeClassifier`` per probe, so scoring and saving go through the single-probe
API. ``ProbeClassifier`` stays the reference; tests/training/test_probe_batched.py checks both agree.

On a CPU the groups train concurrently, one per worker thread (every kernel single-threaded, so no thread waits on
another within a step). A probe's result does not depend on its group: each stacked tensor gives every probe a slot
padded to whole vectors of the fused Adam kernel (its scalar tail rounds differently), Val is scored in fixed-size
chunks and the Train loss is summed exactly. So the workers, the group size and a study resumed with a few probes
missing give the probes of an uninterrupted run, bit for bit (CPU; tested).

Memory: the probes run in groups of at most ``group_size``; a group holds z-scored float32 copies of its layers' Train
and Val rows (made once, on the device it trains on), its parameters, their gradients and Adam state; ``workers``
groups are held at a time.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from vocalprobe.runtime.core.metrics import uar
from vocalprobe.training.probe import (
    EpochLog,
    MLPProbe,
    ProbeClassifier,
    ProbeConfig,
    ProbeInputError,
    _cpu_threads,
    check_labels,
)

#: Probes per group by device type. On 2 busy CPU cores larger groups amortise each step's ~50 kernel calls better
#: (docs/probes.md: 11-21 probes about equal, 7 a fifth slower, 3 half); 12 is 4 layers x 3 seeds, whose z-scored
#: Train and Val rows a group holds (1.6 GB at IMV size).
GROUP_SIZE = {"cpu": 12, "cuda": 64}

#: Floats per probe slot of a stacked tensor: a multiple of this is whole fused-Adam vectors on any CPU (AVX-512: 16)
_ALIGN = 64
#: Val clips per probe and forward pass: a constant, so that a probe's Val logits do not depend on its group's size
_VAL_ROWS = 256
_INIT_LOCK = threading.Lock()  # a probe's seeded initialisation draws from torch's global generator

_layer_norm_backward = torch.ops.aten.native_layer_norm_backward  # LayerNorm's own backward kernel, as autograd's
_BETAS, _EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, which ProbeClassifier uses


@dataclass(frozen=True)
class ProbeJob:
    """One probe of a batch: which layer of the feature array it reads, and its seed."""

    layer: int  # index on the feature array's layer axis
    seed: int


def fit_probes(features: np.ndarray, labels: np.ndarray, *, train: np.ndarray, val: np.ndarray,
               jobs: Sequence[ProbeJob], config: ProbeConfig | None = None, n_classes: int | None = None,
               group_size: int | None = None, workers: int | None = None,
               on_epoch: Callable[[int, EpochLog], None] | None = None,
               on_fitted: Callable[[int, ProbeClassifier], None] | None = None) -> list[ProbeClassifier]:
    """Train one probe per job on ``features`` (n_clips, n_layers, n_features) with the paper's protocol.

    ``train`` and ``val`` are row indices into ``features`` and ``labels``; the job's seed replaces
    ``config.seed``. Returns fitted ``ProbeClassifier`` s in job order, each as ``ProbeClassifier(config with the
    job's seed).fit(features[train, layer], ...)`` would be. ``on_epoch(job_index, log)`` follows every epoch (one
    call at a time, from the worker threads); ``on_fitted(job_index, probe)`` is called in the caller's thread as soon
    as the probe's group has finished, so a caller can save probes while others still train.
    ``workers``: groups trained at once on a CPU, one thread each (default: torch's CPU thread count, i.e. the cores or
    what ``torch.set_num_threads`` chose; a GPU trains one group at a time). The results do not depend on it.
    """
    cfg = config or ProbeConfig()
    features = np.asarray(features)
    if features.ndim != 3:
        raise ProbeInputError(f"features: expected a 3-D array (n_clips, n_layers, n_features), got shape "
                              f"{features.shape}")
    if not np.issubdtype(features.dtype, np.floating):
        raise ProbeInputError(f"features: expected floats, got dtype {features.dtype}")
    train, val = np.asarray(train, np.int64), np.asarray(val, np.int64)
    if train.size == 0 or val.size == 0:
        raise ProbeInputError(f"expected Train and Val clips, got {train.size} and {val.size}")
    y = check_labels(labels, n_clips=features.shape[0], n_classes=n_classes)
    if n_classes is None:
        n_classes = int(max(y[train].max(), y[val].max())) + 1
    if n_classes < 2:
        raise ProbeInputError(f"a probe needs at least 2 classes, got {n_classes}")
    bad = [j for j in jobs if not 0 <= j.layer < features.shape[1]]
    if bad:
        raise ProbeInputError(f"features have {features.shape[1]} layers; no layer index {bad[0].layer}")
    device = torch.device(cfg.device)
    size = group_size or GROUP_SIZE.get(device.type, GROUP_SIZE["cuda"])
    workers = 1 if device.type != "cpu" else max(1, workers or torch.get_num_threads())
    groups = _partition(len(jobs), size, workers)
    fitted: list[ProbeClassifier | None] = [None] * len(jobs)
    stop = threading.Event()  # set when the caller stops (an error, Ctrl-C): the other groups end within a step
    report_lock = threading.Lock()

    def train_group(rows: range) -> list[ProbeClassifier]:
        def report(i: int, log: EpochLog) -> None:
            with report_lock:
                on_epoch(rows[i], log)

        group = _Group(features, y, train, val, [jobs[i] for i in rows], cfg, n_classes, device, stop)
        return group.fit(None if on_epoch is None else report)

    def finished(rows: range, probes: list[ProbeClassifier]) -> None:
        for i, clf in zip(rows, probes):
            fitted[i] = clf
            if on_fitted is not None:
                on_fitted(i, clf)

    with _cpu_threads(device):
        if min(workers, len(groups)) <= 1:  # in this thread: nothing to wait for, and profilers see it
            for rows in groups:
                finished(rows, train_group(rows))
            return fitted  # type: ignore[return-value]
        with ThreadPoolExecutor(min(workers, len(groups))) as pool:
            pending = {pool.submit(train_group, rows): rows for rows in groups}
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        finished(pending.pop(future), future.result())
            finally:
                stop.set()
                for future in pending:
                    future.cancel()
    return fitted  # type: ignore[return-value]  # every slot is filled once the loop ends without an error


def _partition(n_jobs: int, size: int, workers: int) -> list[range]:
    """Consecutive job ranges: at most ``size`` jobs each, at least one per worker, sizes within one of each other
    (jobs come layer by layer, so a group holds few layers' rows)."""
    n_groups = min(n_jobs, max(math.ceil(n_jobs / size), workers))
    bounds = [round(i * n_jobs / n_groups) for i in range(n_groups + 1)] if n_jobs else [0]
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


class _Group:
    """A group of probes trained in lockstep; parameters stacked on a leading probe axis.

    Each step is a fixed sequence of batched kernels with a hand-written backward (no autograd graph): one
    ``index_select`` gathers every probe's batch from the z-scored rows, one ``baddbmm`` per Linear, gradients go into
    buffers allocated once, and one fused Adam call per distinct learning rate updates them.
    """

    def __init__(self, features: np.ndarray, y: np.ndarray, train: np.ndarray, val: np.ndarray,
                 jobs: list[ProbeJob], cfg: ProbeConfig, n_classes: int, device: torch.device,
                 stop: threading.Event | None = None):
        self.cfg, self.jobs, self.device, self.n_classes = cfg, jobs, device, n_classes
        self.stop = stop or threading.Event()
        layers = sorted({j.layer for j in jobs})
        self.n_train, self.n_val = train.size, val.size
        # z-scored Train and Val rows of the group's layers, once: z-scoring per step would repeat the same work
        z_train, z_val, stats = [], [], {}
        for layer in layers:
            x_train = torch.from_numpy(np.asarray(features[train, layer], dtype=np.float32))  # (n_train, n_features)
            x_val = torch.from_numpy(np.asarray(features[val, layer], dtype=np.float32))  # (n_val, n_features)
            # Train statistics, exactly as ProbeClassifier computes them (MLPProbe.set_normalization's std 0 -> 1)
            x64 = x_train.double()
            mean, std = x64.mean(0), x64.std(0, unbiased=False)
            # a NaN or infinity anywhere makes a float64 sum non-finite (finite float32 values cannot overflow it)
            if not torch.isfinite(mean).all() or not math.isfinite(x_val.double().sum()):
                raise ProbeInputError(f"features of layer index {layer} have NaN or infinite values")
            mean, std = mean.float(), std.float()
            std = torch.where(std > 0, std, torch.ones_like(std))
            stats[layer] = mean, std
            z_train.append((x_train - mean) / std)  # the same float32 operations as MLPProbe.forward
            z_val.append((x_val - mean) / std)
        self.z_train = torch.cat(z_train).to(device)  # (n_layers here * n_train, n_features), layer-major
        self.z_val = torch.stack(z_val).to(device)  # (n_layers here, n_val, n_features)
        self.slot = torch.tensor([layers.index(j.layer) for j in jobs], device=device)  # (P,) layer of each probe
        self.y_train = torch.from_numpy(y[train]).to(device)
        self.y_val = torch.from_numpy(y[val]).to(device)
        self.y_val_np = y[val]
        # the probes: each MLPProbe built under its seed, as ProbeClassifier builds it
        self.models = []
        for job in jobs:
            with _INIT_LOCK, torch.random.fork_rng(devices=[]):
                torch.manual_seed(job.seed)
                model = MLPProbe(features.shape[2], n_classes, cfg.hidden_sizes)
            model.set_normalization(*stats[job.layer])
            self.models.append(model)
        kinds = [_kind(m) for m in [*self.models[0].blocks, self.models[0].head]]
        self.eps = [k[1] for k in kinds if k[0] == "norm"]
        if kinds != [k for e in self.eps for k in (("linear",), ("norm", e), ("relu",))] + [("linear",)]:
            raise ValueError(f"the batched trainer knows [Linear, LayerNorm, ReLU] blocks and a Linear, got {kinds}")
        # per block: Linear weight (P, out, in) and bias (P, out), LayerNorm weight and bias (P, width); then the head
        self.shapes = [tuple(t.shape) for t in _parameters(self.models[0])]
        self.store = [_aligned(torch.stack(ts)).to(device) for ts in zip(*[_parameters(m) for m in self.models])]
        self.params = _views(self.store, self.shapes)

    # -- the stacked forward and backward ---------------------------------------------------------------------------

    def forward(self, params: list[torch.Tensor], z: torch.Tensor, keep: list | None = None) -> torch.Tensor:
        """z-scored features (P, b, n_features) -> logits (P, b, n_classes), as MLPProbe.forward per probe.
        ``keep`` collects what the backward needs."""
        h = z
        for i, eps in enumerate(self.eps):
            weight, bias, gain, shift = params[4 * i:4 * i + 4]
            a = torch.baddbmm(bias[:, None, :], h, weight.transpose(1, 2))  # (P, b, width)
            normed, mu, rstd = torch.native_layer_norm(a, a.shape[-1:], None, None, eps)
            s = torch.addcmul(shift[:, None, :], normed, gain[:, None, :])
            if keep is not None:
                keep.append((h, a, normed, mu, rstd, s))
            h = torch.relu(s)
        if keep is not None:
            keep.append(h)
        return torch.baddbmm(params[-1][:, None, :], h, params[-2].transpose(1, 2))

    def backward(self, params: list[torch.Tensor], grads: list[torch.Tensor], keep: list,
                 d: torch.Tensor) -> None:
        """Gradients of every probe's loss into ``grads``, from ``d`` = dloss/dlogits (P, b, n_classes)."""
        h = keep[-1]
        torch.bmm(d.transpose(1, 2), h, out=grads[-2])  # (P, out, in): faster than (P, in, out) here
        torch.sum(d, 1, out=grads[-1])
        dh = torch.bmm(d, params[-2])
        for i in reversed(range(len(self.eps))):
            x, a, normed, mu, rstd, s = keep[i]
            ds = dh.mul_(s > 0)  # ReLU
            torch.sum(ds * normed, 1, out=grads[4 * i + 2])
            torch.sum(ds, 1, out=grads[4 * i + 3])
            dn = ds.mul_(params[4 * i + 2][:, None, :])
            da = _layer_norm_backward(dn, a, a.shape[-1:], mu, rstd, None, None, [True, False, False])[0]
            torch.bmm(da.transpose(1, 2), x, out=grads[4 * i])
            torch.sum(da, 1, out=grads[4 * i + 1])
            if i:
                dh = torch.bmm(da, params[4 * i])

    @torch.no_grad()
    def _val_logits(self, slot: torch.Tensor) -> torch.Tensor:
        """Val logits (P_active, n_val, n_classes) of the probes still training, ``_VAL_ROWS`` clips at a time."""
        out = []
        for i in range(0, self.n_val, _VAL_ROWS):
            out.append(self.forward(self.params, self.z_val[:, i:i + _VAL_ROWS].index_select(0, slot)))
        return torch.cat(out, dim=1)

    # -- training ---------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def fit(self, on_epoch: Callable[[int, EpochLog], None] | None) -> list[ProbeClassifier]:
        cfg, n_probes, device, n_train = self.cfg, len(self.jobs), self.device, self.n_train
        adam = _Adam(self.store, cfg, n_probes)
        grads = _views(adam.grads, self.shapes)
        shuffles = [torch.Generator().manual_seed(job.seed) for job in self.jobs]  # batch order, on CPU
        plateaus = [_Plateau(cfg) for _ in self.jobs]
        best = [torch.empty_like(p) for p in self.store]  # best-Val-UAR weights, per probe
        history: list[list[EpochLog]] = [[] for _ in self.jobs]
        best_uar = [-math.inf] * n_probes
        best_epoch = [0] * n_probes
        without_gain = [0] * n_probes
        stopped = [False] * n_probes
        active = list(range(n_probes))  # probe positions still training; self.params rows follow this order
        slot = self.slot
        starts = range(0, n_train, cfg.batch_size)

        for epoch in range(1, cfg.max_epochs + 1):
            # each probe's batch order from its own generator, drawn as ProbeClassifier draws it
            order = torch.stack([torch.randperm(n_train, generator=shuffles[p]) for p in active]).to(device)
            rows = order + slot[:, None] * n_train  # (P_active, n_train) rows of z_train
            labels = self.y_train[order]  # (P_active, n_train)
            # each clip's loss, per step and probe (zeros after a short last batch)
            clip_losses = torch.zeros(len(starts), len(active), cfg.batch_size, device=device)
            for step, start in enumerate(starts):
                if self.stop.is_set():
                    raise _Stopped()
                batch = rows[:, start:start + cfg.batch_size]  # (P_active, b)
                b = batch.shape[1]
                z = self.z_train.index_select(0, batch.reshape(-1)).view(len(active), b, -1)
                keep: list = []
                logits = self.forward(self.params, z, keep)  # (P_active, b, n_classes)
                target = labels[:, start:start + cfg.batch_size]
                log_p = torch.log_softmax(logits, 2)
                picked = log_p.gather(2, target[:, :, None])  # (P_active, b, 1)
                torch.neg(picked[:, :, 0], out=clip_losses[step, :, :b])
                # dloss/dlogits of each probe's batch-mean cross-entropy: (softmax - one-hot) / b
                d = log_p.exp_().scatter_add_(2, target[:, :, None], picked.new_full(picked.shape, -1.0)).div_(b)
                self.backward(self.params, grads, keep, d)
                adam.step()

            val_logits = self._val_logits(slot)  # (P_active, n_val, n_classes)
            val_loss = nn.functional.cross_entropy(val_logits.transpose(1, 2), self.y_val.expand(len(active), -1),
                                                   reduction="none").mean(1).cpu()
            pred = val_logits.argmax(2).cpu().numpy()
            # each probe's mean loss over its Train clips, summed exactly: the same float whatever the group's size
            per_clip = clip_losses.transpose(0, 1).reshape(len(active), -1).double().cpu().numpy()
            train_loss = [math.fsum(per_clip[row]) / n_train for row in range(len(active))]
            improved, keep_rows = [], []
            for row, p in enumerate(active):
                val_uar = uar(self.y_val_np, pred[row])
                log = EpochLog(epoch, train_loss[row], float(val_loss[row]), val_uar, adam.lr[row])
                history[p].append(log)
                if on_epoch is not None:
                    on_epoch(p, log)
                adam.lr[row] = plateaus[p].step(float(val_loss[row]))
                if val_uar > best_uar[p]:
                    best_uar[p], best_epoch[p], without_gain[p] = val_uar, epoch, 0
                    improved.append(row)
                else:
                    without_gain[p] += 1
                    stopped[p] = without_gain[p] >= cfg.early_stopping_patience
                if not stopped[p]:
                    keep_rows.append(row)
            if improved:
                index = torch.tensor(improved, device=device)
                for saved, p in zip(best, self.store):
                    saved[index] = p[index]
            for row, p in enumerate(active):
                if stopped[p] or epoch == cfg.max_epochs:
                    self._load(p, _views([saved[row:row + 1] for saved in best], self.shapes))
            if len(keep_rows) < len(active):  # stopped probes leave the group: they no longer change or cost a step
                if not keep_rows:
                    break
                index = torch.tensor(keep_rows, device=device)
                self.store = [p[index] for p in self.store]
                self.params = _views(self.store, self.shapes)
                best = [saved[index] for saved in best]
                adam.keep(index, self.store)
                grads = _views(adam.grads, self.shapes)
                slot = slot[index]
                active = [active[row] for row in keep_rows]
            adam.regroup()

        out = []
        for p, job in enumerate(self.jobs):
            clf = ProbeClassifier(replace(self.cfg, seed=job.seed))
            clf.model_ = self.models[p].cpu().eval()
            clf.n_features_in_ = self.models[p].n_features
            clf.n_classes_ = self.n_classes
            clf.best_epoch_ = best_epoch[p]
            clf.best_val_uar_ = float(best_uar[p])
            clf.history_ = history[p]
            clf.stopped_early_ = stopped[p]
            out.append(clf)
        return out

    def _load(self, position: int, tensors: list[torch.Tensor]) -> None:
        """Write one probe's tensors, (1, *shape) views of the stacked layout, back into its MLPProbe."""
        it = (t[0] for t in tensors)
        with torch.no_grad():
            for module in [*self.models[position].blocks, self.models[position].head]:
                if isinstance(module, nn.Linear):
                    module.weight.copy_(next(it))
                    module.bias.copy_(next(it))
                elif isinstance(module, nn.LayerNorm):
                    module.weight.copy_(next(it))
                    module.bias.copy_(next(it))


class _Stopped(Exception):
    """The caller of ``fit_probes`` stopped (another group failed, or Ctrl-C): this group ends at its next step."""


def _aligned(stacked: torch.Tensor) -> torch.Tensor:
    """(P, *shape) -> storage (P, n): each probe's values, then zeros up to ``n``, a multiple of ``_ALIGN``."""
    flat = stacked.reshape(stacked.shape[0], -1)
    pad = -flat.shape[1] % _ALIGN
    return torch.nn.functional.pad(flat, (0, pad)) if pad else flat


def _views(stores: list[torch.Tensor], shapes: list[tuple]) -> list[torch.Tensor]:
    """The (P, *shape) tensors that live in aligned storages (views: writing them writes the storage)."""
    return [s[:, :math.prod(shape)].view(s.shape[0], *shape) for s, shape in zip(stores, shapes)]


def _kind(module: nn.Module) -> tuple:
    if isinstance(module, nn.Linear):
        return ("linear",)
    if isinstance(module, nn.LayerNorm):
        if module.normalized_shape != (module.weight.shape[0],):
            raise ValueError(f"only a LayerNorm over the last axis can be stacked, got {module}")
        return ("norm", module.eps)
    if isinstance(module, nn.ReLU):
        return ("relu",)
    raise ValueError(f"MLPProbe has a {type(module).__name__} block the batched trainer does not know")


def _parameters(model: MLPProbe) -> list[torch.Tensor]:
    """A probe's parameters in forward order, Linear weights as nn.Linear holds them: (out, in)."""
    out = []
    for module in [*model.blocks, model.head]:
        if isinstance(module, nn.Linear):
            out += [module.weight.detach(), module.bias.detach()]
        elif isinstance(module, nn.LayerNorm):
            out += [module.weight.detach(), module.bias.detach()]
    return out


class _Adam:
    """Adam on stacked parameters with one learning rate per probe: ``torch._fused_adam_`` (one pass over each
    tensor, the kernel behind ``torch.optim.Adam(fused=True)``), called once per distinct learning rate on views of
    that rate's probes. Every probe of a group has taken the same steps, so one step count serves them all."""

    def __init__(self, params: list[torch.Tensor], cfg: ProbeConfig, n_probes: int):
        """``params``: the aligned storages (P, n); gradients are allocated the same way, zero in the padding."""
        self.lr = [cfg.learning_rate] * n_probes
        self.weight_decay = cfg.weight_decay
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.step_count = torch.zeros((), dtype=torch.float32, device=params[0].device)
        self.keep(None, params)

    def keep(self, rows: torch.Tensor | None, params: list[torch.Tensor]) -> None:
        """Only ``rows`` of the group go on training (all of them when None)."""
        self.params = params
        if rows is not None:
            self.m = [m[rows] for m in self.m]
            self.v = [v[rows] for v in self.v]
            self.lr = [self.lr[r] for r in rows.tolist()]
        self.grads = [torch.zeros_like(p) for p in params]
        self.regroup()

    def regroup(self) -> None:
        """The tensor lists of each distinct learning rate: whole tensors while all probes share one."""
        tensors = (self.params, self.grads, self.m, self.v)
        self.parts = []
        for lr in sorted(set(self.lr)):
            rows = [r for r, value in enumerate(self.lr) if value == lr]
            part = tensors if len(rows) == len(self.lr) else tuple([t[r] for r in rows for t in ts] for ts in tensors)
            self.parts.append((lr, part, [self.step_count] * len(part[0])))

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        for lr, (params, grads, m, v), steps in self.parts:
            torch._fused_adam_(params, grads, m, v, [], steps, lr=lr, beta1=_BETAS[0], beta2=_BETAS[1],
                               weight_decay=self.weight_decay, eps=_EPS, amsgrad=False, maximize=False)


class _Plateau:
    """One probe's ``ReduceLROnPlateau`` on the Val loss, as ProbeClassifier's: torch's own scheduler, driving a
    stand-in optimizer whose learning rate is the probe's."""

    def __init__(self, cfg: ProbeConfig):
        self.optimizer = torch.optim.SGD([torch.zeros(1)], lr=cfg.learning_rate)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode="min",
                                                                    factor=cfg.lr_factor, patience=cfg.lr_patience)

    def step(self, val_loss: float) -> float:
        """The learning rate for the next epoch."""
        self.scheduler.step(val_loss)
        return self.optimizer.param_groups[0]["lr"]
