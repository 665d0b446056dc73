"""The paper's layer-wise study: for every dataset x backbone, probe every layer with several seeds, pick the best
layer, fuse the backbones, and save everything the report and export need.

Flow of ``run_study(config)``:

1. per dataset x backbone: extract every requested layer once (mean+std pooled, ``training.extract``; cached);
2. per layer x seed: train an ``MLPProbe`` on Train, keep its best-Val-UAR epoch, score Val and Test (UAR and a
   bootstrap 95% CI of Test UAR); each finished probe is saved under ``runs/`` and is not recomputed on a re-run;
3. best layer per (dataset, backbone) = highest mean Val UAR over seeds (ties -> the lower layer): the honest choice.
   The best layer on Test (what the paper's Table III reports) is recorded too, and labelled as such;
4. fusion per dataset and seed: mean of the Test posteriors of every backbone's best-on-Val probe, then argmax;
5. ``summary.json``, the best probes under ``probes/`` and, via ``training.report``, results.csv, table3.md, figures
   and report.md.

Everything is written atomically; the study folder holds no pickle (JSON, .npy, safetensors only).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vocalprobe import __version__
from vocalprobe.runtime.core.atomic import atomic_open, atomic_save_npy, atomic_write_text
from vocalprobe.runtime.core.digests import json_sha256
from vocalprobe.runtime.core.manifest import SPLITS, Manifest, read_manifest
from vocalprobe.runtime.core.metrics import bootstrap_uar_ci, confusion_matrix, uar
from vocalprobe.training.probe import ProbeConfig
from vocalprobe.training.study.config import (  # noqa: F401  (re-exported: the study's public API)
    DEFAULT_CACHE_DIR,
    DEFAULT_OUT_ROOT,
    DatasetSpec,
    StudyConfig,
    StudyError,
    backbone_key,
    backbone_label,
    dataset_from_manifest,
    default_dataset_name,
    dict_to_toml,
    parse_layers,
)

#: Bumped when the meaning of a saved per-probe result changes, so old results are recomputed, not reused.
RESULT_FORMAT = 1


# ----------------------------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class ProbeResult:
    """One trained probe: (dataset, backbone, layer, seed)."""

    dataset: str
    backbone: str  # display label
    layer: int
    seed: int
    val_uar: float
    test_uar: float
    test_ci_low: float
    test_ci_high: float
    best_epoch: int
    epochs_run: int
    n_train: int
    n_val: int
    n_test: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LayerChoice:
    """The best layer of one (dataset, backbone), chosen on Val, plus the best on Test for the paper's table."""

    dataset: str
    backbone: str  # display label
    backbone_name: str  # as given in the config
    kind: str  # PT | PT+FT | untrained | other
    layers: tuple[int, ...]
    val_mean: tuple[float, ...]  # per layer, mean over seeds
    val_std: tuple[float, ...]
    test_mean: tuple[float, ...]
    test_std: tuple[float, ...]
    best_layer: int  # on Val (honest)
    best_layer_on_test: int  # on Test (what the paper's Table III reports; optimistic)
    exported_seed: int  # the seed whose probe is saved under probes/ (best Val UAR at best_layer)
    probe_path: str  # relative to the study folder
    posteriors_path: str  # Test posteriors of the saved probe, relative to the study folder

    def score(self, layer: int, split: str = "test") -> tuple[float, float]:
        i = self.layers.index(layer)
        return ((self.test_mean[i], self.test_std[i]) if split == "test" else (self.val_mean[i], self.val_std[i]))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("layers", "val_mean", "val_std", "test_mean", "test_std"):
            d[k] = list(d[k])
        return d


