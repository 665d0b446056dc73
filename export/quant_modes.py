"""The `--quantize` modes, declared once: the CLI's choices and help, the export's dispatch and parity tolerance,
`--quantize auto`'s candidates and the graph metadata's ``quantization`` value all derive from ``MODES``.

Imports nothing at module level: the CLI reads this table when it builds its help. Measurements (speed, decisions
changed) live in docs/quantization.md and the README, not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["QuantMode", "MODES", "AUTO", "AUTO_MAX_CHANGED", "mode", "names", "auto_candidates", "quantize_help",
           "tolerance_help", "refusal"]

#: Not a mode: ``--quantize auto`` measures the candidates on this machine and keeps the fastest that changes at most
#: ``AUTO_MAX_CHANGED`` of the study's Val/Test decisions (export.auto_mode).
AUTO = "auto"
AUTO_MAX_CHANGED = 0.02


@dataclass(frozen=True)
class QuantMode:
    """One value of ``--quantize``. ``name`` is also what the graph's ``quantization`` metadata says."""

    name: str
    help: str  # what is int8, for --help
    function: str | None  # export.quantize's function ``(fp32_path, out_path) -> Path``; None: the fp32 graph as is
    atol: float | None  # max |Δprobability| vs PyTorch fp32 on the parity clips: a gross-error guard; None: fp32's
    auto: bool  # a candidate of --quantize auto
    families: tuple[str, ...] | None = None  # backbone families (model_type) it applies to; None: every family

    def applies_to(self, family: str) -> bool:
        """Whether this mode can quantize a backbone of ``family`` (e.g. int8-conv needs a waveform CNN)."""
        return self.families is None or family in self.families

    def quantize(self, source: Path, target: Path) -> Path:
        """Write ``source`` (an exported fp32 graph) quantized to ``target``."""
        if self.function is None:
            raise ValueError(f"--quantize {self.name} writes the fp32 graph itself")
        from vocalprobe.export import quantize

        return getattr(quantize, self.function)(source, target)


MODES: tuple[QuantMode, ...] = (
    QuantMode("none", "fp32", None, None, auto=True),
    QuantMode("int8", "dynamic int8 MatMuls", "quantize_dynamic_matmul", 0.25, auto=True),
    QuantMode("int8-conv", "int8 MatMuls and CNN convolutions, one activation range per frame",
              "quantize_int8_conv", 0.25, auto=True, families=("hubert", "wav2vec2", "wavlm")),
)
_BY_NAME = {m.name: m for m in MODES}


def names() -> tuple[str, ...]:
    return tuple(_BY_NAME)


def mode(name: str) -> QuantMode:
    """The mode called ``name``; a ValueError naming the choices otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"--quantize must be one of {', '.join(names())}, got {name!r}") from None


def auto_candidates(family: str | None = None) -> tuple[str, ...]:
    """The modes ``--quantize auto`` tries (for a backbone of ``family``: those that apply to it)."""
    return tuple(m.name for m in MODES if m.auto and (family is None or m.applies_to(family)))


def refusal(name: str, family: str) -> str:
    """Why mode ``name`` cannot quantize a ``family`` backbone, and what to use instead."""
    fits = ", ".join(m.name for m in MODES if m.applies_to(family))
    why = {"int8-conv": "it quantizes the convolutions of a waveform CNN, which this backbone does not have"}.get(
        name, "it does not apply to this family")
    return f"--quantize {name} does not apply to {family} backbones: {why}; use one of {fits} or {AUTO}"


def quantize_help() -> str:
    """The help of ``--quantize``: every mode, then ``auto``."""
    listed = " | ".join(m.name + ("" if m.name == "none" else f" ({m.help})") for m in MODES)
    return (f"{listed} | {AUTO} (export {', '.join(auto_candidates())}, time them on THIS machine and keep the "
            f"fastest that changes at most {AUTO_MAX_CHANGED:.0%} of the Val/Test decisions). Speed and accuracy of "
            "each: docs/quantization.md; check any graph with `vocalprobe validate --reference FP32.onnx`.")


def tolerance_help() -> str:
    """The help of ``--quant-tolerance``: each quantized mode's default bar."""
    bars: dict[float, list[str]] = {}
    for m in MODES:
        if m.atol is not None:
            bars.setdefault(m.atol, []).append(m.name)
    defaults = ", ".join(f"{atol:g} for {' and '.join(modes)}" for atol, modes in bars.items())
    return (f"Max |Δprobability| of a quantized graph against PyTorch fp32 (default {defaults}); the UAR change is "
            "measured with `vocalprobe validate`.")
