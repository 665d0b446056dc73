"""Fusion of several exported graphs: the paper's late fusion, the mean of the members' posteriors.

Members must share their class names (in any order: each member's columns are reordered to the first member's
order) and their sample rate; anything else is refused with an error naming the files and the difference.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from vocalprobe.runtime.engine.onnx_model import ModelError, OnnxModel


class ModelMismatchError(ModelError):
    """Models that cannot be fused: different class sets or sample rates."""


def parse_weights(text: str | None, n_models: int) -> tuple[float, ...] | None:
    """``--weights 2,1,1`` -> ``(2.0, 1.0, 1.0)`` (``normalized_weights`` checks and normalises them);
    ``None`` or empty means equal weights."""
    if text is None or not text.strip():
        return None
    try:
        weights = tuple(float(w) for w in text.split(","))
    except ValueError:
        raise ModelMismatchError(f"--weights must be comma-separated numbers, got {text!r}") from None
    if len(weights) != n_models:
        raise ModelMismatchError(f"--weights has {len(weights)} value(s) but {n_models} model(s) were given")
    return weights


def normalized_weights(weights: Sequence[float] | None, n_models: int) -> np.ndarray:
    """Fusion weights summing to 1 (``None``: equal weights); refused unless ``n_models`` finite numbers >= 0 with
    a positive sum. Used by the runtime's ``Ensemble`` and by ``export fusion``, so both accept the same weights."""
    if weights is None:
        weights = [1.0] * n_models
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n_models,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ModelMismatchError(f"weights must be {n_models} numbers >= 0 with a positive sum, got {list(weights)}")
    return w / w.sum()


class Ensemble:
    """Average the probabilities of ``members`` (optionally weighted); same interface as ``OnnxModel``."""

    info = None  # several graphs: no one graph's metadata (and no single embedding)

    def __init__(self, members: Sequence[OnnxModel], weights: Sequence[float] | None = None):
        if not members:
            raise ModelMismatchError("an ensemble needs at least one model")
        self.members = list(members)
        first = self.members[0]
        problems = []
        self._orders: list[np.ndarray] = []
        for model in self.members:
            if model.sample_rate != first.sample_rate:
                problems.append(f"{model.path} runs at {model.sample_rate} Hz, {first.path} at {first.sample_rate} Hz")
            if set(model.classes) != set(first.classes):
                missing = sorted(set(first.classes) - set(model.classes))
                extra = sorted(set(model.classes) - set(first.classes))
                problems.append(f"{model.path} has different classes than {first.path}"
                                + (f"; lacks {missing}" if missing else "") + (f"; adds {extra}" if extra else ""))
                continue
            position = {name: i for i, name in enumerate(model.classes)}
            self._orders.append(np.array([position[name] for name in first.classes], dtype=np.int64))
        if problems:
            raise ModelMismatchError("cannot fuse these models: " + "; ".join(problems))
        self.weights = normalized_weights(weights, len(self.members))

    @property
    def classes(self) -> tuple[str, ...]:
        return self.members[0].classes

    @property
    def sample_rate(self) -> int:
        return self.members[0].sample_rate

    @property
    def sample_duration(self) -> float:
        """The members' shared default window; members that disagree need an explicit ``--window``."""
        durations = {m.sample_duration for m in self.members}
        if len(durations) > 1:
            raise ModelMismatchError("the models have different default windows "
                                     f"({', '.join(f'{m.path.name}: {m.sample_duration:g} s' for m in self.members)})"
                                     "; choose one with --window")
        return self.members[0].sample_duration

    @property
    def max_chunk_samples(self) -> int | None:
        limits = [m.max_chunk_samples for m in self.members if m.max_chunk_samples is not None]
        return min(limits) if limits else None

    @property
    def providers(self) -> list[str]:
        return sorted({p for m in self.members for p in m.providers})

    @property
    def name(self) -> str:
        return "+".join(m.name for m in self.members)

    def describe(self) -> str:
        parts = [f"{m.describe()} weight {w:.3g}" for m, w in zip(self.members, self.weights)]
        return f"fusion of {len(self.members)} models: " + "; ".join(parts)

    def combine(self, member_probs: Sequence[np.ndarray]) -> np.ndarray:
        """Weighted mean of the members' probabilities (``[..., classes]`` each, in that member's class order),
        in this ensemble's class order."""
        total = None
        for probs, order, weight in zip(member_probs, self._orders, self.weights):
            aligned = np.asarray(probs)[..., order].astype(np.float64) * weight
            total = aligned if total is None else total + aligned
        return total.astype(np.float32)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.combine([model.predict(batch) for model in self.members])


def load_models(paths: Sequence[str], *, weights: str | None = None, provider: str = "auto",
                threads: int | None = None) -> OnnxModel | Ensemble:
    """One path: that graph (a fused graph included). Several: their ``Ensemble``."""
    if not paths:
        raise ModelError("give at least one --model FILE.onnx")
    models = [OnnxModel(p, provider=provider, threads=threads) for p in paths]
    parsed = parse_weights(weights, len(models))
    if len(models) == 1:
        if parsed is not None:
            raise ModelMismatchError("--weights needs several --model files (a fused graph carries its own weights)")
        return models[0]
    return Ensemble(models, parsed)