@dataclass(frozen=True)
class FusionResult:
    """Fusion of every backbone's best-on-Val probe on one dataset: per seed and mean +- std."""

    dataset: str
    backbones: tuple[str, ...]
    layers: tuple[int, ...]  # best layer of each backbone, same order
    seeds: tuple[int, ...]
    test_uar: tuple[float, ...]  # per seed
    test_ci: tuple[tuple[float, float], ...]  # per seed
    mean: float
    std: float
    posteriors: tuple[str, ...]  # per seed: fused Test posteriors (.npy), relative to the study folder
    sources: tuple[tuple[str, ...], ...]  # per seed: the per-backbone posterior files that were averaged
    rows: str  # .npy of the Test manifest row indices the posteriors belong to
    labels: str  # .npy of their reference class indices
    confusion: tuple[tuple[int, ...], ...]  # summed over seeds; rows = reference, columns = predicted

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["test_ci"] = [list(c) for c in self.test_ci]
        d["sources"] = [list(s) for s in self.sources]
        d["confusion"] = [list(r) for r in self.confusion]
        for k in ("backbones", "layers", "seeds", "test_uar", "posteriors"):
            d[k] = list(d[k])
        return d


@dataclass
class DatasetInfo:
    name: str
    manifest: str
    labels: list[str]
    n_clips: dict[str, int]  # per split, after unreadable clips are dropped
    failed: list[dict[str, str]]  # {"backbone", "path", "problem"} for clips that could not be used


