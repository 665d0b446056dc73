"""The paper's MLP probe: z-score with Train statistics, three [Linear, LayerNorm, ReLU] blocks, a final Linear.

Three layers of API, smallest first:

* ``MLPProbe`` is the ``nn.Module`` that export appends after the truncated backbone. It holds the z-score statistics
  as buffers, so ``forward(features)`` maps pooled features ``(b, 2D)`` to logits ``(b, n_classes)`` on its own.
* ``ProbeClassifier`` is a scikit-learn-style estimator around it: ``fit`` trains with the paper's protocol and
  returns ``self``; ``predict_proba``, ``predict`` and ``score`` (UAR) work on ``(n_clips, n_features)`` arrays.
* ``save_probe`` / ``load_probe`` write and read a checkpoint: weights and statistics as safetensors, everything
  export and the report need (backbone, layer, labels, preprocessing, scores) as JSON in the safetensors header,
  plus a readable ``.json`` copy beside it. No pickle anywhere.

Protocol (paper III and its code): cross-entropy, Adam (lr 1e-3), batches of 16, at most 30 epochs, learning rate
x0.1 when the Val loss has not improved for 10 epochs, early stopping when Val UAR has not improved for 10 epochs,
and the checkpoint with the best Val UAR is the one kept (and scored on Test). UAR is the mean of per-class recalls
over the classes present in the reference labels (scikit-learn's ``balanced_accuracy_score``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from vocalprobe import __version__
from vocalprobe.runtime.core.atomic import atomic_write_bytes, atomic_write_text
from vocalprobe.runtime.core.errors import VocalprobeError
from vocalprobe.runtime.core.metrics import uar
from vocalprobe.runtime.core.preprocess import MIN_SAMPLES
from vocalprobe.runtime.core.records import from_record, to_record
from vocalprobe.runtime.core.resample import MODEL_SAMPLE_RATE

#: Version of the probe checkpoint layout; bumped when a key changes meaning.
CHECKPOINT_FORMAT = 1


class NotFittedError(VocalprobeError):
    """A probe was used before ``fit`` (or ``load_probe``)."""


class ProbeInputError(VocalprobeError):
    """Features or labels of the wrong shape, type or range."""


class ProbeCheckpointError(VocalprobeError):
    """A probe checkpoint is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class ProbeConfig:
    """Probe architecture and training protocol. The defaults are the paper's."""

    hidden_sizes: tuple[int, ...] = (128, 64, 32)  # units of the [Linear, LayerNorm, ReLU] blocks
    learning_rate: float = 1e-3  # Adam
    weight_decay: float = 0.0  # Adam's L2 term; the paper uses none
    batch_size: int = 16
    max_epochs: int = 30
    lr_factor: float = 0.1  # ReduceLROnPlateau on the Val loss
    lr_patience: int = 10  # epochs without a Val-loss improvement before the learning rate is cut
    early_stopping_patience: int = 10  # epochs without a Val-UAR improvement before training stops
    seed: int = 0  # weight init and batch shuffling; same seed, same data -> same probe
    device: str = "cpu"  # "cpu", "cuda" or "cuda:N"; "auto" is resolved by the caller
    eval_batch_size: int = 4096  # clips per forward pass when scoring (memory only, results do not change)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        if not self.hidden_sizes or any(h < 1 for h in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive integers, got {self.hidden_sizes}")
        for name in ("batch_size", "max_epochs", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr_patience", "early_stopping_patience"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 < self.lr_factor < 1:
            raise ValueError(f"lr_factor must be in (0, 1), got {self.lr_factor}")

    def to_dict(self) -> dict[str, Any]:
        return to_record(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ProbeConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown probe setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return from_record(cls, data)


class MLPProbe(nn.Module):
    """z-score -> [Linear, LayerNorm, ReLU] x len(hidden_sizes) -> Linear. Self-contained, so it exports to ONNX."""

    def __init__(self, n_features: int, n_classes: int, hidden_sizes: Sequence[int] = (128, 64, 32)):
        super().__init__()
        self.n_features = int(n_features)
        self.n_classes = int(n_classes)
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        # Train-set statistics; identity until set_normalization is called.
        self.register_buffer("mean", torch.zeros(self.n_features))
        self.register_buffer("std", torch.ones(self.n_features))
        blocks: list[nn.Module] = []
        width = self.n_features
        for hidden in self.hidden_sizes:
            blocks += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.ReLU()]
            width = hidden
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(width, self.n_classes)

    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store Train mean and std. A constant feature (std 0) gets std 1, so it maps to 0, never NaN."""
        std = torch.where(std > 0, std, torch.ones_like(std))
        self.mean.copy_(mean.to(self.mean))
        self.std.copy_(std.to(self.std))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = (features - self.mean) / self.std  # (b, n_features)
        hidden = self.blocks(z)  # (b, hidden_sizes[-1])
        return self.head(hidden)  # logits (b, n_classes)


# ----------------------------------------------------------------------------------------------------------------
# validation


def check_features(x: Any, *, n_features: int | None = None, layer: int | None = None,
                   name: str = "features") -> np.ndarray:
    """A finite 2-D float32 array ``(n_clips, n_features)``; errors name the expected and actual shapes."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 2:
        raise ProbeInputError(f"{name}: expected a 2-D array (n_clips, n_features), got shape {x.shape}"
                              + (". Reshape a single clip with x[None, :]" if x.ndim == 1 else ""))
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise ProbeInputError(f"{name}: expected real numbers, got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise ProbeInputError(f"{name}: got 0 clips")
    if n_features is not None and x.shape[1] != n_features:
        where = f" (layer {layer})" if layer is not None else ""
        raise ProbeInputError(f"{name}: expected {n_features} features{where}, got {x.shape[1]}")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        bad = int(np.count_nonzero(~np.isfinite(x).all(axis=1)))
        raise ProbeInputError(f"{name}: {bad} clip(s) have NaN or infinite features")
    return x


def check_labels(y: Any, *, n_clips: int, n_classes: int | None = None, name: str = "labels") -> np.ndarray:
    """A 1-D int64 array of class indices in ``[0, n_classes)``, one per clip."""
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.ndim != 1:
        raise ProbeInputError(f"{name}: expected a 1-D array of class indices, got shape {y.shape}")
    if y.shape[0] != n_clips:
        raise ProbeInputError(f"{name}: expected {n_clips} labels (one per clip), got {y.shape[0]}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ProbeInputError(f"{name}: expected integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64, copy=False)
    if y.size and y.min() < 0:
        raise ProbeInputError(f"{name}: class indices must be >= 0, got {int(y.min())}")
    if n_classes is not None and y.size and y.max() >= n_classes:
        raise ProbeInputError(f"{name}: class index {int(y.max())} out of range for {n_classes} classes")
    return y


# ----------------------------------------------------------------------------------------------------------------
# the estimator


@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    val_loss: float
    val_uar: float
    learning_rate: float


class ProbeClassifier:
    """scikit-learn-style wrapper: ``fit(X_train, y_train, X_val, y_val)``, ``predict_proba``, ``predict``, ``score``.

    Learned attributes (set by ``fit``): ``model_`` (the ``MLPProbe``, on CPU, in eval mode), ``n_features_in_``,
    ``n_classes_``, ``best_epoch_`` (1-based epoch of the kept checkpoint), ``best_val_uar_``, ``history_``
    (one ``EpochLog`` per epoch run) and ``stopped_early_``.
    """

    def __init__(self, config: ProbeConfig | None = None):
        self.config = config or ProbeConfig()

    # -- fitting ---------------------------------------------------------------------------------------------------

    def fit(self, X_train, y_train, X_val, y_val, *, n_classes: int | None = None,
            on_epoch: Callable[[EpochLog], None] | None = None) -> "ProbeClassifier":
        """Train with the paper's protocol; keep the weights of the epoch with the best Val UAR.

        ``n_classes`` defaults to ``max(label) + 1`` over Train and Val; pass the dataset's class count so a class
        missing from Train still gets an output. ``on_epoch`` is called after every epoch (progress display).
        """
        with _cpu_threads(torch.device(self.config.device)):
            return self._fit(X_train, y_train, X_val, y_val, n_classes=n_classes, on_epoch=on_epoch)

    def _fit(self, X_train, y_train, X_val, y_val, *, n_classes, on_epoch) -> "ProbeClassifier":
        cfg = self.config
        X_train = check_features(X_train, name="X_train")
        n_features = X_train.shape[1]
        X_val = check_features(X_val, n_features=n_features, name="X_val")
        y_train = check_labels(y_train, n_clips=X_train.shape[0], n_classes=n_classes, name="y_train")
        y_val = check_labels(y_val, n_clips=X_val.shape[0], n_classes=n_classes, name="y_val")
        if n_classes is None:
            n_classes = int(max(y_train.max(), y_val.max())) + 1
        if n_classes < 2:
            raise ProbeInputError(f"a probe needs at least 2 classes, got {n_classes}")
        device = torch.device(cfg.device)

        # weights: seeded, without touching the caller's global RNG
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = MLPProbe(n_features, n_classes, cfg.hidden_sizes)
        xt = torch.from_numpy(X_train).to(device)  # (n_train, n_features)
        yt = torch.from_numpy(y_train).to(device)  # (n_train,)
        xv = torch.from_numpy(X_val).to(device)
        yv = torch.from_numpy(y_val).to(device)
        # z-score with Train statistics (population std, as scikit-learn's StandardScaler)
        model.set_normalization(xt.double().mean(0).float().cpu(), xt.double().std(0, unbiased=False).float().cpu())
        model.to(device)

        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=cfg.lr_factor,
                                                               patience=cfg.lr_patience)
        shuffle = torch.Generator().manual_seed(cfg.seed)  # batch order, on CPU so it is device independent
        n_train = xt.shape[0]

        history: list[EpochLog] = []
        best_uar, best_epoch, best_state = -math.inf, 0, None
        epochs_without_gain = 0
        stopped_early = False
        for epoch in range(1, cfg.max_epochs + 1):
            model.train()
            order = torch.randperm(n_train, generator=shuffle).to(device)
            total_loss = 0.0
            for start in range(0, n_train, cfg.batch_size):
                idx = order[start:start + cfg.batch_size]
                logits = model(xt[idx])  # (b, n_classes)
                loss = nn.functional.cross_entropy(logits, yt[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += loss.item() * idx.shape[0]

            val_logits = _logits(model, xv, cfg.eval_batch_size)
            val_loss = float(nn.functional.cross_entropy(val_logits, yv))
            val_uar = uar(y_val, val_logits.argmax(1).cpu().numpy())
            log = EpochLog(epoch, total_loss / n_train, val_loss, val_uar, optimizer.param_groups[0]["lr"])
            history.append(log)
            if on_epoch is not None:
                on_epoch(log)
            scheduler.step(val_loss)

            if val_uar > best_uar:
                best_uar, best_epoch, epochs_without_gain = val_uar, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                epochs_without_gain += 1
                if epochs_without_gain >= cfg.early_stopping_patience:
                    stopped_early = True
                    break

        model.load_state_dict(best_state)
        self.model_ = model.cpu().eval()
        self.n_features_in_ = n_features
        self.n_classes_ = n_classes
        self.best_epoch_ = best_epoch
        self.best_val_uar_ = float(best_uar)
        self.history_ = history
        self.stopped_early_ = stopped_early
        return self

    # -- inference -------------------------------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with training "
                                 "data, or load a checkpoint with load_probe(), before using it.")

    def predict_proba(self, X, *, layer: int | None = None) -> np.ndarray:
        """Class posteriors ``(n_clips, n_classes)`` float32; rows sum to 1."""
        self._check_fitted()
        X = check_features(X, n_features=self.n_features_in_, layer=layer, name="X")
        with _cpu_threads(torch.device("cpu")):
            logits = _logits(self.model_, torch.from_numpy(X), self.config.eval_batch_size)
        return torch.softmax(logits, dim=1).numpy()

    def predict(self, X, *, layer: int | None = None) -> np.ndarray:
        return self.predict_proba(X, layer=layer).argmax(axis=1)

    def score(self, X, y) -> float:
        """UAR: mean recall over the classes present in ``y``."""
        self._check_fitted()
        pred = self.predict(X)
        y = check_labels(y, n_clips=pred.shape[0], name="y")
        return uar(y, pred)


@contextlib.contextmanager
def _cpu_threads(device: torch.device):
    """Run a CPU probe with one intra-op thread, restoring the caller's setting after.

    The probe's matrices are tiny (batch 16): extra threads buy nothing, and on a busy machine their
    synchronisation made training about 20x slower (measured on 2 shared cores). GPU runs are left alone.
    """
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@torch.no_grad()
def _logits(model: MLPProbe, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = torch.cat([model(x[i:i + batch_size].to(device)) for i in range(0, x.shape[0], batch_size)])
    model.train(was_training)
    return out  # (n, n_classes)


# ----------------------------------------------------------------------------------------------------------------
# checkpoints


@dataclass(frozen=True)
class ProbeInfo:
    """What a probe checkpoint says about itself, beyond its weights. Export and the report read only this."""

    backbone: str  # registry name (e.g. "hubert") or the local checkpoint folder it was built from
    backbone_id: str  # hub id or absolute local path the weights came from
    backbone_revision: str | None  # the requested hub revision, or None (default branch / local folder)
    layer: int  # 0 = transformer input (hidden_states[0]), k = output of transformer layer k
    labels: tuple[str, ...]  # class names in output order
    n_features: int  # 2 * hidden size: mean and std pooled over time
    hidden_sizes: tuple[int, ...]
    backbone_fingerprint: str | None = None  # hub commit hash, or sha256 of a local folder's weight files
    val_uar: float | None = None
    test_uar: float | None = None
    seed: int | None = None
    dataset: str | None = None
    preprocessing: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_PREPROCESSING))
    probe_config: dict[str, Any] = field(default_factory=dict)
    vocalprobe_version: str = __version__
    format: int = CHECKPOINT_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return to_record(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ProbeInfo":
        required = {"backbone", "backbone_id", "backbone_revision", "layer", "labels", "n_features", "hidden_sizes"}
        missing = sorted(required - set(data))
        if missing:
            raise ProbeCheckpointError(f"probe metadata lacks {', '.join(missing)}")
        return from_record(cls, data, ignore_unknown=True)  # keys of a newer vocalprobe are not ours to read


#: How clips are turned into model input before the backbone (see vocalprobe.runtime.core.preprocess).
DEFAULT_PREPROCESSING: dict[str, Any] = {
    "sample_rate": MODEL_SAMPLE_RATE,  # every clip is resampled to this rate
    "peak_normalize": True,  # divide by the peak absolute amplitude
    "min_samples": MIN_SAMPLES,  # shorter clips are tiled (repeated) up to this many samples
    "pooling": "mean+std",  # over time, per layer; feature = concat(mean, std), 2 * hidden size
}

_HEADER_KEY = "vocalprobe.probe"


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """``(weights.safetensors, metadata.json)`` for ``path`` given with or without the ``.safetensors`` suffix."""
    path = Path(path)
    if path.suffix == ".safetensors":
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def save_probe(path: str | Path, model: MLPProbe, info: ProbeInfo) -> Path:
    """Write ``path.safetensors`` (weights, statistics, metadata in the header) and a readable ``path.json`` copy.

    Both are written atomically. The loader reads the header only; the .json is for people and other tools.
    """
    from safetensors.torch import save

    if info.n_features != model.n_features or len(info.labels) != model.n_classes:
        raise ProbeCheckpointError(f"metadata ({info.n_features} features, {len(info.labels)} labels) does not "
                                   f"match the probe ({model.n_features} features, {model.n_classes} classes)")
    weights_path, json_path = checkpoint_paths(path)
    meta = json.dumps(info.to_dict(), sort_keys=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(weights_path, save(tensors, metadata={_HEADER_KEY: meta}))
    atomic_write_text(json_path, json.dumps(info.to_dict(), indent=2, sort_keys=True) + "\n")
    return weights_path


def load_probe(path: str | Path, *, config: ProbeConfig | None = None) -> tuple[ProbeClassifier, ProbeInfo]:
    """Read a checkpoint written by ``save_probe``: a fitted ``ProbeClassifier`` (on CPU) and its ``ProbeInfo``."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    weights_path, _ = checkpoint_paths(path)
    if not weights_path.is_file():
        raise ProbeCheckpointError(f"probe checkpoint not found: {weights_path}")
    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            header = handle.metadata() or {}
        tensors = load_file(str(weights_path))
    except (OSError, SafetensorError) as exc:
        raise ProbeCheckpointError(f"{weights_path}: not a readable safetensors file ({exc})") from None
    if _HEADER_KEY not in header:
        raise ProbeCheckpointError(f"{weights_path}: no vocalprobe probe metadata in the safetensors header")
    info = ProbeInfo.from_dict(json.loads(header[_HEADER_KEY]))
    if info.format > CHECKPOINT_FORMAT:
        raise ProbeCheckpointError(f"{weights_path}: checkpoint format {info.format} is newer than this "
                                   f"vocalprobe understands ({CHECKPOINT_FORMAT}); upgrade vocalprobe")
    model = MLPProbe(info.n_features, len(info.labels), info.hidden_sizes)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ProbeCheckpointError(f"{weights_path}: weights do not match the metadata ({exc})") from None
    probe_config = config or (ProbeConfig.from_dict(info.probe_config) if info.probe_config else ProbeConfig())
    clf = ProbeClassifier(probe_config)
    clf.model_ = model.eval()
    clf.n_features_in_ = info.n_features
    clf.n_classes_ = len(info.labels)
    clf.best_val_uar_ = info.val_uar
    clf.best_epoch_ = None
    clf.history_ = []
    clf.stopped_early_ = None
    return clf, info
