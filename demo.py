"""The whole product on the embedded default, offline: study -> export -> validate -> stream a field recording.

``vocalprobe demo`` is what a new user runs first. Every step is the public command's own code path:

1. the embedded study (``training.default_study``): synthetic calls, tiny UNTRAINED backbones of the three families;
2. every backbone's best layer exported as one ONNX graph (fp32, with the export-time parity check), its ``int8``
   (dynamic int8 MatMuls) and ``int8-conv`` (convolutions too, per-frame ranges) versions, and the paper's fusion of
   all best layers;
3. ``validate`` on each graph (onnxruntime only): its Test UAR next to the study's;
4. the fused graph streams the synthetic 10-minute AudioMoth recording into Raven/CSV/JSONL tables, and the events
   are scored against the recording's ground truth (precision / recall, and the same detections with shuffled
   labels as a chance baseline).

It writes ``artifacts/demo/report.md``. Re-running reuses the study, rebuilds the graphs, and restreams.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable

import typer

from vocalprobe.runtime.core.atomic import atomic_write_text
from vocalprobe.runtime.core.cli_common import friendly_errors

#: The field recording's windows: 1 s windows every 0.5 s, so a call is never cut in two by the only window seeing it.
FIELD_WINDOW_S = 1.0
FIELD_HOP_S = 0.5
FIELD_MIN_CONF = 0.5


@dataclass
class GraphCheck:
    name: str
    path: Path
    layer: str
    study_uar: float | None
    onnx_uar: float | None
    difference_points: float | None
    passed: bool | None
    n_scored: int = 0
    changed_vs_fp32: int | None = None  # quantized graphs: Test clips whose class differs from the fp32 graph's


@dataclass
class FieldScore:
    detections: int
    truth: int
    precision: float
    recall: float
    f1: float
    chance_precision: float
    speed_x_realtime: float
    out_dir: Path


def export_graphs(study_dir: Path, models_dir: Path, log: Callable[[str], None]
                  ) -> list[tuple[str, str, Path, Path | None]]:
    """Fusion of the best layers (keeping its fp32 members as per-backbone graphs), then each member's int8 and
    int8-conv versions. Returns ``(name, layer, graph, its fp32 graph or None)``."""
    from vocalprobe.export.fusion import fusion_from_study
    from vocalprobe.export.onnx_export import export_from_study
    from vocalprobe.training.study.results import load_summary, safe_name

    choices = load_summary(study_dir).choices
    if models_dir.exists():
        shutil.rmtree(models_dir)  # graphs of an older study must not survive next to the new ones
    models_dir.mkdir(parents=True)
    fused = models_dir / "fusion.onnx"
    log(f"export: the paper's fusion of {len(choices)} best layers (members kept as fp32 graphs)")
    fusion_from_study(study_dir, fused, keep_members=True, log=lambda m: log(f"  {m}"))
    graphs = []
    for i, choice in enumerate(choices):
        fp32 = models_dir / f"{safe_name(choice.backbone)}.onnx"
        fused.with_name(f"{fused.stem}.member{i}.onnx").replace(fp32)
        graphs.append((choice.backbone, f"L{choice.best_layer}", fp32, None))
    for mode, what in (("int8", "dynamic int8 MatMuls"), ("int8-conv", "int8 MatMuls and convolutions")):
        for choice in choices:
            path = models_dir / f"{safe_name(choice.backbone)}.{mode}.onnx"
            log(f"export: {choice.backbone} layer {choice.best_layer}, {what} ({mode})")
            export_from_study(study_dir, path, backbone=choice.backbone, quantize=mode, log=lambda m: log(f"  {m}"))
            graphs.append((f"{choice.backbone} {mode}", f"L{choice.best_layer}", path,
                           models_dir / f"{safe_name(choice.backbone)}.onnx"))
    graphs.append(("fusion", "best", fused, None))
    return graphs


def validate_graphs(graphs: list[tuple[str, str, Path, Path | None]], manifest: Path, reports_dir: Path
                    ) -> list[GraphCheck]:
    """Each graph against the study's Test UAR; a quantized one also against its fp32 graph (decisions changed)."""
    from vocalprobe.runtime.field.onnx_model import OnnxModel
    from vocalprobe.runtime.field.validate import validate, write_report

    checks = []
    for name, layer, path, fp32 in graphs:
        model = OnnxModel(path)
        report = validate(model, manifest, split="test")
        write_report(report, reports_dir / path.stem)
        changed = None
        if fp32 is not None:
            against = validate(model, manifest, split="test", reference_model=OnnxModel(fp32))
            write_report(against, reports_dir / f"{path.stem}.vs-fp32")
            changed = against.decisions_changed
        checks.append(GraphCheck(name, path, layer, report.reference_uar, report.uar, report.difference_points,
                                 report.passed, report.n_scored, changed))
    return checks


