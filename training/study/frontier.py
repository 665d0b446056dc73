"""Cost beside accuracy: every (backbone, layer) of a study priced in MACs per audio second (``training.cost``), its
measured speed when ``benchmarks/bench_frontier.py`` has run, the deployable frontier (Pareto-optimal layers: none
cheaper is as good on Val) and ``export --layer frontier:M`` (the cheapest layer within M UAR points of the best).

Files (under the study folder): ``cost.csv`` (written with the report), ``figures/frontier_DATASET.png``, and
``frontier_speed.csv`` (written by the benchmark, read here when present).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vocalprobe.runtime.core.atomic import atomic_open, atomic_write_text
from vocalprobe.training.cost import DEFAULT_WINDOW_SECONDS, CostError, cheapest_within, macs_per_second, pareto_front
from vocalprobe.training.study.config import StudyError
from vocalprobe.training.study.results import CLIPS_FILE, LayerChoice, StudySummary, read_json, run_dir, safe_name

COST_FILE = "cost.csv"
SPEED_FILE = "frontier_speed.csv"
COST_COLUMNS = ("dataset", "backbone", "layer", "gmacs_per_audio_s", "window_s", "val_uar_mean", "test_uar_mean",
                "on_frontier", "x_realtime")
SPEED_COLUMNS = ("dataset", "backbone", "layer", "window_s", "threads", "audio_s", "wall_s", "x_realtime")


@dataclass(frozen=True)
class LayerCost:
    dataset: str
    backbone: str  # display label
    layer: int
    macs_per_s: float | None  # None: the backbone's config could not be read
    val_mean: float
    test_mean: float
    on_frontier: bool = False  # Pareto-optimal among every (backbone, layer) of the dataset, on Val
    x_realtime: float | None = None  # measured by the benchmark, when it ran


def backbone_config(study_dir: str | Path, dataset: str, backbone: str) -> dict[str, Any] | None:
    """The transformers config of a study's backbone, from the source its clip table records (local folder or
    cached hub model; never the network); None when it cannot be read."""
    table = read_json(run_dir(study_dir, dataset, backbone) / CLIPS_FILE)
    if table is None or not table.get("backbone", {}).get("source"):
        return None
    try:
        from transformers import AutoConfig

        identity = table["backbone"]
        return AutoConfig.from_pretrained(identity["source"], revision=identity.get("revision"),
                                          local_files_only=True).to_dict()
    except (ImportError, OSError, ValueError):
        return None


def choice_costs(study_dir: str | Path, summary: StudySummary, choice: LayerChoice,
                 window_seconds: float = DEFAULT_WINDOW_SECONDS) -> list[float] | None:
    """MACs per audio second of each layer of ``choice`` (backbone, pooling and probe), or None."""
    config = backbone_config(study_dir, choice.dataset, choice.backbone)
    if config is None:
        return None
    labels = next((d.labels for d in summary.datasets if d.name == choice.dataset), [])
    hidden = summary.config.get("probe", {}).get("hidden_sizes", [])
    d = int(config.get("hidden_size", config.get("d_model", 0)))
    try:
        return [macs_per_second(config, layer, window_seconds=window_seconds, probe=(2 * d, hidden, len(labels)))
                for layer in choice.layers]
    except CostError:
        return None


def read_speed(study_dir: str | Path) -> dict[tuple[str, str, int], float]:
    """x real time per (dataset, backbone, layer) from the benchmark's CSV; empty when it has not run."""
    path = Path(study_dir) / SPEED_FILE
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as handle:
        return {(r["dataset"], r["backbone"], int(r["layer"])): float(r["x_realtime"]) for r in csv.DictReader(handle)}


def layer_costs(study_dir: str | Path, summary: StudySummary,
                window_seconds: float = DEFAULT_WINDOW_SECONDS) -> list[LayerCost]:
    """Every (dataset, backbone, layer) with its cost, mean Val/Test UAR, frontier flag and measured speed."""
    speed = read_speed(study_dir)
    rows: list[LayerCost] = []
    for info in summary.datasets:
        found = []
        for c in (c for c in summary.choices if c.dataset == info.name):
            costs = choice_costs(study_dir, summary, c, window_seconds) or [None] * len(c.layers)
            found += [(c.backbone, layer, cost, c.val_mean[i], c.test_mean[i])
                      for i, (layer, cost) in enumerate(zip(c.layers, costs))]
        priced = [f for f in found if f[2] is not None]
        front = dict(zip([(f[0], f[1]) for f in priced], pareto_front([(f[2], f[3]) for f in priced])))
        rows += [LayerCost(info.name, b, layer, cost, val, test, front.get((b, layer), False),
                           speed.get((info.name, b, layer))) for b, layer, cost, val, test in found]
    return rows


def write_cost_csv(path: Path, rows: list[LayerCost], window_seconds: float = DEFAULT_WINDOW_SECONDS) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COST_COLUMNS)
    for r in rows:
        writer.writerow((r.dataset, r.backbone, r.layer, "" if r.macs_per_s is None else f"{r.macs_per_s / 1e9:.6f}",
                         window_seconds, f"{r.val_mean:.6f}", f"{r.test_mean:.6f}", int(r.on_frontier),
                         "" if r.x_realtime is None else f"{r.x_realtime:.3f}"))
    atomic_write_text(path, buffer.getvalue())


