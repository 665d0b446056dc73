"""The whole product on the embedded default, offline: study -> export -> validate -> stream a field recording.

``vocalprobe demo`` is what a new user runs first. Every step is the public command's own code path:

1. the embedded study (``training.default_study``): synthetic calls, tiny UNTRAINED backbones of the three families
   and the TRAINED Whisper tiny.en encoder;
2. every backbone's best layer exported as one ONNX graph (fp32, with the export-time parity check), its ``int8``
   (dynamic int8 MatMuls) and, for the waveform-CNN families, ``int8-conv`` (convolutions too, per-frame ranges)
   versions, and the paper's fusion of all best layers;
3. ``validate`` on each graph (onnxruntime only): its Test UAR next to the study's;
4. the fused graph streams the synthetic 10-minute AudioMoth recording into Raven/CSV/JSONL tables, and the events
   are scored against the recording's ground truth (precision / recall, and the same detections with shuffled
   labels as a chance baseline);
5. the agile loop on that recording (``runtime.archive``): embed it with the best backbone's fp32 graph, search with
   one known call, let the ground truth review the top hits (a Raven table through ``label import``), fit a probe on
   the stored vectors, apply it to the archive, attach it to the graph and stream the recording through the new
   graph, scored on the query's class next to the study's graphs.

It writes ``artifacts/demo/report.md``. Re-running reuses the study, rebuilds the graphs, and restreams.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vocalprobe.runtime.core.atomic import atomic_write_text

#: The field recording's windows: 1 s windows every 0.5 s, so a call is never cut in two by the only window seeing it.
FIELD_WINDOW_S = 1.0
FIELD_HOP_S = 0.5
FIELD_MIN_CONF = 0.5
#: The agile loop: how many search hits the (ground-truth) reviewer labels, and the new probe's target precision.
REVIEW_HITS = 100
AGILE_PRECISION = 0.9


@dataclass(frozen=True)
class DemoConfig:
    """The size of what the demo builds: the default study's inputs (``DefaultInputs``) and its number of seeds
    (None: ``configs/default.toml``'s). The product runs the defaults; the demo's test a smaller demo."""

    inputs: object = None  # training.study.default.DefaultInputs; None: its defaults (imported lazily: torch)
    seeds: int | None = None


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
    f1_dcase: float  # the same detections, DCASE event-based (collar 200 ms, offsets within 50 %)


@dataclass
class ClassScore:
    """One graph's streamed events scored on one class only (the class the agile loop's probe learned)."""
    graph: str
    detections: int
    truth: int
    precision: float
    recall: float


@dataclass
class AgileLoop:
    graph: Path  # the fp32 graph embedded with
    backbone: str
    layer: str
    db: Path
    windows: int
    embed_x_realtime: float
    db_bytes: int
    label: str  # the query's class
    query: tuple[float, float]  # the query call's start and end (s)
    hits: int
    best_score: float
    reviewed_positive: int
    annotations: int
    unmatched: int
    counts: dict[str, int]  # labelled windows per class
    split: tuple[int, int, int]
    test_uar: float
    test_uar_ci95: tuple[float, float]
    threshold: float
    precision_reached: bool
    applied_windows: int
    applied_detections: int
    apply_windows_per_s: float
    stream_windows_per_s: float  # the study's graph streaming the same recording
    new_graph: Path
    scores: list[ClassScore]  # the study's graphs, then the new one
    out_dir: Path


def export_graphs(study_dir: Path, models_dir: Path, log: Callable[[str], None]
                  ) -> list[tuple[str, str, Path, Path | None]]:
    """Fusion of the best layers (keeping its fp32 members as per-backbone graphs), then each member's int8 and
    int8-conv versions where the mode applies to its family (Whisper has no waveform CNN: no int8-conv). Returns
    ``(name, layer, graph, its fp32 graph or None)``."""
    from vocalprobe.export import quant_modes
    from vocalprobe.export.fusion import fusion_from_study
    from vocalprobe.export.onnx_export import export_from_study
    from vocalprobe.runtime.engine.onnx_model import OnnxModel
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
    members = [fp32 for _, _, fp32, _ in graphs]  # exported and checked against PyTorch by the fusion
    families = [OnnxModel(fp32).info.metadata.get("family", "") for fp32 in members]
    for mode, what in (("int8", "dynamic int8 MatMuls"), ("int8-conv", "int8 MatMuls and convolutions")):
        for choice, family, fp32 in zip(choices, families, members):
            if not quant_modes.mode(mode).applies_to(family):
                log(f"export: no {mode} for {choice.backbone} (a {family} backbone: the mode does not apply)")
                continue
            path = models_dir / f"{safe_name(choice.backbone)}.{mode}.onnx"
            log(f"export: {choice.backbone} layer {choice.best_layer}, {what} ({mode})")
            export_from_study(study_dir, path, backbone=choice.backbone, quantize=mode, fp32_graph=fp32,
                              log=lambda m: log(f"  {m}"))
            graphs.append((f"{choice.backbone} {mode}", f"L{choice.best_layer}", path, fp32))
    graphs.append(("fusion", "best", fused, None))
    return graphs


def validate_graphs(graphs: list[tuple[str, str, Path, Path | None]], manifest: Path, reports_dir: Path
                    ) -> list[GraphCheck]:
    """Each graph against the study's Test UAR; a quantized one also against its fp32 graph (decisions changed)."""
    from vocalprobe.runtime.engine.onnx_model import OnnxModel
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


