"""`vocalprobe study`: the paper's layer-wise study from flags, a TOML config, or (with neither) the embedded demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vocalprobe.commands.errors import friendly_errors
from vocalprobe.commands.options import AddressOpt, ProgressOpt

app = typer.Typer()

DataOpt = Annotated[Optional[list[str]], typer.Option(
    "--data", help="Manifest with train/val/test splits; repeat for several datasets. NAME=PATH names the dataset "
    "(default: the manifest's folder name).")]
BackboneOpt = Annotated[Optional[list[str]], typer.Option(
    "--backbone", help="Registry name (aves-bio, hubert, wav2vec2, wav2vec2-100h, wav2vec2-960h, wavlm, "
    "wavlm-100h), hub id or checkpoint folder; repeat for several.")]
ConfigOpt = Annotated[Optional[Path], typer.Option(
    "--config", help="Study config (TOML), e.g. configs/paper.toml. Flags given on the command line override it.")]
LayersOpt = Annotated[Optional[str], typer.Option("--layers", help="'all' or layer numbers like 0,3,6 or 0-4 "
                                                  "(0 = transformer input).")]
SeedsOpt = Annotated[Optional[int], typer.Option("--seeds", min=1, help="Train each probe with this many seeds; "
                                                 "scores are mean ± std.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="Folder that holds study folders "
                                                "(default: artifacts/studies).")]
NameOpt = Annotated[Optional[str], typer.Option("--name", help="Study folder name under --out (default: the "
                                                "config's name; 'default' for the demo, else 'study').")]
ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", min=1, help="CPU threads for torch, and how many groups of probes train at once (default: torch's "
    "own choice, the cores; the demo uses 1). On a shared machine more threads than free cores can make the backbones "
    "tens of times slower; the probe groups only share the cores.")]
DtypeOpt = Annotated[Optional[str], typer.Option(
    "--dtype", help="Backbone precision: float32 (default), or bfloat16 / float16 on a GPU; the difference to "
    "float32 on the first clips is printed and saved as precision.json beside the probes.")]
ShardOpt = Annotated[Optional[str], typer.Option(
    "--shard", help="Only extract shard i/n (0-based) of every dataset x backbone's features into the feature cache, "
    "e.g. one SLURM array task each; then run the study without --shard to train the probes from the cache.")]
FoldsOpt = Annotated[Optional[int], typer.Option(
    "--folds", min=2, help="K-fold cross-validation over groups for small datasets: every clip is in one fold's "
    "Test, Val comes from the other folds' groups, the best layer is chosen per fold on Val; writes cv_report.md "
    "(cross-validated UAR, mean ± std over folds). The manifest needs no splits.")]
StudyEngineOpt = Annotated[str, typer.Option(
    "--engine", help="local, or ray: extract the features as Ray tasks, one per (backbone, dataset, shard), one GPU "
    "each when the cluster has GPUs (pip install 'vocalprobe\\[ray]'); the probes then train here.")]


@app.command("study")
@friendly_errors
def study(
    data: DataOpt = None,
    backbone: BackboneOpt = None,
    config: ConfigOpt = None,
    layers: LayersOpt = None,
    seeds: SeedsOpt = None,
    device: DeviceOpt = None,
    out: OutOpt = None,
    name: NameOpt = None,
    threads: ThreadsOpt = None,
    dtype: DtypeOpt = None,
    progress: ProgressOpt = True,
    shard: ShardOpt = None,
    engine: StudyEngineOpt = "local",
    address: AddressOpt = None,
    folds: FoldsOpt = None,
) -> None:
    """Probe every layer of every backbone on every dataset, pick the best layers, fuse them, write the report.

    With no --data, --backbone or --config this runs the embedded demo: synthetic calls and three tiny UNTRAINED
    backbones, offline, in a few minutes on a laptop CPU. Re-running a study reuses every finished probe.
    """
    from vocalprobe.training.study.options import check_scale, study_config, study_overrides

    overrides = study_overrides(layers=layers, seeds=seeds, device=device, out_root=out, name=name, dtype=dtype,
                                folds=folds)
    demo = config is None and not data and not backbone
    check_scale(demo, shard, engine, folds)
    if threads is not None or demo:
        import torch

        torch.set_num_threads(threads or 1)  # this process only: the command is the program's entry point

    if demo:
        from vocalprobe.training.study.default import run_default_study

        typer.echo("No --data/--backbone/--config: running the embedded demo study (synthetic data, tiny UNTRAINED "
                   "backbones; its scores say nothing about the paper).", err=True)
        summary_dir = run_default_study(progress=progress, say=_warn, **overrides)
        typer.echo(f"report: {summary_dir / ('cv_report.md' if folds else 'report.md')}")
        return

    cfg = study_config(config, data, backbone, overrides)
    check_scale(demo, shard, engine, cfg.folds)  # folds may come from the config file

    from vocalprobe.training.study.runner import extract_shard, run_study

    if shard is not None:
        from vocalprobe.runtime.core.shards import Shard

        part = Shard.parse(shard)
        extract_shard(cfg, part, progress=progress)
        typer.echo(f"features of shard {part} in {cfg.cache_dir}; once every shard is done, run the study without "
                   "--shard to train the probes")
        return
    if cfg.folds:
        from vocalprobe.training.study.crossval import run_cv

        run_cv(cfg, progress=progress, say=_warn)
        typer.echo(f"report: {cfg.out_dir / 'cv_report.md'}")
        return
    summary = run_study(cfg, progress=progress, engine=engine, address=address, say=_warn)
    _say_trust(summary)
    typer.echo(f"report: {cfg.out_dir / 'report.md'}")


def _warn(text: str) -> None:
    typer.secho(text, fg=typer.colors.YELLOW, err=True)


def _say_trust(summary) -> None:
    """The report's banner and warnings, in the terminal too: a reader of the tables alone must not miss them."""
    from vocalprobe.training.study.trust import banner, ci_warnings

    for line in banner(summary):
        typer.secho(line, bold=True, err=True)
    for line in ci_warnings(summary):
        _warn(f"warning: {line}")