def stream_field_recording(model_path: Path, field_dir: Path, out_dir: Path, ignore: set[str]) -> FieldScore:
    from vocalprobe.runtime.field.ensemble import load_models
    from vocalprobe.runtime.field.events import chance_score, read_events, score_events
    from vocalprobe.runtime.field.sources import collect_files
    from vocalprobe.runtime.field.stream import DetectConfig, Outputs, run_sources
    from vocalprobe.runtime.field.windows import WindowPlan

    model = load_models([str(model_path)])
    plan = WindowPlan.from_seconds(FIELD_WINDOW_S, FIELD_HOP_S, model.sample_rate, "pad")
    config = DetectConfig(plan, batch=8, min_conf=FIELD_MIN_CONF, merge=True,
                          ignore=frozenset(ignore & set(model.classes)))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    recordings = sorted(p for p in field_dir.iterdir() if p.suffix.upper() == ".WAV")
    summary = run_sources(collect_files(recordings), model, config, Outputs(out_dir, ("raven", "csv", "jsonl"),
                                                                            model.sample_rate / 2))
    truth = [e for p in sorted(field_dir.glob("*.truth.csv")) for e in read_events(p)]
    detected = read_events(out_dir / "detections.csv")
    score = score_events(detected, truth)
    chance_precision, _ = chance_score(detected, truth)
    speed = summary.audio_seconds / summary.wall_seconds if summary.wall_seconds else 0.0
    return FieldScore(score.n_detected, score.n_truth, score.precision, score.recall, score.f1, chance_precision,
                      speed, out_dir)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def render_report(study_dir: Path, checks: list[GraphCheck], field: FieldScore | None, root: Path) -> str:
    rel = lambda p: Path(p).resolve().relative_to(root.resolve()).as_posix()  # noqa: E731
    lines = ["# vocalprobe demo", "",
             "The embedded default end to end, offline: synthetic calls, three tiny **untrained** backbones "
             "(HuBERT, wav2vec2 and WavLM architectures with random weights). The scores exercise the pipeline; "
             "they say nothing about the paper.", "",
             f"- study: [{rel(study_dir / 'report.md')}]({rel(study_dir / 'report.md')})", "",
             "## Exported graphs, validated with onnxruntime on the Test split", "",
             "UAR in %, Δ in points; the last column counts the Test clips whose class differs from the fp32 "
             "graph's.", "",
             "| graph | layer | study UAR | ONNX UAR | Δ | within 0.5 | changed vs fp32 |",
             "|---|---|---:|---:|---:|---|---:|"]
    for c in checks:
        diff = "–" if c.difference_points is None else f"{c.difference_points:+.2f}"
        verdict = {True: "yes", False: "**no**", None: "–"}[c.passed]
        changed = "–" if c.changed_vs_fp32 is None else f"{c.changed_vs_fp32} of {c.n_scored}"
        lines.append(f"| {c.name} | {c.layer} | {_pct(c.study_uar)} | {_pct(c.onnx_uar)} | {diff} "
                     f"| {verdict} | {changed} |")
    lines += ["", "fp32 graphs must match the study (they are the study's probes on the same clips); int8 and "
              "int8-conv graphs show what quantization costs (one Test clip of 48 moves the UAR by about 2 points; "
              "`benchmarks/bench_quantize_accuracy.py` measures it on 1,600 held-out clips)."
              f" Graphs: `{rel(checks[0].path.parent)}/`; per-graph reports (JSON + confusion matrix): "
              "`artifacts/demo/validate/`."]
    if field is not None:
        lines += ["", "## Streaming the 10-minute field recording (fused graph)", "",
                  f"{FIELD_WINDOW_S:g} s windows every {FIELD_HOP_S:g} s, min-conf {FIELD_MIN_CONF:g}, consecutive "
                  "windows merged into events, the `background` class not reported. An event counts as correct when "
                  "a ground-truth call of the same class overlaps it.", "",
                  "| detected events | true calls | precision | recall | F1 | chance precision | speed |",
                  "|---:|---:|---:|---:|---:|---:|---:|",
                  f"| {field.detections} | {field.truth} | {field.precision:.2f} | {field.recall:.2f} | {field.f1:.2f} "
                  f"| {field.chance_precision:.2f} | {field.speed_x_realtime:.0f}x real time |", "",
                  f"Tables (Raven selection table, CSV, live JSONL): `{rel(field.out_dir)}/`. Chance precision: the "
                  "same detections with their labels shuffled."]
    return "\n".join(lines) + "\n"


def run_demo(root: str | Path = ".", *, log: Callable[[str], None] = print, progress: bool = True) -> Path:
    """Run every step under ``root``; returns the path of ``artifacts/demo/report.md``."""
    from vocalprobe.runtime.datasets.synthetic import BACKGROUND
    from vocalprobe.training.study.default import default_study_config, run_default_study

    root = Path(root)
    log("1/4 study: the embedded default (synthetic data, tiny untrained backbones)")
    study_dir = run_default_study(root, progress=progress)
    manifest = Path(default_study_config(root).datasets[0].manifest)
    demo_dir = root / "artifacts" / "demo"
    log("2/4 export: best layers (fp32, int8, int8-conv) and their fusion, each checked against PyTorch")
    graphs = export_graphs(study_dir, demo_dir / "models", log)
    log("3/4 validate: every graph on the Test split with onnxruntime")
    checks = validate_graphs(graphs, manifest, demo_dir / "validate")
    field_dir = manifest.parent / "field"
    field = None
    if field_dir.is_dir():
        log("4/4 stream: the fused graph on the 10-minute field recording")
        field = stream_field_recording(demo_dir / "models" / "fusion.onnx", field_dir, demo_dir / "stream",
                                       {BACKGROUND})
    report = demo_dir / "report.md"
    atomic_write_text(report, render_report(study_dir, checks, field, root))
    return report


@friendly_errors
def demo_command(
    threads: Annotated[int, typer.Option(min=1, help="torch CPU threads for the study and export (1 is fastest on "
                                                     "a busy 2-core machine).")] = 1,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
) -> None:
    """Run the embedded default end to end: study -> export (fp32, int8, fusion) -> validate -> stream + score.

    Everything lands under artifacts/ (start with artifacts/demo/report.md); nothing is downloaded.
    """
    import torch
    from rich.console import Console
    from rich.markdown import Markdown

    torch.set_num_threads(threads)
    console = Console()
    report = run_demo(".", log=lambda m: console.print(m, markup=False, highlight=False), progress=progress)
    console.print(Markdown(report.read_text(encoding="utf-8")))
    typer.echo(f"report: {report}")