def field_recordings(field_dir: Path) -> list[Path]:
    return sorted(p for p in field_dir.iterdir() if p.suffix.upper() == ".WAV")


def stream_field_recording(model_path: Path, field_dir: Path, out_dir: Path, ignore: set[str], *,
                           thresholds: tuple[tuple[str, float], ...] = ()) -> FieldScore:
    """``stream`` on the field recording (``thresholds``: per-class, as ``--min-conf CLASSES.csv`` gives them),
    through the command's own core (``run_stream``)."""
    from vocalprobe.runtime.engine.onnx_model import OnnxModel
    from vocalprobe.runtime.field.events import chance_score, detected_events, score_events, score_events_collar
    from vocalprobe.runtime.field.run import StreamJob, run_stream

    classes = set(OnnxModel(model_path).classes)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    job = StreamJob((model_path,), out_dir, tuple(str(p) for p in field_recordings(field_dir)),
                    ("raven", "csv", "jsonl"), window_s=FIELD_WINDOW_S, hop_s=FIELD_HOP_S, batch=8,
                    min_conf=FIELD_MIN_CONF, thresholds=thresholds, merge=True, ignore=frozenset(ignore & classes))
    summary = run_stream(job).summary
    truth = read_truth(field_dir)
    detected = detected_events(out_dir)
    score = score_events(detected, truth)
    chance_precision, _ = chance_score(detected, truth)
    speed = summary.audio_seconds / summary.wall_seconds if summary.wall_seconds else 0.0
    return FieldScore(score.n_detected, score.n_truth, score.precision, score.recall, score.f1, chance_precision,
                      speed, out_dir, score_events_collar(detected, truth).f1)


def read_truth(field_dir: Path) -> list:
    from vocalprobe.runtime.field.events import read_events

    return [e for p in sorted(field_dir.glob("*.truth.csv")) for e in read_events(p)]


def holds_call(start_s: float, end_s: float, call) -> bool:
    """A window holds a call when it covers at least half of the shorter of the two (``label import``'s rule)."""
    overlap = min(end_s, call.end_s) - max(start_s, call.start_s)
    return overlap > 0 and overlap >= 0.5 * min(end_s - start_s, call.end_s - call.start_s)


def query_call(truth: list):
    """The example a user would cut from a recording: its longest call (the clearest one; ties: the first)."""
    return max(truth, key=lambda e: (round(e.end_s - e.start_s, 4), -e.start_s))


def class_score(name: str, stream_out: Path, truth: list, label: str) -> ClassScore:
    from vocalprobe.runtime.field.events import detected_events, score_events

    detected = [e for e in detected_events(stream_out) if e.label == label]
    score = score_events(detected, [e for e in truth if e.label == label])
    return ClassScore(name, score.n_detected, score.n_truth, score.precision, score.recall)


def write_reviewed_table(hits: list, truth: list, label: str, path: Path, high_freq_hz: float) -> int:
    """The reviewer's Raven table: the hits table with a ``Label`` column (positive when the ground truth has a call
    of ``label`` in the hit's window, else negative). Returns the positives."""
    import csv
    import io

    from vocalprobe.runtime.archive.search import HIT_COLUMNS, hits_raven

    rows = list(csv.DictReader(io.StringIO(hits_raven(hits, high_freq_hz)), delimiter="\t"))
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow((*HIT_COLUMNS, "Label"))
    positives = 0
    for hit, row in zip(hits, rows):
        positive = any(e.label == label and e.file == Path(hit.file).name and holds_call(hit.start_s, hit.end_s, e)
                       for e in truth)
        positives += positive
        writer.writerow([row[c] for c in HIT_COLUMNS] + ["positive" if positive else "negative"])
    atomic_write_text(path, buffer.getvalue())
    return positives


