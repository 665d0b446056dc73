"""``vocalprobe export --quantize auto``: the fastest mode on THIS machine among those that keep the decisions.

Which mode is fastest depends on the CPU (int8 kernels, VNNI, cores) and the layer: on some CPUs plain ``int8`` is
slower than fp32, so no fixed recommendation fits every device. ``auto`` exports each candidate mode (with the usual
parity guard), times each graph here with the runtime's own session (batches of windows, the modes interleaved,
the best round kept), counts the clips of the study's Val and Test splits whose decision differs from the fp32
graph's, and keeps the fastest mode within ``max_changed`` (``quant_modes.AUTO_MAX_CHANGED`` of the decisions). fp32
always qualifies. The candidates are the modes ``export.quant_modes`` marks ``auto`` that apply to the backbone's
family (no ``int8-conv`` for Whisper, which has no waveform CNN).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from vocalprobe.export import quant_modes
from vocalprobe.export.quant_modes import AUTO_MAX_CHANGED, auto_candidates
from vocalprobe.runtime.core.errors import VocalprobeError

__all__ = ["ModeTrial", "AutoChoice", "export_auto", "choose"]


@dataclass(frozen=True)
class ModeTrial:
    mode: str
    x_realtime: float | None  # None: not measured (refused by the parity guard)
    changed: float | None  # share of clips whose decision differs from fp32's
    refused: str | None = None


@dataclass
class AutoChoice:
    chosen: str
    trials: list[ModeTrial] = field(default_factory=list)
    clips: int = 0
    result: object = None  # the chosen mode's ``ExportResult``

    def table(self) -> str:
        lines = [f"{'mode':10s} {'x real time':>12s} {'decisions changed':>18s}"]
        for t in self.trials:
            speed = f"{t.x_realtime:.1f}x" if t.x_realtime is not None else "-"
            changed = f"{100 * t.changed:.1f}%" if t.changed is not None else (t.refused or "-")
            chosen = "   <- chosen" if t.mode == self.chosen else ""
            lines.append(f"{t.mode:10s} {speed:>12s} {changed:>18s}{chosen}")
        return "\n".join(lines)


def choose(trials: Sequence[ModeTrial], max_changed: float = AUTO_MAX_CHANGED) -> str:
    """The fastest measured mode whose share of changed decisions is at most ``max_changed``."""
    eligible = [t for t in trials if t.refused is None and t.x_realtime is not None and t.changed is not None
                and (t.mode == "none" or t.changed <= max_changed)]
    if not eligible:
        raise VocalprobeError("--quantize auto: no mode could be measured (not even fp32)")
    return max(eligible, key=lambda t: t.x_realtime).mode


def _decision_clips(manifest, max_clips: int) -> list[np.ndarray]:
    from vocalprobe.runtime.core.clips import load_row

    rows = [row for split in ("val", "test") for row in manifest.split(split).rows]
    step = max(1, len(rows) // max_clips)
    clips = []
    for row in rows[::step][:max_clips]:
        try:
            clips.append(load_row(manifest, row))
        except VocalprobeError:
            continue
    return clips


def _speed(models: dict, *, rounds: int, seconds: float) -> dict[str, float]:
    from vocalprobe.runtime.field.bench import bench_model

    best: dict[str, float] = {}
    for _ in range(rounds):
        for mode, model in models.items():
            result = bench_model(model, window_s=model.sample_duration, batch=8, seconds=seconds, latency_runs=1)
            best[mode] = max(best.get(mode, 0.0), result.x_realtime)
    return best


def export_auto(study_dir: str | Path, out_path: str | Path, *, candidates: Sequence[str] | None = None,
                max_changed: float = AUTO_MAX_CHANGED, threads: int | None = None, max_clips: int = 200,
                rounds: int = 2, seconds: float = 20.0, log: Callable[[str], None] | None = None,
                **export_options) -> AutoChoice:
    """Export every mode of ``candidates`` from the study, measure them here and keep the fastest within the bound
    at ``out_path`` (its parity reports in ``AutoChoice.result``)."""
    from vocalprobe.export.onnx_export import ExportError, export_from_study, select_probe
    from vocalprobe.export.parity import ParityError
    from vocalprobe.runtime.core.manifest import read_manifest
    from vocalprobe.runtime.engine.onnx_model import OnnxModel
    from vocalprobe.runtime.engine.long_clips import predict_clip
    from vocalprobe.training.backbones import backbone_family
    from vocalprobe.training.probe import load_probe

    log = log or (lambda message: None)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    selection = select_probe(study_dir, dataset=export_options.get("dataset"), backbone=export_options.get("backbone"),
                             layer=export_options.get("layer", "best"))
    info = load_probe(selection.probe_path)[1]
    family = backbone_family(info.backbone, revision=info.backbone_revision)
    if candidates is None:
        candidates = auto_candidates(family)
        skipped = [name for name in auto_candidates() if name not in candidates]
        if skipped:
            log(f"auto: {', '.join(skipped)} not tried (does not apply to {family} backbones)")
    else:
        candidates = tuple(candidates)
        if wrong := [name for name in candidates if not quant_modes.mode(name).applies_to(family)]:
            raise VocalprobeError(quant_modes.refusal(wrong[0], family))
    candidates = ("none", *[name for name in candidates if name != "none"])  # fp32 first: the others quantize it
    clips = _decision_clips(read_manifest(selection.manifest), max_clips)
    if not clips:
        raise VocalprobeError("--quantize auto: no readable Val or Test clip to compare the decisions on")
    with tempfile.TemporaryDirectory(prefix=".export-auto-", dir=out_path.parent) as tmp:
        results, refused = {}, {}
        for mode in candidates:
            log(f"auto: exporting {mode}")
            try:
                fp32 = results.get("none")  # exported first: the quantized modes quantize it, not a new export
                result = export_from_study(study_dir, Path(tmp) / f"{mode}.onnx", quantize=mode, log=log,
                                           fp32_graph=None if fp32 is None else fp32.path, **export_options)
                results[mode] = result if fp32 is None else replace(result, parity=fp32.parity)  # fp32's own check
            except (ExportError, ParityError) as exc:
                if mode == "none":
                    raise
                refused[mode] = "refused by the parity guard"
                log(f"auto: {mode} {refused[mode]} ({str(exc).splitlines()[-1]})")
        models = {mode: OnnxModel(r.path, provider="cpu", threads=threads) for mode, r in results.items()}
        log(f"auto: decisions on {len(clips)} Val/Test clips, speed on this machine "
            f"({rounds} interleaved rounds of {seconds:g} s)")
        decisions = {mode: np.array([int(np.argmax(predict_clip(m, c))) for c in clips]) for mode, m in models.items()}
        speed = _speed(models, rounds=rounds, seconds=seconds)
        trials = [ModeTrial(mode, speed.get(mode), None if mode in refused else
                            float(np.mean(decisions[mode] != decisions["none"])), refused.get(mode))
                  for mode in candidates]
        chosen = choose(trials, max_changed)
        del models
        shutil.move(str(results[chosen].path), str(out_path))
    return AutoChoice(chosen, trials, len(clips), replace(results[chosen], path=out_path))
