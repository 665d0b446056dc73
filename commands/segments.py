"""`vocalprobe segments`: a stream run's detections cut into audio clips per class, and the run's per-class summary
(``runtime.field.segments``, imported inside the command)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vocalprobe.commands.errors import friendly_errors
from vocalprobe.commands.options import AudioRootOpt, DetectionsArg

app = typer.Typer()


@app.command("segments")
@friendly_errors
def segments(
    detections: DetectionsArg,
    audio: AudioRootOpt = Path("."),
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder of the clips, one sub-folder per class "
                                                "(default: DETECTIONS/segments).")] = None,
    top: Annotated[Optional[int], typer.Option(help="Only the best this many detections per class (default: "
                                               "all).")] = None,
    min_conf: Annotated[float, typer.Option(help="Only detections with confidence >= this.")] = 0.0,
    pad: Annotated[float, typer.Option(help="Seconds of context before and after each detection.")] = 0.0,
) -> None:
    """Cut each detection (or the --top best per class) into a WAV clip to listen to, and write the run's summary
    per class (count, mean and best confidence, first and last detection)."""
    from vocalprobe.runtime.field.segments import INDEX_CSV, SUMMARY_CSV, cut_segments

    if out is None:
        out = (detections if detections.is_dir() else detections.parent) / "segments"
    report = cut_segments(detections, out, audio_root=audio, top=top, min_conf=min_conf, pad_s=pad)
    for file, reason in report.unreadable:
        typer.secho(f"unreadable: {file}: {reason} (is --audio the folder stream was given?)",
                    fg=typer.colors.YELLOW, err=True)
    for s in report.summary:
        typer.echo(f"{s.label}: {s.count} detection(s), {s.clips} clip(s), confidence mean {s.mean_confidence:.3f} "
                   f"max {s.max_confidence:.3f}, first {s.first.file} {s.first.start_s:g} s, last {s.last.file} "
                   f"{s.last.start_s:g} s")
    typer.echo(f"{len(report.clips)} clip(s) -> {out} ({INDEX_CSV}, {SUMMARY_CSV})")