def agile_loop(graph: Path, backbone: str, layer: str, field_dir: Path, out_dir: Path,
               study_streams: list[tuple[str, Path]]) -> AgileLoop:
    """embed -> search -> label import -> probe fit -> probe apply -> export attach -> stream, each through the
    function its command calls; ``study_streams``: (name, stream output folder) of the study's graphs, scored
    alongside."""
    import time

    from vocalprobe.export.attach import attach_head
    from vocalprobe.runtime.archive.apply import apply_head
    from vocalprobe.runtime.archive.embed import embed_sources
    from vocalprobe.runtime.archive.head import BACKGROUND, THRESHOLDS_CSV, load_head
    from vocalprobe.runtime.archive.labels import import_tables
    from vocalprobe.runtime.archive.search import archive_model, archive_plan, query_embedding, search, write_hits
    from vocalprobe.runtime.archive.store import ArchiveDB
    from vocalprobe.runtime.engine.onnx_model import OnnxModel
    from vocalprobe.runtime.engine.sources import collect_files
    from vocalprobe.runtime.field.stream import read_thresholds
    from vocalprobe.runtime.engine.windows import WindowPlan
    from vocalprobe.training.archive_probe import fit_head

    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    db = out_dir / "archive"
    truth = read_truth(field_dir)
    model = OnnxModel(graph)
    plan = WindowPlan.from_seconds(FIELD_WINDOW_S, FIELD_HOP_S, model.sample_rate, "pad")
    with ArchiveDB.open_writer(db) as archive:  # vocalprobe embed
        embedded = embed_sources(collect_files(field_recordings(field_dir)), model, plan, archive)
    db_bytes = sum(p.stat().st_size for p in db.iterdir() if p.is_file())

    query = query_call(truth)
    with ArchiveDB.open_reader(db) as archive:  # vocalprobe search
        net = archive_model(archive, None)
        vector = query_embedding(field_dir / query.file, net, archive_plan(archive), start=query.start_s,
                                 end=query.end_s)
        hits = search(archive, vector, REVIEW_HITS)
    write_hits(hits, out_dir / "hits.txt", model.sample_rate / 2)
    reviewed = out_dir / "hits.reviewed.txt"
    positives = write_reviewed_table(hits, truth, query.label, reviewed, model.sample_rate / 2)
    with ArchiveDB.open_writer(db) as archive:  # vocalprobe label import --class LABEL
        labels = import_tables(archive, [reviewed], one_class=query.label)

    head_dir = out_dir / "head"
    fit = fit_head(db, head_dir, precision=AGILE_PRECISION, seed=0)  # vocalprobe probe fit
    head = load_head(head_dir)
    started = time.perf_counter()
    with ArchiveDB.open_reader(db) as archive:  # vocalprobe probe apply
        applied = apply_head(head, archive, out_dir / "apply")
    apply_s = max(time.perf_counter() - started, 1e-9)

    new_graph = attach_head(graph, head_dir, out_dir / f"{query.label}.onnx")  # vocalprobe export attach
    _, thresholds = read_thresholds(str(head_dir / THRESHOLDS_CSV), FIELD_MIN_CONF)
    stream_field_recording(new_graph, field_dir, out_dir / "stream", {BACKGROUND}, thresholds=thresholds)
    base = stream_field_recording(graph, field_dir, out_dir / "stream-study", {BACKGROUND})  # the graph it replaces
    scores = [class_score(name, stream_out, truth, query.label) for name, stream_out in study_streams]
    scores.append(class_score(f"`{graph.name}` (study)", base.out_dir, truth, query.label))
    scores.append(class_score(f"`{new_graph.name}` (attached probe)", out_dir / "stream", truth, query.label))
    speed = embedded.audio_seconds / embedded.wall_seconds if embedded.wall_seconds else 0.0
    return AgileLoop(graph, backbone, layer, db, embedded.windows, speed, db_bytes, query.label,
                     (query.start_s, query.end_s), len(hits), hits[0].score if hits else 0.0, positives,
                     labels.annotations, len(labels.unmatched), fit.counts, (fit.n_train, fit.n_val, fit.n_test),
                     fit.test_uar, fit.test_uar_ci95, fit.thresholds[query.label], fit.precision_reached[query.label],
                     applied.windows, applied.detections, applied.windows / apply_s,
                     embedded.windows * base.speed_x_realtime / max(embedded.audio_seconds, 1e-9), new_graph, scores,
                     out_dir)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def render_agile(loop: AgileLoop, rel: Callable[[Path], str], untrained: set[str]) -> list[str]:
    lo, hi = loop.test_uar_ci95
    n_train, n_val, n_test = loop.split
    positives, negatives = loop.counts.get(loop.label, 0), sum(loop.counts.values()) - loop.counts.get(loop.label, 0)
    reached = "reached" if loop.precision_reached else "**not reached** on the held-out windows"
    lines = ["", "## The agile loop on the field recording: embed once, search, label, probe, attach", "",
             f"The study's best backbone ({loop.backbone}, layer {loop.layer[1:]}) embeds the recording once; every "
             "later step reads the stored vectors, until the new graph streams the recording again. Each step is "
             "the function its command calls.", "",
             "| step | what it did |", "|---|---|",
             f"| `embed` | `{loop.graph.name}`: {loop.windows:,} windows ({FIELD_WINDOW_S:g} s every "
             f"{FIELD_HOP_S:g} s) "
             f"into a perch-hoplite database of {loop.db_bytes / 1e3:,.0f} kB, {loop.embed_x_realtime:.0f}x real "
             "time |",
             f"| `search` | query: the truth table's longest call ({loop.label}, "
             f"{loop.query[0]:.2f}-{loop.query[1]:.2f} s); the top {loop.hits} hits (best cosine "
             f"{loop.best_score:.4f}) as a Raven table |",
             f"| `label import --class {loop.label}` | the ground truth reviewed the hits: {loop.reviewed_positive} "
             f"positive, {loop.hits - loop.reviewed_positive} negative; {loop.annotations} annotations, "
             f"{loop.unmatched} rows unmatched |",
             f"| `probe fit` | the paper's MLP on {positives} {loop.label} and {negatives} background windows (split "
             f"{n_train}/{n_val}/{n_test}): held-out UAR {100 * loop.test_uar:.1f} (95% CI {100 * lo:.1f}-"
             f"{100 * hi:.1f}); threshold {loop.threshold:.3f} for precision {AGILE_PRECISION:g} ({reached}) |",
             f"| `probe apply` | {loop.applied_windows:,} stored windows scored at {loop.apply_windows_per_s:,.0f} "
             f"windows/s (streaming: {loop.stream_windows_per_s:,.0f} windows/s), {loop.applied_detections} above "
             "the threshold |",
             f"| `export attach` | `{loop.new_graph.name}`: {loop.backbone}'s backbone and layer, the new probe on "
             "top |",
             "", f"Events of **{loop.label}** only (the class the new probe learned), streamed and scored as above: "
             f"the study's graphs at min-conf {FIELD_MIN_CONF:g}, the new graph at its own threshold "
             "(`head/thresholds.csv` as `--min-conf`).", "",
             f"| graph | {loop.label} events | true {loop.label} calls | precision | recall |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {c.graph} | {c.detections} | {c.truth} | {c.precision:.2f} | {c.recall:.2f} |" for c in loop.scores]
    lines += ["", "The held-out UAR is measured on reviewed hits, the windows the search found easiest; the stream row "
              f"is the figure that counts. {loop.backbone} is {_weights(loop.backbone, untrained)}. "
              f"Files: `{rel(loop.out_dir)}/` (`archive/`, `hits.txt`, `hits.reviewed.txt`, `head/`, "
              f"`apply/`, `{loop.new_graph.name}`, `stream/`, `stream-study/`)."]
    return lines


