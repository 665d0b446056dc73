"""A study's outputs, written from its ``StudySummary``: CSV tables, the paper's Table III, figures and report.md.

Files (all under the study folder, written atomically):

* ``results.csv``: one row per dataset x backbone x layer x seed (Val UAR, Test UAR and its bootstrap 95% CI);
* ``best_layers.csv``: per dataset x backbone, the best layer on Val and the best on Test with mean +- std;
* ``fusion.csv``: per dataset x seed, the fusion's Test UAR and CI;
* ``table3.md``: Table III of the paper (best-on-Val layer), then the same table with the best-on-Test layer;
* ``figures/``: layer-wise UAR per dataset (every backbone, Val and Test, mean +- std over seeds), the paper's
  Fig. 3 (AVES vs HuBERT) and Fig. 4 (W2V2 / WavLM vs fine-tuned) when those backbones were run, and the fusion
  confusion matrices (Fig. 5);
* ``cost.csv`` and ``figures/frontier_*.png``: each layer's arithmetic against its UAR (``study.frontier``);
* ``report.md``: links and embeds all of the above.

Regenerate from a finished study without retraining: ``write_report(dir, load_summary(dir))``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

import numpy as np

from vocalprobe.runtime.core.atomic import atomic_open, atomic_write_text
from vocalprobe.training.study.results import FusionResult, LayerChoice, StudySummary, safe_name
from vocalprobe.training.study.trust import banner, study_warnings

RESULT_COLUMNS = ("dataset", "backbone", "type", "layer", "seed", "val_uar", "test_uar", "test_ci_low",
                  "test_ci_high", "best_epoch", "epochs_run", "n_train", "n_val", "n_test")
BEST_COLUMNS = ("dataset", "backbone", "type", "best_layer_on_val", "val_uar_mean", "val_uar_std", "test_uar_mean",
                "test_uar_std", "best_layer_on_test", "test_uar_mean_at_best_on_test", "exported_seed", "probe")
FUSION_COLUMNS = ("dataset", "seed", "backbones", "layers", "test_uar", "test_ci_low", "test_ci_high")
#: Row groups of Table III, in order; other backbone types follow in the order they appear, then Fusion.
TYPE_ORDER = ("PT", "PT+FT")
FIG3 = (("aves-bio", "o", "full"), ("hubert", "o", "none"))  # the paper: AVES (filled) vs HuBERT (hollow)
FIG4 = (("wav2vec2", "^", "full", "-"), ("wav2vec2-100h", "^", "none", "--"), ("wav2vec2-960h", "^", "none", ":"),
        ("wavlm", "s", "full", "-"), ("wavlm-100h", "s", "none", "--"))


def write_report(study_dir: str | Path, summary: StudySummary) -> Path:
    """Write every table, figure and report.md of a study; returns the report.md path."""
    study_dir = Path(study_dir)
    write_results_csv(study_dir / "results.csv", summary)
    write_best_csv(study_dir / "best_layers.csv", summary)
    write_fusion_csv(study_dir / "fusion.csv", summary)
    atomic_write_text(study_dir / "table3.md", table3_markdown(summary))
    figures = write_figures(study_dir / "figures", summary)
    path = study_dir / "report.md"
    text = _with_cost_section(report_markdown(study_dir, summary, figures), study_dir, summary)
    atomic_write_text(path, text)
    return path


def _with_cost_section(text: str, study_dir: Path, summary: StudySummary) -> str:
    """report.md with 'Cost beside accuracy' (``study.frontier``) before 'All scores' (or at the end)."""
    from vocalprobe.training.study.frontier import cost_section

    section = "\n".join(cost_section(study_dir, summary)) + "\n"
    head, marker, tail = text.partition("## All scores")
    return head + section + marker + tail if marker else text + "\n" + section


# ----------------------------------------------------------------------------------------------------------------
# CSV


def _csv(columns: Sequence[str], rows: list[Sequence]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue()


def _f(value: float) -> str:
    return f"{value:.6f}"


def _kinds(summary: StudySummary) -> dict[tuple[str, str], str]:
    return {(c.dataset, c.backbone): c.kind for c in summary.choices}


def write_results_csv(path: Path, summary: StudySummary) -> None:
    kinds = _kinds(summary)
    rows = [(r.dataset, r.backbone, kinds.get((r.dataset, r.backbone), ""), r.layer, r.seed, _f(r.val_uar),
             _f(r.test_uar), _f(r.test_ci_low), _f(r.test_ci_high), r.best_epoch, r.epochs_run, r.n_train, r.n_val,
             r.n_test) for r in summary.results]
    atomic_write_text(path, _csv(RESULT_COLUMNS, rows))


def write_best_csv(path: Path, summary: StudySummary) -> None:
    rows = []
    for c in summary.choices:
        val_m, val_s = c.score(c.best_layer, "val")
        test_m, test_s = c.score(c.best_layer, "test")
        rows.append((c.dataset, c.backbone, c.kind, c.best_layer, _f(val_m), _f(val_s), _f(test_m), _f(test_s),
                     c.best_layer_on_test, _f(c.score(c.best_layer_on_test)[0]), c.exported_seed, c.probe_path))
    atomic_write_text(path, _csv(BEST_COLUMNS, rows))


def write_fusion_csv(path: Path, summary: StudySummary) -> None:
    rows = []
    for f in summary.fusion:
        for seed, score, (lo, hi) in zip(f.seeds, f.test_uar, f.test_ci):
            rows.append((f.dataset, seed, " ".join(f.backbones), " ".join(map(str, f.layers)), _f(score), _f(lo),
                         _f(hi)))
    atomic_write_text(path, _csv(FUSION_COLUMNS, rows))


# ----------------------------------------------------------------------------------------------------------------
# Table III


def _grouped(choices: Sequence[LayerChoice]) -> list[tuple[str, list[str]]]:
    """[(type, [backbone labels in config order])], PT first, then PT+FT, then other types as they appear."""
    order: list[str] = []
    members: dict[str, list[str]] = {}
    for c in choices:
        if c.kind not in members:
            order.append(c.kind)
            members[c.kind] = []
        if c.backbone not in members[c.kind]:
            members[c.kind].append(c.backbone)
    order.sort(key=lambda k: (TYPE_ORDER.index(k) if k in TYPE_ORDER else len(TYPE_ORDER)))
    return [(k, members[k]) for k in order]


def table3_rows(summary: StudySummary, *, on: str = "val") -> tuple[list[str], list[tuple[str, str, list]]]:
    """(datasets, [(type, backbone, [(test_mean, test_std, layer) per dataset])]); Fusion last (layer None).

    ``on="val"``: the layer is the best on Val (honest); ``on="test"``: the best on Test (as the paper's Table III).
    """
    datasets = [d.name for d in summary.datasets]
    by = {(c.dataset, c.backbone): c for c in summary.choices}
    rows: list[tuple[str, str, list]] = []
    for kind, backbones in _grouped(summary.choices):
        for label in backbones:
            cells = []
            for ds in datasets:
                c = by[(ds, label)]
                layer = c.best_layer if on == "val" else c.best_layer_on_test
                mean, std = c.score(layer, "test")
                cells.append((mean, std, layer))
            rows.append((kind, label, cells))
    fusion = {f.dataset: f for f in summary.fusion}
    if on == "val":
        rows.append(("Fusion", "", [(fusion[ds].mean, fusion[ds].std, None) for ds in datasets]))
    return datasets, rows


def _ranks(values: Sequence[float]) -> list[int]:
    """0 for the best displayed value (ties share it), 1 for the second best, 2 for the rest."""
    shown = [round(v * 100, 2) for v in values]
    distinct = sorted(set(shown), reverse=True)
    return [min(distinct.index(v), 2) for v in shown]


def _table(datasets: list[str], rows: list[tuple[str, str, list]], n_seeds: int) -> str:
    lines = ["| Type | Backbone | " + " | ".join(datasets) + " |",
             "|---|---|" + "---:|" * len(datasets)]
    ranks = [_ranks([row[2][j][0] for row in rows]) for j in range(len(datasets))]
    previous = None
    for i, (kind, label, cells) in enumerate(rows):
        parts = [kind if kind != previous else "", label]
        previous = kind
        for j, (mean, std, layer) in enumerate(cells):
            text = f"{mean * 100:.2f}"
            if n_seeds > 1:
                text += f" ± {std * 100:.2f}"
            if ranks[j][i] == 0:
                text = f"**{text}**"
            elif ranks[j][i] == 1:
                text = f"<u>{text}</u>"
            if layer is not None:
                text += f" (L{layer})"
            parts.append(text)
        lines.append("| " + " | ".join(parts) + " |")
    return "\n".join(lines)


def table3_markdown(summary: StudySummary) -> str:
    n_seeds = int(summary.config.get("seeds", 1))
    seeds_note = (f"mean ± std over {n_seeds} seeds" if n_seeds > 1 else "one seed")
    datasets, rows = table3_rows(summary, on="val")
    _, rows_test = table3_rows(summary, on="test")
    out = [
        "# Table III: Test UAR [%] on the best feature layer",
        "",
        "## Best layer chosen on Val (use this one)",
        "",
        f"Test UAR [%] of each backbone's best layer **on Val** ({seeds_note}); (Lk) is that layer, L0 the "
        "transformer input. Fusion averages the Test posteriors of every backbone's best-on-Val probe. Per dataset, "
        "the best value is **bold** and the second best <u>underlined</u> (ranked on the values as shown, Fusion "
        "included; ties share the mark).",
        "",
        _table(datasets, rows, n_seeds),
        "",
        "## Best layer chosen on Test (as the paper's Table III; optimistic)",
        "",
        "Same scores with each backbone's layer picked by its **Test** UAR, as the paper reports them. Choosing the "
        "layer on the data it is scored on overstates what a new recording would get; this table is here only to "
        "compare with the paper.",
        "",
        _table(datasets, rows_test, n_seeds),
        "",
    ]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------------------
# figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def write_figures(fig_dir: Path, summary: StudySummary) -> list[tuple[str, str]]:
    """Write the PNGs; returns [(caption, path relative to the study folder)]."""
    figures: list[tuple[str, str]] = []
    for info in summary.datasets:
        path = fig_dir / f"layers_{safe_name(info.name)}.png"
        _layerwise(path, summary, info.name)
        figures.append((f"Layer-wise Val and Test UAR of every backbone on {info.name} (mean ± std over seeds; "
                        "★ = best layer on Val)", f"figures/{path.name}"))
    names = {c.backbone_name.lower() for c in summary.choices}
    if all(name in names for name, *_ in FIG3):
        path = fig_dir / "fig3_aves_vs_hubert.png"
        _paper_figure(path, summary, FIG3, "Layer-wise Test UAR of AVES (●) against HuBERT (○)")
        figures.append(("Fig. 3: layer-wise Test UAR of AVES-Bio (●) against HuBERT (○)", f"figures/{path.name}"))
    pairs = [("wav2vec2", ("wav2vec2-100h", "wav2vec2-960h")), ("wavlm", ("wavlm-100h",))]
    if any(base in names and any(ft in names for ft in fts) for base, fts in pairs):
        path = fig_dir / "fig4_finetuning.png"
        _paper_figure(path, summary, FIG4, "Test UAR of W2V2 (▲) and WavLM (■) against their fine-tuned versions")
        figures.append(("Fig. 4: layer-wise Test UAR of W2V2 (▲) and WavLM (■) against their fine-tuned versions "
                        "(hollow, dashed)", f"figures/{path.name}"))
    path = fig_dir / "fig5_fusion_confusion.png"
    _confusions(path, summary)
    figures.append(("Fig. 5: confusion matrices of the best layers' fusion on Test (row-normalised, summed over "
                    "seeds)", f"figures/{path.name}"))
    return figures


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=120, bbox_inches="tight")


def _layerwise(path: Path, summary: StudySummary, dataset: str) -> None:
    plt = _plt()
    choices = [c for c in summary.choices if c.dataset == dataset]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, split in zip(axes, ("val", "test")):
        for i, c in enumerate(choices):
            color = f"C{i % 10}"
            mean = np.array(c.val_mean if split == "val" else c.test_mean) * 100
            std = np.array(c.val_std if split == "val" else c.test_std) * 100
            ax.plot(c.layers, mean, marker="o", color=color, label=f"{c.backbone} ({c.kind})")
            ax.fill_between(c.layers, np.clip(mean - std, 0, 100), np.clip(mean + std, 0, 100), color=color,
                            alpha=0.15, linewidth=0)
            best = c.layers.index(c.best_layer)
            ax.plot([c.best_layer], [mean[best]], marker="*", markersize=15, color=color, markeredgecolor="black")
        ax.set_title(f"{dataset}: {'Val' if split == 'val' else 'Test'} UAR")
        ax.set_xlabel("layer (0 = transformer input)")
        ax.grid(alpha=0.3)
        ax.set_xticks(sorted({layer for c in choices for layer in c.layers}))
    axes[0].set_ylabel("UAR [%]")
    axes[1].legend(loc="best", fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _paper_figure(path: Path, summary: StudySummary, styles: tuple, title: str) -> None:
    plt = _plt()
    datasets = [d.name for d in summary.datasets]
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.8), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        by_name = {c.backbone_name.lower(): c for c in summary.choices if c.dataset == ds}
        for i, style in enumerate(styles):
            name, marker, fill = style[:3]
            line = style[3] if len(style) > 3 else "-"
            c = by_name.get(name)
            if c is None:
                continue
            color = "C0" if name.startswith(("wav2vec2", "aves")) else "C1"
            ax.plot(c.layers, np.array(c.test_mean) * 100, marker=marker, fillstyle=fill, linestyle=line,
                    color=color, label=c.backbone)
        ax.set_title(ds)
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("Test UAR [%]")
    axes[0][-1].legend(loc="best", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _confusions(path: Path, summary: StudySummary) -> None:
    plt = _plt()
    labels_of = {d.name: d.labels for d in summary.datasets}
    fusions: list[FusionResult] = summary.fusion
    n = len(fusions)
    size = max(4.5, 0.45 * max(len(labels_of[f.dataset]) for f in fusions) + 2.5)
    fig, axes = plt.subplots(1, n, figsize=(size * n, size), squeeze=False)
    for ax, f in zip(axes[0], fusions):
        counts = np.array(f.confusion, dtype=float)
        totals = counts.sum(1, keepdims=True)
        norm = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)  # empty rows stay 0
        image = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
        k = norm.shape[0]
        names = labels_of[f.dataset]
        ticks = [f"{i} {names[i]}" if len(names[i]) <= 16 else f"{i} {names[i][:15]}…" for i in range(k)]
        ax.set_xticks(range(k), [str(i) for i in range(k)])
        ax.set_yticks(range(k), ticks, fontsize=8)
        if k <= 15:
            for r in range(k):
                for col in range(k):
                    if counts[r, col]:
                        ax.text(col, r, f"{norm[r, col]:.2f}", ha="center", va="center", fontsize=7,
                                color="white" if norm[r, col] > 0.5 else "black")
        ax.set_xlabel("predicted class")
        ax.set_ylabel("reference class")
        ax.set_title(f"{f.dataset}: fusion, UAR {f.mean * 100:.1f}%")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------
# report.md


def report_markdown(study_dir: Path, summary: StudySummary, figures: list[tuple[str, str]]) -> str:
    cfg = summary.config
    n_seeds = int(cfg.get("seeds", 1))
    out = [f"# Study `{cfg['name']}`", ""]
    for line in banner(summary):
        out += [f"> **{line.split(':', 1)[0]}.**{line.split(':', 1)[1]}", ""]
    warnings = study_warnings(summary)
    if warnings:
        out += ["> **Warnings: read before trusting these scores.**", ">"] + [f"> - {w}" for w in warnings] + [""]
    if cfg.get("description"):
        out += [cfg["description"], ""]
    out += [f"vocalprobe {summary.vocalprobe_version}. Configuration: [`study.toml`](study.toml) "
            "(re-run it with `vocalprobe study --config study.toml`; finished probes are reused).", ""]

    out += ["## Datasets", "", "| Dataset | Manifest | Classes | Train | Val | Test | Unusable clips |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for d in summary.datasets:
        n_failed = len({f["path"] for f in d.failed})
        out.append(f"| {d.name} | `{d.manifest}` | {len(d.labels)} | {d.n_clips.get('train', 0)} | "
                   f"{d.n_clips.get('val', 0)} | {d.n_clips.get('test', 0)} | {n_failed} |")
    out.append("")
    failed = [(d.name, f) for d in summary.datasets for f in d.failed]
    if failed:
        out += ["Clips that could not be used (left out of every probe):", ""]
        seen = set()
        for ds, f in failed:
            if (ds, f["path"]) not in seen:
                seen.add((ds, f["path"]))
                out.append(f"- {ds}: `{f['path']}`: {f['problem']}")
        out.append("")

    backbones = []
    for c in summary.choices:
        if c.backbone not in [b[0] for b in backbones]:
            backbones.append((c.backbone, c.backbone_name, c.kind))
    out += ["## Backbones", "", "| Backbone | Given as | Type |", "|---|---|---|"]
    out += [f"| {label} | `{name}` | {kind} |" for label, name, kind in backbones]
    out.append("")

    table3 = table3_markdown(summary).split("\n", 2)[2].replace("\n## ", "\n### ").lstrip("\n")
    out += ["## Table III", "", "### " + table3.removeprefix("## "), ""]

    out += ["## Fusion", "", "Mean of the Test posteriors of every backbone's best-on-Val probe, then argmax "
            "(paper II.B), one fusion per seed. Test UAR [%] with the bootstrap 95% CI of each seed:", "",
            "| Dataset | Layers fused | " + " | ".join(f"seed {s}" for s in summary.fusion[0].seeds)
            + " | mean ± std |",
            "|---|---|" + "---:|" * (len(summary.fusion[0].seeds) + 1)]
    for f in summary.fusion:
        fused = ", ".join(f"{b} L{layer}" for b, layer in zip(f.backbones, f.layers))
        per_seed = [f"{s * 100:.2f} [{lo * 100:.1f}, {hi * 100:.1f}]" for s, (lo, hi) in zip(f.test_uar, f.test_ci)]
        out.append(f"| {f.dataset} | {fused} | " + " | ".join(per_seed) + f" | {f.mean * 100:.2f} ± "
                   f"{f.std * 100:.2f} |")
    out.append("")

    out += ["## Figures", ""]
    for caption, rel in figures:
        out += [f"**{caption}**", "", f"![{caption}]({rel})", ""]

    out += ["## Best-layer probes (for `vocalprobe export`)", "",
            "Each file holds the probe's weights and z-score statistics (safetensors) and, in its header and the "
            "`.json` beside it, the backbone id and revision, layer, labels, preprocessing, Val/Test UAR and "
            "vocalprobe version. The probe saved is the seed with the best Val UAR at the best-on-Val layer; its Test "
            "posteriors (used for fusion) are the `.test_posteriors.npy` beside it, rows in `.test_rows.npy`.", "",
            "| Dataset | Backbone | Layer (Val) | Val UAR [%] | Test UAR [%] | Layer (Test) | Probe |",
            "|---|---|---:|---:|---:|---:|---|"]
    for c in summary.choices:
        vm, vs = c.score(c.best_layer, "val")
        tm, ts = c.score(c.best_layer, "test")
        out.append(f"| {c.dataset} | {c.backbone} | {c.best_layer} | {vm * 100:.2f} ± {vs * 100:.2f} | "
                   f"{tm * 100:.2f} ± {ts * 100:.2f} | {c.best_layer_on_test} | [`{c.probe_path}`]({c.probe_path}) |")
    out.append("")

    out += ["## All scores", "",
            "- [`results.csv`](results.csv): one row per dataset × backbone × layer × seed (Val UAR, Test UAR, "
            "bootstrap 95% CI of Test UAR, best epoch, epochs run, split sizes);",
            "- [`best_layers.csv`](best_layers.csv): best layer per dataset × backbone, on Val and on Test;",
            "- [`fusion.csv`](fusion.csv): fusion per dataset × seed;",
            "- [`table3.md`](table3.md), [`summary.json`](summary.json); per-probe histories under `runs/`.", ""]

    probe = cfg.get("probe", {})
    out += ["## Method", "",
            "- Features: every layer's hidden states (L0 = transformer input), mean and population std over time "
            "(2·D), clips resampled to 16 kHz, peak-normalised, clips under 5,000 samples tiled.",
            f"- Probe: z-score with Train statistics; {len(probe.get('hidden_sizes', []))} × "
            "[Linear, LayerNorm, ReLU] "
            f"with {', '.join(map(str, probe.get('hidden_sizes', [])))} units, then Linear; cross-entropy; Adam lr "
            f"{probe.get('learning_rate')}; batch {probe.get('batch_size')}; at most {probe.get('max_epochs')} "
            f"epochs; LR × {probe.get('lr_factor')} after {probe.get('lr_patience')} epochs without a Val-loss gain; "
            f"early stop after {probe.get('early_stopping_patience')} epochs without a Val-UAR gain; Test is scored "
            "with the best-Val-UAR epoch.",
            "- UAR (unweighted average recall) = mean of per-class recalls over the classes present in the reference "
            "labels (scikit-learn's `balanced_accuracy_score`). A class never predicted counts as recall 0.",
            f"- Seeds: {n_seeds} ({', '.join(str(cfg.get('base_seed', 0) + i) for i in range(n_seeds))}); ± is the "
            "std over seeds. CI: percentile bootstrap over Test clips, "
            f"{cfg.get('bootstrap_resamples')} resamples (the paper gives none).",
            "- Best layer: highest mean Val UAR over seeds, ties to the lower layer. The paper's Table III reports the "
            "best layer on Test; we show that too, labelled.", ""]
    return "\n".join(out)
