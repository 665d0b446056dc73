"""`vocalprobe export`: a study's probe -> one ONNX graph, `export fusion`: graphs -> one fused graph, and
`export attach`: an archive's probe on top of the graph it was embedded with.

``vocalprobe export STUDY_DIR ...`` is short for ``vocalprobe export study STUDY_DIR ...``: the group dispatches any
first argument that is not a subcommand name to ``study``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from vocalprobe.commands.errors import friendly_errors


class _DefaultToStudy(TyperGroup):
    """``export STUDY_DIR ...`` runs the ``study`` subcommand; ``export fusion ...`` runs ``fusion``."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["study", *args]
        return super().parse_args(ctx, args)


class _QuantizeFromModes(TyperCommand):
    """Fills the help of --quantize and --quant-tolerance from ``export.quant_modes`` when typer builds the command
    (when the CLI runs), so importing the CLI loads nothing of export/ and the modes are named in one table only."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from vocalprobe.export.quant_modes import quantize_help, tolerance_help

        helps = {"quantize": quantize_help(), "quant_tolerance": tolerance_help()}
        for param in self.params:
            param.help = helps.get(param.name, param.help)


app = typer.Typer(cls=_DefaultToStudy, no_args_is_help=True, add_completion=False,
                  help="Export a study's probe (default: its best layer) as one ONNX graph, or fuse graphs. "
                  "`vocalprobe export STUDY_DIR --out FILE.onnx` is short for `vocalprobe export study ...`.")

DatasetOpt = Annotated[Optional[str], typer.Option("--dataset", help="Dataset name in the study (needed when the "
                                                   "study has several).")]
BackboneOpt = Annotated[Optional[str], typer.Option("--backbone", help="Backbone label or name as in the study "
                                                    "(needed when the dataset has several).")]
QuantizeOpt = Annotated[str, typer.Option("--quantize")]  # help: _QuantizeFromModes
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads for torch while "
                                                   "exporting and checking parity.")]


def _say(message: str) -> None:
    typer.echo(message, err=True)


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


@app.command("study", cls=_QuantizeFromModes)
@friendly_errors
def study(
    study_dir: Annotated[Path, typer.Argument(help="A study folder (with summary.json), e.g. "
                                              "artifacts/studies/default.")],
    out: Annotated[Path, typer.Option("--out", help="The .onnx file to write.")],
    dataset: DatasetOpt = None,
    backbone: BackboneOpt = None,
    layer: Annotated[str, typer.Option("--layer", help="'best' (the study's best layer on Val), a layer "
                                       "number the study probed, or frontier:M (the cheapest layer, in MACs per "
                                       "audio second, within M Val UAR points of the best).")] = "best",
    quantize: QuantizeOpt = "none",
    quant_tolerance: Annotated[Optional[float], typer.Option(
        "--quant-tolerance", min=0.0)] = None,  # help: _QuantizeFromModes
    threads: ThreadsOpt = None,
) -> None:
    """Export one probe of a study as ONE graph: preprocessing, backbone truncated after the layer, pooling, MLP.

    Parity with PyTorch is checked on real Test clips of several lengths and batch sizes before the file is
    written; a report is written beside it as FILE.parity.json.
    """
    from vocalprobe.export.onnx_export import export_from_study
    from vocalprobe.export.quant_modes import AUTO, AUTO_MAX_CHANGED
    from vocalprobe.runtime.core.atomic import atomic_write_text

    _set_threads(threads)
    if quantize == AUTO:
        from vocalprobe.export.auto_mode import export_auto

        choice = export_auto(study_dir, out, threads=threads, log=_say, dataset=dataset, backbone=backbone,
                             layer=layer, quant_tolerance=quant_tolerance)
        _say(choice.table())
        _say(f"--quantize auto: {choice.chosen} is the fastest here within {AUTO_MAX_CHANGED:.0%} of changed decisions "
             f"({choice.clips} Val/Test clips)")
        result = choice.result
    else:
        result = export_from_study(study_dir, out, dataset=dataset, backbone=backbone, layer=layer,
                                   quantize=quantize, quant_tolerance=quant_tolerance, log=_say)
    reports = [r for r in (result.parity, result.quantized_parity) if r is not None]
    for report in reports:
        _say(report.summary())
    atomic_write_text(out.with_suffix(".parity.json"),
                      json.dumps([r.to_dict() for r in reports], indent=2) + "\n")
    meta = result.metadata
    size = out.stat().st_size / 1e6
    typer.echo(f"wrote {out} ({size:.1f} MB): {meta.get('backbone')} layer {meta.get('layer')} of "
               f"{meta.get('num_layers_total')}, {len(json.loads(meta['classes']))} classes, "
               f"quantization {meta.get('quantization')}, study Test UAR {float(meta['test_uar']) * 100:.2f} (of "
               f"this probe: seed {meta.get('seed', '?')}, the best on Val; Table III gives the mean over seeds)"
               if "test_uar" in meta else f"wrote {out}")


@app.command("fusion", cls=_QuantizeFromModes)
@friendly_errors
def fusion(
    members: Annotated[Optional[list[Path]], typer.Argument(help="Member graphs written by `vocalprobe export`.")
                       ] = None,
    out: Annotated[Path, typer.Option("--out", help="The fused .onnx file to write.")] = ...,
    weights: Annotated[Optional[str], typer.Option("--weights", help="Comma-separated member weights "
                                                   "(default: equal).")] = None,
    from_study: Annotated[Optional[Path], typer.Option("--from-study", help="Build the paper's fusion: export "
                                                       "every backbone's best layer of this study and fuse them.")
                          ] = None,
    dataset: DatasetOpt = None,
    quantize: QuantizeOpt = "none",
    window: Annotated[Optional[float], typer.Option("--window", min=0.001, help="Default analysis window in "
                                                    "seconds, when the members disagree.")] = None,
    threads: ThreadsOpt = None,
) -> None:
    """Merge graphs into one: shared waveform input, (weighted) mean of the members' probabilities.

    Members must have the same class names (reordered if needed), sample rate and chunk limit.
    """
    from vocalprobe.export.fusion import FusionError, fuse_models, fusion_from_study
    from vocalprobe.export.quant_modes import AUTO, names
    from vocalprobe.runtime.engine.ensemble import parse_weights
    from vocalprobe.export.metadata import read_metadata

    if quantize == AUTO:
        raise FusionError(f"--quantize auto applies to `vocalprobe export STUDY_DIR`; choose {', '.join(names())} "
                          "for a fusion (or export its members with auto)")
    if from_study is not None:
        if members:
            raise FusionError("give either member graphs or --from-study, not both")
        _set_threads(threads)
        n = None if weights is None else len(weights.split(","))
        fusion_from_study(from_study, out, dataset=dataset, quantize=quantize,
                          weights=parse_weights(weights, n) if n else None, log=_say)
    else:
        if not members:
            raise FusionError("give at least two member graphs (A.onnx B.onnx ...) or --from-study STUDY_DIR")
        if quantize != "none" or dataset is not None:
            raise FusionError("--quantize and --dataset apply to --from-study only; quantize members when "
                              "exporting them")
        fuse_models(members, out, weights=parse_weights(weights, len(members)), sample_duration=window)
    meta = read_metadata(out)
    described = json.loads(meta["members"])
    typer.echo(f"wrote {out}: fusion of " + ", ".join(
        f"{m['backbone']} layer {m['layer']} (w={m['weight']:.3g})" for m in described)
        + (f"; study Test UAR of this fusion {float(meta['test_uar']) * 100:.2f}" if "test_uar" in meta else ""))


@app.command("attach")
@friendly_errors
def attach(
    graph: Annotated[Path, typer.Argument(help="The graph the archive was embedded with.")],
    head: Annotated[Path, typer.Argument(help="Head folder written by `vocalprobe probe fit`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The new .onnx graph.")],
) -> None:
    """One deployable graph: GRAPH's backbone and layer with the new probe on top."""
    from vocalprobe.export.attach import attach_head

    path = attach_head(graph, head, out)
    typer.echo(f"wrote {path}")