def _weights(backbone: str, untrained: set[str]) -> str:
    return ("untrained (random weights): its numbers exercise the loop, not the method" if backbone in untrained
            else "a trained encoder (speech weights, synthetic calls): its numbers are a trained model's")


def _intro(choices) -> str:
    """What the study's backbones are, from the study's own record of each (the checkpoint config's marker)."""
    untrained = [c.backbone for c in choices if c.kind == "untrained"]
    trained = [c.backbone for c in choices if c.kind != "untrained"]
    parts = []
    if untrained:
        parts.append(f"{len(untrained)} tiny **untrained** backbones ({', '.join(untrained)}: random weights, "
                     "whose scores exercise the pipeline)")
    if trained:
        parts.append(f"{len(trained)} **trained** ({', '.join(trained)}: Whisper's speech-trained weights, "
                     "probed on calls they never heard)")
    return (f"The embedded default end to end, offline: synthetic calls, {' and '.join(parts)}. None of the scores "
            "says anything about the paper's datasets.")


def render_report(study_dir: Path, checks: list[GraphCheck], field: FieldScore | None, root: Path,
                  agile: AgileLoop | None = None) -> str:
    from vocalprobe.training.study.results import load_summary

    rel = lambda p: Path(p).resolve().relative_to(root.resolve()).as_posix()  # noqa: E731
    choices = load_summary(study_dir).choices
    untrained = {c.backbone for c in choices if c.kind == "untrained"}
    lines = ["# vocalprobe demo", "", _intro(choices), "",
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
    lines += ["", "Study UAR: the Test UAR of the probe the graph holds, the seed with the best Val UAR at the layer "
              "chosen on Val (the fusion row: those probes fused), so it differs from Table III's mean over seeds. "
              "fp32 graphs must match the study (they are the study's probes on the same clips); int8 and "
              "int8-conv graphs show what quantization costs (one Test clip of 48 moves the UAR by about 2 points; "
              "`benchmarks/bench_quantize_accuracy.py` measures it on 1,600 held-out clips)."
              f" Graphs: `{rel(checks[0].path.parent)}/`; per-graph reports (JSON + confusion matrix): "
              "`artifacts/demo/validate/`."]
    if field is not None:
        lines += ["", "## Streaming the 10-minute field recording (fused graph)", "",
                  f"{FIELD_WINDOW_S:g} s windows every {FIELD_HOP_S:g} s, min-conf {FIELD_MIN_CONF:g}, consecutive "
                  "windows merged into events, the `background` class not reported. An event counts as correct when "
                  "a ground-truth call of the same class overlaps it.", "",
                  "| detected events | true calls | precision | recall | F1 (overlap) | F1 (DCASE event-based) "
                  "| chance precision | speed |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|",
                  f"| {field.detections} | {field.truth} | {field.precision:.2f} | {field.recall:.2f} | {field.f1:.2f} "
                  f"| {field.f1_dcase:.2f} | {field.chance_precision:.2f} | {field.speed_x_realtime:.0f}x real time |",
                  "",
                  "Two F1s of the same detections: *overlap* (precision, recall and this F1) counts an event correct "
                  "when it overlaps a true call of its class, however long or late; *DCASE event-based* (sed_eval's "
                  "definition, `vocalprobe score-events`) also needs its onset within 200 ms of the call's and its "
                  "offset within 200 ms or half the call's length: the stricter figure, the one papers report. "
                  f"Tables (Raven selection table, CSV, live JSONL): `{rel(field.out_dir)}/`. Chance precision: the "
                  "same detections with their labels shuffled."]
    if agile is not None:
        lines += render_agile(agile, rel, untrained)
    return "\n".join(lines) + "\n"


def run_demo(root: str | Path = ".", *, log: Callable[[str], None] = print, progress: bool = True,
             config: DemoConfig = DemoConfig()) -> Path:
    """Run every step under ``root``; returns the path of ``artifacts/demo/report.md``."""
    from vocalprobe.runtime.archive.vectors import usearch_index
    from vocalprobe.runtime.datasets.synthetic import BACKGROUND
    from vocalprobe.training.study.default import DEFAULT_INPUTS, default_study_config, run_default_study

    usearch_index()  # step 5 needs the archive extra (usearch): say so now, not after the study
    root = Path(root)
    log("1/5 study: the embedded default (synthetic data, tiny untrained backbones, trained Whisper tiny.en)")
    overrides = {} if config.seeds is None else {"seeds": config.seeds}
    study_dir = run_default_study(root, progress=progress, inputs=config.inputs or DEFAULT_INPUTS, **overrides)
    manifest = Path(default_study_config(root).datasets[0].manifest)
    demo_dir = root / "artifacts" / "demo"
    log("2/5 export: best layers (fp32, int8, int8-conv where it applies) and their fusion, each checked against "
        "PyTorch")
    graphs = export_graphs(study_dir, demo_dir / "models", log)
    log("3/5 validate: every graph on the Test split with onnxruntime")
    checks = validate_graphs(graphs, manifest, demo_dir / "validate")
    field_dir = manifest.parent / "field"
    field, agile = None, None
    if field_dir.is_dir():
        log("4/5 stream: the fused graph on the 10-minute field recording")
        field = stream_field_recording(demo_dir / "models" / "fusion.onnx", field_dir, demo_dir / "stream",
                                       {BACKGROUND})
        best = max((c for c in checks if c.name != "fusion" and c.changed_vs_fp32 is None),
                   key=lambda c: -1.0 if c.study_uar is None else c.study_uar)
        log(f"5/5 agile loop: embed the field recording with {best.name}, search one call, label the hits, fit, "
            "apply, attach, stream")
        agile = agile_loop(best.path, best.name, best.layer, field_dir, demo_dir / "agile",
                           [("`fusion.onnx` (study)", field.out_dir)])
    report = demo_dir / "report.md"
    atomic_write_text(report, render_report(study_dir, checks, field, root, agile))
    return report

