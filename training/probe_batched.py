"""Many probes of one (dataset, backbone) trained at once: every layer x seed as one stacked module.

A study trains 13 layers x 3 seeds probes on the same clips. One at a time, each batch-16 step of a probe is mostly
framework overhead; here a group of probes shares every step: the parameters carry a leading probe axis and each
Linear is one batched matmul (``torch.baddbmm``). The paper's protocol is unchanged, per probe: weights initialised
by ``MLPProbe`` under the probe's seed (the same tensors ``ProbeClassifier`` starts from), its own batch order from
its seed, z-scoring with its layer's Train statistics, Adam, its own Val-loss plateau schedule, early stopping on
its Val UAR and its best-Val-UAR checkpoint. A probe that stops leaves the group and no longer changes.

``fit_probes`` returns one fitted ``ProbeClassifier`` per probe, so scoring and saving go through the single-probe
API. ``ProbeClassifier`` stays the reference; tests/training/test_probe_batched.py checks both agree.

Memory: the probes run in groups of ``group_size`` (on a CPU small groups keep each step's parameters and Adam
state in cache; on a GPU large ones fill it), and only the layers of the group being trained are moved to the
device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.optim.adam import adam as adam_update

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

#: Probes per group by device type. On 2 CPU cores groups of 8 were fastest (docs/probes.md): each probe's first
#: Linear with its Adam state is ~3 MB, and a group's must stay in the cache.
GROUP_SIZE = {"cpu": 8, "cuda": 64}

_BETAS, _EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, which ProbeClassifier uses


@dataclass(frozen=True)
class ProbeJob:
    """One probe of a batch: which layer of the feature array it reads, and its seed."""

    layer: int  # index on the feature array's layer axis
    seed: int


def fit_probes(features: np.ndarray, labels: np.ndarray, *, train: np.ndarray, val: np.ndarray,
               jobs: Sequence[ProbeJob], config: ProbeConfig | None = None, n_classes: int | None = None,
               group_size: int | None = None,
               on_epoch: Callable[[int, EpochLog], None] | None = None) -> list[ProbeClassifier]:
    """Train one probe per job on ``features`` (n_clips, n_layers, n_features) with the paper's protocol.

    ``train`` and ``val`` are row indices into ``features`` and ``labels``; the job's seed replaces
    ``config.seed``. Returns fitted ``ProbeClassifier`` s in job order, each as ``ProbeClassifier(config with the
    job's seed).fit(features[train, layer], ...)`` would be. ``on_epoch(job_index, log)`` follows every epoch.
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
    fitted: list[ProbeClassifier] = []
    with _cpu_threads(device):
        for start in range(0, len(jobs), size):
            group = list(jobs[start:start + size])
            report = None if on_epoch is None else (lambda i, log, s=start: on_epoch(s + i, log))
            fitted += _Group(features, y, train, val, group, cfg, n_classes, device).fit(report)
    return fitted


class _Group:
    """A group of probes trained in lockstep; parameters stacked on a leading probe axis."""

    def __init__(self, features: np.ndarray, y: np.ndarray, train: np.ndarray, val: np.ndarray,
                 jobs: list[ProbeJob], cfg: ProbeConfig, n_classes: int, device: torch.device):
        self.cfg, self.jobs, self.device, self.n_classes = cfg, jobs, device, n_classes
        # on a CPU the caller's array as it is; on a GPU only this group's layers
        layers = list(range(features.shape[1])) if device.type == "cpu" else sorted({j.layer for j in jobs})
        data = torch.from_numpy(features if device.type == "cpu" else features[:, layers])
        data = data.to(device=device, dtype=torch.float32)  # (n_clips, n_layers here, n_features)
        self.data = data
        self.column = torch.tensor([layers.index(j.layer) for j in jobs], device=device)  # (P,)
        self.train, self.val = train, val
        self.y = torch.from_numpy(y).to(device)
        self.y_val = y[val]
        n_features = data.shape[2]
        # z-score statistics per layer with Train rows, exactly as ProbeClassifier computes them
        mean, std = {}, {}
        for column in sorted({layers.index(j.layer) for j in jobs}):
            x = data[torch.from_numpy(train).to(device), column]  # (n_train, n_features)
            if not torch.isfinite(x).all() or not torch.isfinite(data[torch.from_numpy(val).to(device), column]).all():
                raise ProbeInputError(f"features of layer index {layers[column]} have NaN or infinite values")
            mean[column] = x.double().mean(0).float()
            std[column] = x.double().std(0, unbiased=False).float()
        # the probes: each MLPProbe built under its seed, as ProbeClassifier builds it
        self.models = []
        for job in jobs:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(job.seed)
                model = MLPProbe(n_features, n_classes, cfg.hidden_sizes)
            column = layers.index(job.layer)
            model.set_normalization(mean[column].cpu(), std[column].cpu())
            self.models.append(model)
        self.mean = torch.stack([m.mean for m in self.models]).to(device)[:, None, :]  # (P, 1, n_features)
        self.std = torch.stack([m.std for m in self.models]).to(device)[:, None, :]
        self.kinds = [_kind(m) for m in [*self.models[0].blocks, self.models[0].head]]
        self.params = [torch.stack(ts).to(device).requires_grad_()
                       for ts in zip(*[_parameters(m) for m in self.models])]  # each (P, ...)

    # -- the stacked forward --------------------------------------------------------------------------------------

    def forward(self, params: list[torch.Tensor], z: torch.Tensor, mean: torch.Tensor,
                std: torch.Tensor) -> torch.Tensor:
        """Raw features (P, b, n_features) -> logits (P, b, n_classes), as MLPProbe.forward per probe."""
        h = (z - mean) / std
        it = iter(params)
        for kind in self.kinds:
            if kind == "linear":
                weight, bias = next(it), next(it)  # (P, in, out), (P, out)
                h = torch.baddbmm(bias[:, None, :], h, weight)
            elif kind[0] == "norm":
                weight, bias = next(it), next(it)  # (P, width) each
                h = torch.addcmul(bias[:, None, :], nn.functional.layer_norm(h, h.shape[-1:], eps=kind[1]),
                                  weight[:, None, :])
            else:
                h = torch.relu(h)
        return h

    @torch.no_grad()
    def _val_logits(self) -> torch.Tensor:
        """Val logits (P_active, n_val, n_classes) of the probes still training, in eval-sized chunks of clips."""
        params = [p.detach() for p in self.params]
        column, mean, std = self.column, self.mean, self.std
        rows_per_chunk = max(1, self.cfg.eval_batch_size // column.shape[0])
        out = []
        for i in range(0, self.val.size, rows_per_chunk):
            rows = torch.from_numpy(self.val[i:i + rows_per_chunk]).to(self.device)
            out.append(self.forward(params, self.data[rows[None, :], column[:, None]], mean, std))
        return torch.cat(out, dim=1)

    # -- training ---------------------------------------------------------------------------------------------------

    def fit(self, on_epoch: Callable[[int, EpochLog], None] | None) -> list[ProbeClassifier]:
        cfg, n_probes, device = self.cfg, len(self.jobs), self.device
        n_train = self.train.size
        train_rows = torch.from_numpy(self.train)
        adam = _Adam(self.params, cfg, n_probes)
        shuffles = [torch.Generator().manual_seed(job.seed) for job in self.jobs]  # batch order, on CPU
        plateaus = [_Plateau(cfg) for _ in self.jobs]
        best = [torch.empty_like(p.detach()) for p in self.params]  # best-Val-UAR weights, per probe
        history: list[list[EpochLog]] = [[] for _ in self.jobs]
        best_uar = [-math.inf] * n_probes
        best_epoch = [0] * n_probes
        without_gain = [0] * n_probes
        stopped = [False] * n_probes
        active = list(range(n_probes))  # probe positions still training; self.params rows follow this order

        for epoch in range(1, cfg.max_epochs + 1):
            # each probe's batch order from its own generator, drawn as ProbeClassifier draws it
            order = torch.stack([train_rows[torch.randperm(n_train, generator=shuffles[p])] for p in active])
            order = order.to(device)  # (P_active, n_train) rows of the feature array
            column, mean, std = self.column[:, None], self.mean, self.std
            total = torch.zeros(len(active), dtype=torch.float64, device=device)
            for start in range(0, n_train, cfg.batch_size):
                rows = order[:, start:start + cfg.batch_size]  # (P_active, b)
                logits = self.forward(self.params, self.data[rows, column], mean, std)  # (P_active, b, n_classes)
                loss = nn.functional.cross_entropy(logits.flatten(0, 1), self.y[rows].flatten(), reduction="none")
                loss = loss.view(rows.shape).mean(1)  # (P_active,) each probe's batch mean
                for p in self.params:
                    p.grad = None
                loss.sum().backward()  # the probes share no parameter, so each gets its own gradient
                adam.step()
                total += loss.detach().double() * rows.shape[1]

            val_logits = self._val_logits()  # (P_active, n_val, n_classes)
            y_val = self.y[torch.from_numpy(self.val).to(device)]
            val_loss = nn.functional.cross_entropy(val_logits.transpose(1, 2), y_val.expand(len(active), -1),
                                                   reduction="none").mean(1).cpu()
            pred = val_logits.argmax(2).cpu().numpy()
            train_loss = (total / n_train).cpu()
            improved, keep = [], []
            for row, p in enumerate(active):
                val_uar = uar(self.y_val, pred[row])
                log = EpochLog(epoch, float(train_loss[row]), float(val_loss[row]), val_uar, adam.lr[row])
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
                    keep.append(row)
            if improved:
                rows = torch.tensor(improved, device=device)
                for b, p in zip(best, self.params):
                    b[rows] = p.detach()[rows]
            for row, p in enumerate(active):
                if stopped[p] or epoch == cfg.max_epochs:
                    self._load(p, [b[row] for b in best])
            if len(keep) < len(active):  # stopped probes leave the group: they no longer change or cost a step
                if not keep:
                    break
                rows = torch.tensor(keep, device=device)
                self.params = [p.detach()[rows].requires_grad_() for p in self.params]
                best = [b[rows] for b in best]
                adam.keep(rows, self.params)
                self.column, self.mean, self.std = self.column[rows], self.mean[rows], self.std[rows]
                active = [active[row] for row in keep]

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
        """Write one probe's stacked-layout tensors back into its MLPProbe."""
        it = iter(tensors)
        with torch.no_grad():
            for module in [*self.models[position].blocks, self.models[position].head]:
                if isinstance(module, nn.Linear):
                    module.weight.copy_(next(it).t())
                    module.bias.copy_(next(it))
                elif isinstance(module, nn.LayerNorm):
                    module.weight.copy_(next(it))
                    module.bias.copy_(next(it))


def _kind(module: nn.Module):
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.LayerNorm):
        if module.normalized_shape != (module.weight.shape[0],):
            raise ValueError(f"only a LayerNorm over the last axis can be stacked, got {module}")
        return ("norm", module.eps)
    if isinstance(module, nn.ReLU):
        return "relu"
    raise ValueError(f"MLPProbe has a {type(module).__name__} block the batched trainer does not know")


def _parameters(model: MLPProbe) -> list[torch.Tensor]:
    """A probe's parameters in forward order; Linear weights as (in, out) so batched matmuls need no transpose."""
    out = []
    for module in [*model.blocks, model.head]:
        if isinstance(module, nn.Linear):
            out += [module.weight.detach().t().contiguous(), module.bias.detach()]
        elif isinstance(module, nn.LayerNorm):
            out += [module.weight.detach(), module.bias.detach()]
    return out


class _Adam:
    """Adam on stacked parameters with one learning rate per probe: ``torch.optim.adam.adam``, fused (one pass over
    each tensor), called once per distinct learning rate. Every probe of a group has taken the same steps, so one
    step count serves them all."""

    def __init__(self, params: list[torch.Tensor], cfg: ProbeConfig, n_probes: int):
        self.params = params
        self.lr = [cfg.learning_rate] * n_probes
        self.weight_decay = cfg.weight_decay
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.n_steps = 0

    def keep(self, rows: torch.Tensor, params: list[torch.Tensor]) -> None:
        """Only ``rows`` of the group go on training."""
        self.params = params
        self.m = [m[rows] for m in self.m]
        self.v = [v[rows] for v in self.v]
        self.lr = [self.lr[r] for r in rows.tolist()]

    @torch.no_grad()
    def step(self) -> None:
        grads = [p.grad for p in self.params]
        tensors = (self.params, grads, self.m, self.v)
        for lr in sorted(set(self.lr)):
            rows = [r for r, value in enumerate(self.lr) if value == lr]
            if len(rows) == len(self.lr):
                part = tensors
            else:  # probes whose learning rate was cut take their step apart: views of their rows
                part = tuple([t[r] for r in rows for t in ts] for ts in tensors)
            steps = [torch.tensor(float(self.n_steps), device=self.params[0].device) for _ in part[0]]
            adam_update(*part, [], steps, fused=True, amsgrad=False, beta1=_BETAS[0], beta2=_BETAS[1],
                                  lr=lr, weight_decay=self.weight_decay, eps=_EPS, maximize=False)
        self.n_steps += 1


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