@dataclass
class StudySummary:
    """What the report is written from; saved as summary.json in the study folder."""

    config: dict[str, Any]
    datasets: list[DatasetInfo]
    results: list[ProbeResult]
    choices: list[LayerChoice]
    fusion: list[FusionResult]
    vocalprobe_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        return {"vocalprobe_version": self.vocalprobe_version, "config": self.config,
                "datasets": [asdict(d) for d in self.datasets],
                "results": [r.to_dict() for r in self.results],
                "choices": [c.to_dict() for c in self.choices],
                "fusion": [f.to_dict() for f in self.fusion]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StudySummary":
        return cls(
            config=data["config"],
            datasets=[DatasetInfo(**d) for d in data["datasets"]],
            results=[ProbeResult(**r) for r in data["results"]],
            choices=[LayerChoice(**{**c, **{k: tuple(c[k]) for k in
                                            ("layers", "val_mean", "val_std", "test_mean", "test_std")}})
                     for c in data["choices"]],
            fusion=[FusionResult(**{**f, "backbones": tuple(f["backbones"]), "layers": tuple(f["layers"]),
                                    "seeds": tuple(f["seeds"]), "test_uar": tuple(f["test_uar"]),
                                    "test_ci": tuple(tuple(c) for c in f["test_ci"]),
                                    "posteriors": tuple(f["posteriors"]),
                                    "sources": tuple(tuple(s) for s in f["sources"]),
                                    "confusion": tuple(tuple(r) for r in f["confusion"])})
                    for f in data["fusion"]],
            vocalprobe_version=data.get("vocalprobe_version", "unknown"),
        )


def load_summary(study_dir: str | Path) -> StudySummary:
    path = Path(study_dir) / "summary.json"
    if not path.is_file():
        raise StudyError(f"{path} not found: run the study first")
    return StudySummary.from_dict(json.loads(path.read_text(encoding="utf-8")))


# ----------------------------------------------------------------------------------------------------------------
# the run


def _digest(obj: Any) -> str:
    return json_sha256(obj)[:16]


def _load_npy(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _read_json(path: Path) -> Any | None:
    """The JSON at ``path``, or None when it does not exist (a result not computed yet)."""
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def safe_name(name: str) -> str:
    """A label as a file or folder name: keep letters, digits, '-', '_' and '.'."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _check_splits(manifest: Manifest, name: str, path: Path) -> None:
    if any(row.split is None for row in manifest.rows):
        raise StudyError(f"dataset {name} ({path}): the manifest has no split for some rows; "
                         f"run `vocalprobe data split {path}` first")
    counts = {s: sum(1 for r in manifest.rows if r.split == s) for s in SPLITS}
    empty = [s for s, n in counts.items() if n == 0]
    if empty:
        raise StudyError(f"dataset {name} ({path}): split(s) {', '.join(empty)} are empty; a study needs "
                         "train, val and test clips")
    if len(manifest.labels) < 2:
        raise StudyError(f"dataset {name} ({path}): needs at least 2 classes, found {manifest.labels}")


@dataclass
class _ClipTable:
    """Which manifest rows a (dataset, backbone) pair could use, in feature order (saved as clips.json)."""

    key: str
    layers: list[int]
    rows: list[int]  # manifest row index per feature row
    labels: list[int]  # class index per feature row
    splits: list[str]
    failed: list[dict[str, str]]
    backbone: dict[str, Any]  # identity of the loaded backbone (source, revision, fingerprint, family, ...)
    kind: str
    n_features: int

    def index(self, split: str) -> np.ndarray:
        return np.flatnonzero(np.asarray(self.splits) == split)


def run_study(config: StudyConfig, *, progress: bool = True, write_outputs: bool = True) -> StudySummary:
    """Run (or resume) a study; returns its summary and, with ``write_outputs``, writes the report files."""
    from vocalprobe.training.backbones import resolve_device

    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "study.toml", config.to_toml())
    device = str(resolve_device(config.device))
    probe_cfg = replace(config.probe, device=device)

    datasets: list[DatasetInfo] = []
    results: list[ProbeResult] = []
    choices: list[LayerChoice] = []
    fusion: list[FusionResult] = []
    for ds in config.datasets:
        manifest = read_manifest(ds.manifest)
        _check_splits(manifest, ds.name, ds.manifest)
        ds_choices: list[LayerChoice] = []
        failed: list[dict[str, str]] = []
        n_clips: dict[str, int] = {}
        for bb in config.backbones:
            table, ds_results = _probe_backbone(config, ds, manifest, bb, probe_cfg, device, progress=progress)
            results += ds_results
            failed += [{"backbone": backbone_label(bb), **f} for f in table.failed]
            n_clips = {s: int(len(table.index(s))) for s in SPLITS}
            choice = _choose_layer(config, ds, bb, table, ds_results)
            ds_choices.append(choice)
        choices += ds_choices
        fusion.append(_fuse(config, ds, ds_choices))
        datasets.append(DatasetInfo(ds.name, str(ds.manifest), manifest.labels, n_clips, failed))

    summary = StudySummary(config.to_dict(), datasets, results, choices, fusion)
    _write_json(out / "summary.json", summary.to_dict())
    if write_outputs:
        from vocalprobe.training.study.report import write_report

        write_report(out, summary)
    return summary


def _run_dir(config: StudyConfig, ds: DatasetSpec, backbone: str) -> Path:
    return config.out_dir / "runs" / safe_name(ds.name) / safe_name(backbone_label(backbone))


def _probe_name(layer: int, seed: int) -> str:
    return f"L{layer:02d}_s{seed}"


def probe_checkpoint(study_dir: str | Path, dataset: str, backbone: str, layer: int, seed: int) -> Path:
    """The saved probe of any (dataset, backbone label, layer, seed) of a study, e.g. to export a non-best layer."""
    run_dir = Path(study_dir) / "runs" / safe_name(dataset) / safe_name(backbone)
    return run_dir / f"{_probe_name(layer, seed)}.safetensors"


def _probe_backbone(config: StudyConfig, ds: DatasetSpec, manifest: Manifest, backbone: str,
                    probe_cfg: ProbeConfig, device: str, *, progress: bool) -> tuple[_ClipTable, list[ProbeResult]]:
    """Train (or reuse) every (layer, seed) probe of one dataset x backbone."""
    run_dir = _run_dir(config, ds, backbone)
    data_key = {"manifest": manifest.content_hash(), "backbone": backbone_key(backbone),
                "chunk_seconds": config.chunk_seconds, "format": RESULT_FORMAT,
                **({"dtype": config.dtype} if config.dtype != "float32" else {})}
    key = _digest({**data_key, "layers": config.layers})
    # a probe depends on its layer's features, not on which other layers were extracted with it
    probe_key_base = {"data": _digest(data_key), "probe": {k: v for k, v in probe_cfg.to_dict().items()
                                              if k not in {"device", "seed", "eval_batch_size"}},
                      "bootstrap": config.bootstrap_resamples}

    saved = _read_json(run_dir / "clips.json")
    table = _ClipTable(**saved) if saved is not None and saved.get("key") == key else None
    todo = None
    if table is not None:
        todo = [(layer, seed) for layer in table.layers for seed in config.seed_list
                if not _is_done(run_dir, layer, seed, _digest({**probe_key_base, "seed": seed}))]
    if table is None or todo:
        features, table = _extract(config, ds, manifest, backbone, key, device, progress=progress)
        _write_json(run_dir / "clips.json", asdict(table))
        todo = [(layer, seed) for layer in table.layers for seed in config.seed_list
                if not _is_done(run_dir, layer, seed, _digest({**probe_key_base, "seed": seed}))]
        _train_probes(config, ds, manifest, backbone, table, features, todo, probe_cfg, probe_key_base, run_dir,
                      progress=progress)

    results = []
    for layer in table.layers:
        for seed in config.seed_list:
            data = _read_json(run_dir / f"{_probe_name(layer, seed)}.json")
            results.append(ProbeResult(**data["result"]))
    return table, results


def _is_done(run_dir: Path, layer: int, seed: int, probe_key: str) -> bool:
    name = _probe_name(layer, seed)
    data = _read_json(run_dir / f"{name}.json")
    return (data is not None and data.get("key") == probe_key
            and (run_dir / f"{name}.test_proba.npy").is_file() and (run_dir / f"{name}.safetensors").is_file())


def _extract(config: StudyConfig, ds: DatasetSpec, manifest: Manifest, backbone_name: str, key: str, device: str,
             *, progress: bool):
    """Load the backbone and extract the requested layers of every clip once: features (n, n_layers, 2D)."""
    from vocalprobe.training.backbones import load_backbone
    from vocalprobe.training.extract import extract_features

    backbone = load_backbone(backbone_name, device=device)
    available = list(range(backbone.num_layers + 1))
    layers = available if config.layers is None else list(config.layers)
    too_deep = [layer for layer in layers if layer > backbone.num_layers]
    if too_deep:
        raise StudyError(f"{backbone.name} has layers 0..{backbone.num_layers}; cannot probe layer(s) {too_deep}")
    fs = extract_features(manifest, backbone, layers=layers, device=device, cache_dir=config.cache_dir,
                          chunk_seconds=config.chunk_seconds, batch_size=config.batch_size, dtype=config.dtype,
                          progress=progress)
    if fs.precision is not None:  # reduced precision: keep the measured difference to float32 beside the probes
        _write_json(_run_dir(config, ds, backbone_name) / "precision.json", fs.precision)
    if list(fs.layers) != layers:
        raise StudyError(f"feature extraction returned layers {list(fs.layers)}, expected {layers}")
    failed = [{"path": f.path, "problem": f.error} for f in fs.failed]
    kind = backbone.spec.kind if backbone.spec is not None else (
        "untrained" if getattr(backbone.config, "vocalprobe_untrained", False) else "other")
    identity = backbone.identity()
    identity.pop("config", None)
    table = _ClipTable(key=key, layers=layers, rows=[int(r) for r in fs.rows], labels=[int(y) for y in fs.labels],
                       splits=[str(s) for s in fs.splits], failed=failed, backbone=identity, kind=kind,
                       n_features=int(fs.features.shape[2]))
    for split in SPLITS:
        if len(table.index(split)) == 0:
            raise StudyError(f"dataset {ds.name} with {backbone.name}: no readable {split} clips "
                             f"({len(failed)} clip(s) failed, e.g. {failed[:1]})")
    return np.asarray(fs.features, dtype=np.float32), table


def _train_probes(config: StudyConfig, ds: DatasetSpec, manifest: Manifest, backbone: str, table: _ClipTable,
                  features: np.ndarray, todo: Sequence[tuple[int, int]], probe_cfg: ProbeConfig,
                  probe_key_base: dict[str, Any], run_dir: Path, *, progress: bool) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from vocalprobe.training.probe import ProbeClassifier, ProbeInfo, save_probe

    if not todo:
        return
    labels = np.asarray(table.labels, dtype=np.int64)
    idx = {s: table.index(s) for s in SPLITS}
    n_classes = len(manifest.labels)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task(f"probes {ds.name} / {backbone_label(backbone)}", total=len(todo))
        for layer, seed in todo:
            li = table.layers.index(layer)
            x = features[:, li, :]  # (n_clips, 2D)
            bar.update(task, description=f"probes {ds.name} / {backbone_label(backbone)}: layer {layer} seed {seed}")
            clf = ProbeClassifier(replace(probe_cfg, seed=seed)).fit(
                x[idx["train"]], labels[idx["train"]], x[idx["val"]], labels[idx["val"]], n_classes=n_classes)
            val_uar = clf.score(x[idx["val"]], labels[idx["val"]])
            proba = clf.predict_proba(x[idx["test"]], layer=layer)  # (n_test, n_classes)
            y_test = labels[idx["test"]]
            pred = proba.argmax(1)
            test_uar = uar(y_test, pred)
            ci = bootstrap_uar_ci(y_test, pred, n_resamples=config.bootstrap_resamples, seed=seed)
            result = ProbeResult(ds.name, backbone_label(backbone), layer, seed, val_uar, test_uar, ci[0], ci[1],
                                 clf.best_epoch_, len(clf.history_), len(idx["train"]), len(idx["val"]),
                                 len(idx["test"]))
            name = _probe_name(layer, seed)
            info = ProbeInfo(backbone=backbone, backbone_id=table.backbone.get("source", backbone),
                             backbone_revision=table.backbone.get("revision"),
                             backbone_fingerprint=table.backbone.get("fingerprint"), layer=layer,
                             labels=tuple(manifest.labels), n_features=x.shape[1],
                             hidden_sizes=probe_cfg.hidden_sizes, val_uar=val_uar, test_uar=test_uar, seed=seed,
                             dataset=ds.name, probe_config=replace(probe_cfg, seed=seed).to_dict())
            save_probe(run_dir / name, clf.model_, info)
            atomic_save_npy(run_dir / f"{name}.test_proba.npy", proba.astype(np.float32))
            # the key is written last: a probe counts as done only when all its files exist
            _write_json(run_dir / f"{name}.json", {
                "key": _digest({**probe_key_base, "seed": seed}), "result": result.to_dict(),
                "history": [asdict(h) for h in clf.history_], "stopped_early": clf.stopped_early_})
            bar.advance(task)


def _argmax_lowest(values: Sequence[float]) -> int:
    """Index of the maximum; ties go to the first (the lower layer)."""
    best = max(values)
    return next(i for i, v in enumerate(values) if v == best)


def _choose_layer(config: StudyConfig, ds: DatasetSpec, backbone: str, table: _ClipTable,
                  results: list[ProbeResult]) -> LayerChoice:
    """Best layer on mean Val UAR (ties -> lower layer); save its best-seed probe and Test posteriors."""
    by = {(r.layer, r.seed): r for r in results}
    seeds = config.seed_list
    val = np.array([[by[(layer, s)].val_uar for s in seeds] for layer in table.layers])  # (n_layers, n_seeds)
    test = np.array([[by[(layer, s)].test_uar for s in seeds] for layer in table.layers])
    val_mean, test_mean = val.mean(1), test.mean(1)
    best = table.layers[_argmax_lowest(list(val_mean))]
    best_test = table.layers[_argmax_lowest(list(test_mean))]
    row = val[table.layers.index(best)]
    seed = seeds[_argmax_lowest(list(row))]

    run_dir = _run_dir(config, ds, backbone)
    label = backbone_label(backbone)
    probe_dir = config.out_dir / "probes" / safe_name(ds.name)
    probe_stem = probe_dir / safe_name(label)
    src = run_dir / _probe_name(best, seed)
    for suffix in (".safetensors", ".json"):
        _copy_atomic(src.with_name(src.name + suffix), probe_stem.with_name(probe_stem.name + suffix))
    posteriors = probe_stem.with_name(probe_stem.name + ".test_posteriors.npy")
    _copy_atomic(src.with_name(src.name + ".test_proba.npy"), posteriors)
    test_idx = table.index("test")
    atomic_save_npy(probe_stem.with_name(probe_stem.name + ".test_rows.npy"),
                    np.asarray(table.rows, np.int64)[test_idx])
    atomic_save_npy(probe_stem.with_name(probe_stem.name + ".test_labels.npy"),
                    np.asarray(table.labels, np.int64)[test_idx])
    return LayerChoice(
        dataset=ds.name, backbone=label, backbone_name=backbone, kind=table.kind, layers=tuple(table.layers),
        val_mean=tuple(float(v) for v in val_mean), val_std=tuple(float(v) for v in val.std(1)),
        test_mean=tuple(float(v) for v in test_mean), test_std=tuple(float(v) for v in test.std(1)),
        best_layer=best, best_layer_on_test=best_test, exported_seed=seed,
        probe_path=str(probe_stem.with_name(probe_stem.name + ".safetensors").relative_to(config.out_dir)),
        posteriors_path=str(posteriors.relative_to(config.out_dir)))


def _copy_atomic(src: Path, dst: Path) -> None:
    with atomic_open(dst, "wb") as out, src.open("rb") as handle:
        shutil.copyfileobj(handle, out)


def _fuse(config: StudyConfig, ds: DatasetSpec, choices: list[LayerChoice]) -> FusionResult:
    """Mean of the best-on-Val probes' Test posteriors over backbones, per seed; scored like any probe."""
    tables = [_ClipTable(**_read_json(_run_dir(config, ds, c.backbone_name) / "clips.json")) for c in choices]
    test_rows = [np.asarray(t.rows, np.int64)[t.index("test")] for t in tables]
    common = test_rows[0]
    for rows in test_rows[1:]:
        common = np.intersect1d(common, rows)  # clips every backbone could read
    common = np.sort(common)
    first = tables[0]
    label_of = dict(zip(first.rows, first.labels))
    y = np.array([label_of[int(r)] for r in common], dtype=np.int64)

    fusion_dir = config.out_dir / "fusion" / safe_name(ds.name)
    atomic_save_npy(fusion_dir / "test_rows.npy", common)
    atomic_save_npy(fusion_dir / "test_labels.npy", y)
    n_classes = None
    scores, cis, posterior_paths, sources = [], [], [], []
    confusion = None
    for seed in config.seed_list:
        stack, seed_sources = [], []
        for choice, rows in zip(choices, test_rows):
            path = _run_dir(config, ds, choice.backbone_name) / f"{_probe_name(choice.best_layer, seed)}.test_proba.npy"
            proba = _load_npy(path)  # (n_test, n_classes), in that backbone's test-row order
            position = {int(r): i for i, r in enumerate(rows)}
            stack.append(proba[[position[int(r)] for r in common]])
            seed_sources.append(str(path.relative_to(config.out_dir)))
        fused = np.mean(np.stack(stack), axis=0).astype(np.float32)  # (n_common, n_classes)
        n_classes = fused.shape[1]
        pred = fused.argmax(1)
        scores.append(uar(y, pred))
        cis.append(bootstrap_uar_ci(y, pred, n_resamples=config.bootstrap_resamples, seed=seed))
        out_path = fusion_dir / f"s{seed}.test_posteriors.npy"
        atomic_save_npy(out_path, fused)
        posterior_paths.append(str(out_path.relative_to(config.out_dir)))
        sources.append(tuple(seed_sources))
        cm = confusion_matrix(y, pred, n_classes)
        confusion = cm if confusion is None else confusion + cm
    result = FusionResult(
        dataset=ds.name, backbones=tuple(c.backbone for c in choices), layers=tuple(c.best_layer for c in choices),
        seeds=tuple(config.seed_list), test_uar=tuple(float(s) for s in scores),
        test_ci=tuple((float(a), float(b)) for a, b in cis), mean=float(np.mean(scores)), std=float(np.std(scores)),
        posteriors=tuple(posterior_paths), sources=tuple(sources),
        rows=str((fusion_dir / "test_rows.npy").relative_to(config.out_dir)),
        labels=str((fusion_dir / "test_labels.npy").relative_to(config.out_dir)),
        confusion=tuple(tuple(int(v) for v in r) for r in confusion))
    _write_json(fusion_dir / "fusion.json", result.to_dict())
    return result
