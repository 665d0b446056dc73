"""A cross-validated study's outputs (``study --folds K``), written from its ``CVSummary``.

* ``cv.csv``: per dataset x backbone, the cross-validated UAR (mean, std, worst and best fold) and each fold's
  best-on-Val layer;
* ``cv_folds.csv``: per dataset x backbone x fold, the layer chosen on that fold's Val, its Val and Test UAR, and the
  fold's split sizes;
* ``cv_report.md``: both, with the protocol spelled out (folds over groups, seeds, choice per fold on Val).

Regenerate without retraining: ``write_cv_report(dir, load_cv_summary(dir))``.
"""

from __future__ import annotations

from pathlib import Path

from vocalprobe.runtime.core.atomic import atomic_write_text
from vocalprobe.training.study.report import _csv, _f
from vocalprobe.training.study.results import CV_FILE, CV_FOLDS_FILE, CV_REPORT_FILE, CV_SUMMARY_FILE, CVSummary

CV_COLUMNS = ("dataset", "backbone", "type", "folds", "cv_uar_mean", "cv_uar_std", "cv_uar_low", "cv_uar_high",
              "best_layers_per_fold")
FOLD_COLUMNS = ("dataset", "backbone", "fold", "best_layer_on_val", "val_uar", "test_uar", "n_train", "n_val",
                "n_test")


def write_cv_report(study_dir: str | Path, summary: CVSummary) -> Path:
    """Write cv.csv, cv_folds.csv and cv_report.md; returns the cv_report.md path."""
    study_dir = Path(study_dir)
    atomic_write_text(study_dir / CV_FILE, _csv(CV_COLUMNS, [
        (c.dataset, c.backbone, c.kind, c.folds, _f(c.mean), _f(c.std), _f(c.low), _f(c.high),
         " ".join(map(str, c.best_layers))) for c in summary.cv]))
    atomic_write_text(study_dir / CV_FOLDS_FILE, _csv(FOLD_COLUMNS, [
        (c.dataset, c.backbone, c.fold, c.best_layer, _f(c.val_uar), _f(c.test_uar), c.n_train, c.n_val, c.n_test)
        for c in summary.choices]))
    path = study_dir / CV_REPORT_FILE
    atomic_write_text(path, cv_markdown(summary))
    return path


def protocol(summary: CVSummary) -> str:
    """One paragraph that says what the cross-validated numbers are."""
    k = summary.folds
    per_clip = [d.name for d in summary.datasets if d.group_by != "group"]
    unit = "groups (the manifest's group column: each group's clips are all in one fold)"
    if per_clip:
        unit += f"; {', '.join(per_clip)} name(s) no groups, so there the folds are of clips"
    seeds = ", ".join(map(str, summary.seeds))
    return (f"**{k}-fold cross-validation over {unit}.** Every clip is scored exactly once, in the Test of its fold, "
            f"by probes trained without its group. Folds dealt with seed {summary.fold_seed}, stratified by class "
            f"where the groups allow (StratifiedGroupKFold-style); in fold f, Val is taken from the other folds' "
            f"groups (seed {summary.fold_seed} + f) and Train is the rest. Probes trained with seed(s) {seeds}. "
            "**The best layer is chosen per fold on that fold's Val** (highest mean Val UAR over seeds, ties to the "
            "lower layer), and the fold's score is the Test UAR at that layer (mean over seeds). CV UAR = mean ± "
            f"std (population) over the {k} folds; the range is the worst and the best fold.")


def cv_markdown(summary: CVSummary) -> str:
    cfg = summary.config
    out = [f"# Study `{cfg['name']}`: {summary.folds}-fold cross-validation", "", protocol(summary), ""]
    untrained = sorted({c.backbone for c in summary.cv if c.kind == "untrained"})
    if untrained:
        out += [f"> **Untrained backbones: {', '.join(untrained)}.** Randomly initialised weights: their scores say "
                "nothing about what a pretrained model learns.", ""]
    warnings = [f"{d.name}: {w}" for d in summary.datasets for w in d.warnings]
    if warnings:
        out += ["> **Warnings:**", ">"] + [f"> - {w}" for w in warnings] + [""]
    out += [f"vocalprobe {summary.vocalprobe_version}. Configuration: [`study.toml`](study.toml) (re-run it with "
            "`vocalprobe study --config study.toml`; finished probes are reused).", ""]
    out += ["## Datasets", "", "| Dataset | Manifest | Classes | Folds of | Units | Test clips per fold | Folds |",
            "|---|---|---:|---|---:|---|---|"]
    for d in summary.datasets:
        unit = "groups" if d.group_by == "group" else "clips"
        out.append(f"| {d.name} | `{d.manifest}` | {len(d.labels)} | {unit} | {d.n_units} | "
                   f"{' / '.join(map(str, d.fold_sizes))} | [`{d.folds_path}`]({d.folds_path}) |")
    out.append("")
    out += ["## Cross-validated UAR", "",
            f"Test UAR [%] at each fold's best-on-Val layer, mean ± std over {summary.folds} folds:", "",
            "| Dataset | Backbone | CV UAR [%] | Worst – best fold [%] | Best layer per fold (on Val) |",
            "|---|---|---:|---:|---|"]
    for c in summary.cv:
        out.append(f"| {c.dataset} | {c.backbone} | {c.mean * 100:.2f} ± {c.std * 100:.2f} | {c.low * 100:.2f} – "
                   f"{c.high * 100:.2f} | {', '.join(map(str, c.best_layers))} |")
    out.append("")
    out += ["## Per fold", "", "| Dataset | Backbone | Fold | Layer (Val) | Val UAR [%] | Test UAR [%] | Train | Val | "
            "Test |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in summary.choices:
        out.append(f"| {c.dataset} | {c.backbone} | {c.fold} | {c.best_layer} | {c.val_uar * 100:.2f} | "
                   f"{c.test_uar * 100:.2f} | {c.n_train} | {c.n_val} | {c.n_test} |")
    out.append("")
    out += ["## Per layer", "", "Test UAR [%] of every layer, mean ± std over folds: the layer curve, shown for "
            "reading, not used to choose a layer.", ""]
    for c in summary.cv:
        out += [f"**{c.dataset} / {c.backbone}**: " + ", ".join(
            f"L{layer} {m * 100:.1f} ± {s * 100:.1f}" for layer, m, s in zip(c.layers, c.layer_test_mean,
                                                                              c.layer_test_std)), ""]
    out += ["## Files", "",
            f"- [`{CV_FILE}`]({CV_FILE}): per dataset × backbone; [`{CV_FOLDS_FILE}`]({CV_FOLDS_FILE}): per fold;",
            f"- [`{CV_SUMMARY_FILE}`]({CV_SUMMARY_FILE}): every probe's scores per fold; probes and their histories "
            "under `runs/DATASET/BACKBONE/fold{f}/`.",
            "- No fusion and no exported best-layer probes: both need one fixed Test split (run the study without "
            "--folds).", ""]
    return "\n".join(out)