def frontier_figure(path: Path, rows: list[LayerCost], dataset: str) -> bool:
    """Val UAR against GMACs per audio second, one line per backbone, the frontier drawn through; False when no
    layer of the dataset could be priced."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    mine = [r for r in rows if r.dataset == dataset and r.macs_per_s is not None]
    if not mine:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, backbone in enumerate(dict.fromkeys(r.backbone for r in mine)):
        points = sorted((r.macs_per_s / 1e9, r.val_mean * 100, r.layer) for r in mine if r.backbone == backbone)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=f"C{i % 10}", alpha=0.8,
                label=backbone)
        for x, y, layer in points:
            ax.annotate(f"L{layer}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    front = sorted((r.macs_per_s / 1e9, r.val_mean * 100) for r in mine if r.on_frontier)
    ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black", linestyle="--",
            linewidth=1)
    ax.scatter([p[0] for p in front], [p[1] for p in front], s=160, facecolors="none", edgecolors="black",
               label="frontier (Pareto on Val)")
    costs = [r.macs_per_s for r in mine]
    wide = max(costs) > 10 * min(costs)
    if wide:
        ax.set_xscale("log")
    ax.set_xlabel("GMACs per audio second" + (" (log)" if wide else ""))
    ax.set_ylabel("Val UAR [%] (mean over seeds)")
    ax.set_title(f"{dataset}: accuracy against arithmetic")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True


def cost_section(study_dir: Path, summary: StudySummary) -> list[str]:
    """Write cost.csv and the frontier figures; returns report.md's 'Cost beside accuracy' section."""
    rows = layer_costs(study_dir, summary)
    write_cost_csv(study_dir / COST_FILE, rows)
    out = ["## Cost beside accuracy", "",
           f"Arithmetic of each exported graph (backbone truncated after the layer, pooling, probe) in GMACs "
           f"(10⁹ multiply-accumulates) per audio second, counted from the backbone's config for "
           f"{DEFAULT_WINDOW_SECONDS:g} s windows (the attention term grows with the window). Frontier: layers no "
           "other (backbone, layer) of the dataset beats on mean Val UAR at the same or lower cost. "
           "`vocalprobe export DIR --layer frontier:M` takes the cheapest layer within M Val UAR points of "
           "the backbone's best. Every row: [`cost.csv`](cost.csv).", ""]
    measured = any(r.x_realtime is not None for r in rows)
    if not measured:
        out += [f"Measured speed: not yet; `python benchmarks/bench_frontier.py {study_dir}` exports every layer and "
                f"times onnxruntime, writing `{SPEED_FILE}`, which the next report picks up.", ""]
    if any(r.macs_per_s is None for r in rows):
        missing = sorted({r.backbone for r in rows if r.macs_per_s is None})
        out += [f"Not priced (config not readable offline): {', '.join(missing)}.", ""]
    for info in summary.datasets:
        path = study_dir / "figures" / f"frontier_{safe_name(info.name)}.png"
        if frontier_figure(path, rows, info.name):
            out += [f"**{info.name}: Val UAR against GMACs per audio second (circled, dashed: the frontier)**", "",
                    f"![frontier {info.name}](figures/{path.name})", ""]
        out += [f"| {info.name}: backbone | Layer | GMACs/s | Val UAR [%] | Test UAR [%] | Frontier |"
                + (" × real time |" if measured else ""),
                "|---|---:|---:|---:|---:|:---:|" + ("---:|" if measured else "")]
        for r in (r for r in rows if r.dataset == info.name):
            cost = "" if r.macs_per_s is None else f"{r.macs_per_s / 1e9:.3g}"
            line = (f"| {r.backbone} | {r.layer} | {cost} | {r.val_mean * 100:.2f} | {r.test_mean * 100:.2f} | "
                    f"{'●' if r.on_frontier else ''} |")
            if measured:
                line += f" {'' if r.x_realtime is None else f'{r.x_realtime:.1f}'} |"
            out.append(line)
        out.append("")
    return out


# ----------------------------------------------------------------------------------------------------------------
# export --layer frontier:M


def parse_frontier_spec(spec: str) -> float | None:
    """``frontier:M`` -> M (UAR points, >= 0); None when ``spec`` is not a frontier spec."""
    text = str(spec).strip().lower()
    if not text.startswith("frontier"):
        return None
    _, sep, value = text.partition(":")
    try:
        if not sep:
            raise ValueError
        margin = float(value)
    except ValueError:
        raise StudyError(f"--layer {spec!r}: expected frontier:M with M the UAR margin in points, e.g. "
                         "frontier:1.0") from None
    if not margin >= 0 or margin == float("inf"):
        raise StudyError(f"--layer {spec!r}: the margin must be a finite number of UAR points >= 0, e.g. frontier:1.0")
    return margin


def frontier_layer(study_dir: str | Path, summary: StudySummary, choice: LayerChoice,
                   margin: float) -> tuple[int, str]:
    """(layer, why): the cheapest layer of ``choice`` whose mean Val UAR is within ``margin`` points of the best."""
    costs = choice_costs(study_dir, summary, choice)
    if costs is None:
        raise StudyError(f"{choice.backbone}: its config cannot be read here (the study's backbone source must be "
                         "available offline) to price its layers; pass --layer best or a layer number")
    scores = [v * 100 for v in choice.val_mean]
    layer = cheapest_within(choice.layers, costs, scores, margin)
    i, best = choice.layers.index(layer), choice.layers.index(choice.best_layer)
    why = (f"frontier:{margin:g}: layer {layer} ({costs[i] / 1e9:.3g} GMACs per audio second, Val UAR "
           f"{scores[i]:.2f}) is the cheapest within {margin:g} points of the best, layer {choice.best_layer} "
           f"({costs[best] / 1e9:.3g} GMACs/s, Val UAR {scores[best]:.2f})")
    return layer, why
