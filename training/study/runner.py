"""The paper's layer-wise study, read top to bottom: config, data, features, probes, choice, fusion, report.

``run_study(config)`` runs (or resumes) it, one ``BackboneRun`` per dataset x backbone:

1. data: each dataset's manifest, with its train/val/test splits checked;
2. features: every requested layer of every clip, extracted once (mean+std pooled, ``training.extract``; cached);
3. probes: per layer x seed, an ``MLPProbe`` trained on Train, kept at its best-Val-UAR epoch and scored on Val and
   Test (UAR and a bootstrap 95% CI); a finished probe is saved under ``runs/`` and never trained again;
4. choice: the best layer = highest mean Val UAR over seeds (ties -> the lower layer), the honest choice; the best on
   Test (what the paper's Table III reports) is recorded too, and labelled as such;
5. fusion: per dataset and seed, the mean of every backbone's best-on-Val Test posteriors, then argmax;
6. report: ``summary.json``, the best probes under ``probes/`` and, via ``report``, tables, figures and report.md.

Where each file goes is ``results``' business; everything is written atomically, and no pickle.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vocalprobe.runtime.core.atomic import atomic_open, atomic_save_npy, atomic_write_text
from vocalprobe.runtime.core.digests import json_sha256
from vocalprobe.runtime.core.manifest import SPLITS, Manifest, read_manifest
from vocalprobe.runtime.core.metrics import bootstrap_uar_ci, confusion_matrix, uar
from vocalprobe.runtime.core.records import from_record, to_record
from vocalprobe.runtime.core.shards import Shard
from vocalprobe.training.probe import ProbeConfig
from vocalprobe.training.study.config import (
    DatasetSpec,
    StudyConfig,
    StudyError,
    backbone_key,
    backbone_label,
)
from vocalprobe.training.study.report import write_report
from vocalprobe.training.study.results import (
    CLIPS_FILE,
    FUSION_FILE,
    PRECISION_FILE,
    RESULT_FORMAT,
    STUDY_CONFIG_FILE,
    DatasetInfo,
    FusionResult,
    LayerChoice,
    ProbeResult,
    StudySummary,
    best_probe_stem,
    fusion_dir,
    probe_name,
    read_json,
    run_dir,
    with_suffix,
    write_json,
    write_summary,
)


ENGINES = ("local", "ray")


def run_study(config: StudyConfig, *, progress: bool = True, write_outputs: bool = True, engine: str = "local",
              address: str | None = None, say=None) -> StudySummary:
    """Run (or resume) a study; returns its summary and, with ``write_outputs``, writes the report files.

    ``engine="ray"``: the missing features are first extracted as Ray tasks (``training.extract_ray``) into the
    feature cache, on the cluster at ``address`` (default: a local Ray on this machine's cores); the probes then
    train here, as with the local engine, from the cache. ``say(text)`` hears each dataset's warnings (a leaking
    split, too few Test clips, a class/source confound) before its features are extracted.
    """
    from vocalprobe.runtime.datasets.audit import audit, dataset_origin
    from vocalprobe.training.backbones import resolve_device

    if engine not in ENGINES:
        raise StudyError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / STUDY_CONFIG_FILE, config.to_toml())
    probe = replace(config.probe, device=str(resolve_device(config.device)))  # the one device of the whole study
    if engine == "ray":
        extract_with_ray(config, probe, address=address, progress=progress)

    datasets: list[DatasetInfo] = []
    results: list[ProbeResult] = []
    choices: list[LayerChoice] = []
    fusion: list[FusionResult] = []
    for spec in config.datasets:
        manifest = read_manifest(spec.manifest)  # data
        check_splits(manifest, spec)
        warnings = audit(manifest)
        if manifest.unused_columns:
            warnings.append(f"column(s) {', '.join(manifest.unused_columns)} of the manifest are kept but not used")
        for text in warnings:
            if say is not None:
                say(f"warning: dataset {spec.name}: {text}")
        runs = [BackboneRun(config, spec, manifest, name, probe, progress=progress) for name in config.backbones]
        spec_choices = []
        for run in runs:
            run.ensure_probes()  # features and probes: only what is missing
            results += run.results
            spec_choices.append(choose_layer(run))  # choice
        choices += spec_choices
        fusion.append(fuse(runs, spec_choices))  # fusion
        datasets.append(DatasetInfo(spec.name, str(spec.manifest), manifest.labels, runs[-1].clip_counts(),
                                    [f for run in runs for f in run.failed()], dataset_origin(spec.manifest),
                                    warnings))

    summary = StudySummary(config.to_dict(), datasets, results, choices, fusion)  # report
    write_summary(out, summary)
    if write_outputs:
        write_report(out, summary)
    return summary


def _needs_cache(config: StudyConfig, what: str) -> None:
    if config.cache_dir is None:
        raise StudyError(f"{what} writes the features into the feature cache; set cache_dir in the study config")


def extract_shard(config: StudyConfig, shard: Shard, *, progress: bool = True) -> None:
    """``study --shard i/n``: shard i/n of every (dataset, backbone)'s features into the cache, and no probe (they
    need every clip). Once every shard has run, the study without ``--shard`` trains from the cache."""
    from vocalprobe.training.backbones import resolve_device

    _needs_cache(config, f"--shard {shard}")
    probe = replace(config.probe, device=str(resolve_device(config.device)))
    for spec in config.datasets:
        manifest = read_manifest(spec.manifest)
        check_splits(manifest, spec)
        for name in config.backbones:
            BackboneRun(config, spec, manifest, name, probe, progress=progress).feature_set(shard)


def extract_with_ray(config: StudyConfig, probe: ProbeConfig, *, address: str | None = None,
                     progress: bool = True) -> None:
    """The features every (dataset, backbone) still needs, as Ray tasks of (backbone, dataset, shard) units."""
    from vocalprobe.runtime.engine.ray_engine import connect
    from vocalprobe.training.extract_ray import extract_on_ray, make_units, shards_per_pair

    _needs_cache(config, "--engine ray")
    pairs = []
    for spec in config.datasets:
        manifest = read_manifest(spec.manifest)
        check_splits(manifest, spec)
        pairs += [(name, spec.manifest) for name in config.backbones
                  if BackboneRun(config, spec, manifest, name, probe, progress=progress).needs_features()]
    if not pairs:
        return
    ray = connect(address)
    units = make_units(pairs, shards_per_pair(ray), cache_dir=config.cache_dir, layers=config.layers,
                       chunk_seconds=config.chunk_seconds, batch_size=config.batch_size, dtype=config.dtype)
    extract_on_ray(units)


def check_splits(manifest: Manifest, spec: DatasetSpec) -> None:
    name, path = spec.name, spec.manifest
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


def _digest(obj: Any) -> str:
    return json_sha256(obj)[:16]


@dataclass
class ClipTable:
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


@dataclass
class BackboneRun:
    """One dataset x backbone of a study: what it reads, where it writes, and what it has found so far."""

    config: StudyConfig
    dataset: DatasetSpec
    manifest: Manifest
    backbone: str  # as given in the config
    probe: ProbeConfig  # the study's probe settings, on the resolved device
    progress: bool = True
    table: ClipTable | None = None  # set by ensure_probes
    results: list[ProbeResult] = field(default_factory=list)  # per layer x seed, set by ensure_probes
    _test_proba: dict[tuple[int, int], np.ndarray] = field(default_factory=dict, repr=False)  # trained this run

    def __post_init__(self) -> None:
        self.label = backbone_label(self.backbone)
        self.run_dir = run_dir(self.config.out_dir, self.dataset.name, self.label)
        c = self.config
        data_key = {"manifest": self.manifest.content_hash(), "backbone": backbone_key(self.backbone),
                    "chunk_seconds": c.chunk_seconds, "format": RESULT_FORMAT,
                    **({"dtype": c.dtype} if c.dtype != "float32" else {})}
        self.key = _digest({**data_key, "layers": c.layers})  # the features (and so clips.json) of this run
        # a probe depends on its layer's features, not on which other layers were extracted with it
        self._probe_key_base = {"data": _digest(data_key), "bootstrap": c.bootstrap_resamples,
                                "probe": {k: v for k, v in self.probe.to_dict().items()
                                          if k not in {"device", "seed", "eval_batch_size"}}}

    # -- where --------------------------------------------------------------------------------------------------------

    def probe_stem(self, layer: int, seed: int) -> Path:
        return self.run_dir / probe_name(layer, seed)

    def proba_path(self, layer: int, seed: int) -> Path:
        return with_suffix(self.probe_stem(layer, seed), ".test_proba.npy")

    def probe_key(self, seed: int) -> str:
        return _digest({**self._probe_key_base, "seed": seed})

    # -- features and probes ------------------------------------------------------------------------------------------

    def needs_features(self) -> bool:
        """Some (layer, seed) probe is not finished (or the clip table is of other settings): features are needed."""
        saved = read_json(self.run_dir / CLIPS_FILE)
        self.table = ClipTable(**saved) if saved is not None and saved.get("key") == self.key else None
        return self.table is None or bool(self._missing())

    def ensure_probes(self) -> None:
        """Train every (layer, seed) probe that is not finished yet, extracting features only when one is missing."""
        if self.needs_features():
            features, self.table = self._extract()
            write_json(self.run_dir / CLIPS_FILE, asdict(self.table))
            self._train(features, self._missing())
        seeds = self.config.seed_list
        self.results = [self._saved_result(layer, seed) for layer in self.table.layers for seed in seeds]

    def _saved_result(self, layer: int, seed: int) -> ProbeResult:
        return from_record(ProbeResult, read_json(with_suffix(self.probe_stem(layer, seed), ".json"))["result"])

    def _missing(self) -> list[tuple[int, int]]:
        return [(layer, seed) for layer in self.table.layers for seed in self.config.seed_list
                if not self._is_done(layer, seed)]

    def _is_done(self, layer: int, seed: int) -> bool:
        stem = self.probe_stem(layer, seed)
        data = read_json(with_suffix(stem, ".json"))
        return (data is not None and data.get("key") == self.probe_key(seed)
                and with_suffix(stem, ".test_proba.npy").is_file() and with_suffix(stem, ".safetensors").is_file())

    def feature_set(self, shard: Shard | None = None):
        """Load the backbone and extract the requested layers of every clip (of ``shard``) once, through the cache:
        (``FeatureSet``, backbone, layers)."""
        from vocalprobe.training.backbones import load_backbone
        from vocalprobe.training.extract import extract_features

        c = self.config
        backbone = load_backbone(self.backbone, device=self.probe.device)
        layers = list(range(backbone.num_layers + 1)) if c.layers is None else list(c.layers)
        too_deep = [layer for layer in layers if layer > backbone.num_layers]
        if too_deep:
            raise StudyError(f"{backbone.name} has layers 0..{backbone.num_layers}; cannot probe layer(s) {too_deep}")
        fs = extract_features(self.features_manifest(), backbone, layers=layers, device=self.probe.device,
                              cache_dir=c.cache_dir, chunk_seconds=c.chunk_seconds, batch_size=c.batch_size,
                              dtype=c.dtype, progress=self.progress, shard=shard)
        return fs, backbone, layers

    def features_manifest(self) -> Manifest:
        """The manifest the features are extracted (and cached) from; a fold's run uses one without splits, so
        every fold reads the same cache entry."""
        return self.manifest

    def _extract(self) -> tuple[np.ndarray, ClipTable]:
        """Every clip's features (n, n_layers, 2D), and the clip table."""
        fs, backbone, layers = self.feature_set()
        if fs.precision is not None:  # reduced precision: keep the measured difference to float32 beside the probes
            write_json(self.run_dir / PRECISION_FILE, fs.precision)
        failed = [{"path": f.path, "problem": f.error} for f in fs.failed]
        kind = backbone.spec.kind if backbone.spec is not None else (
            "untrained" if getattr(backbone.config, "vocalprobe_untrained", False) else "other")
        identity = backbone.identity()
        identity.pop("config", None)
        table = ClipTable(key=self.key, layers=layers, rows=[int(r) for r in fs.rows],
                          labels=[int(y) for y in fs.labels],
                          splits=[self.manifest.rows[int(r)].split or "" for r in fs.rows], failed=failed,
                          backbone=identity, kind=kind, n_features=int(fs.features.shape[2]))
        for split in SPLITS:
            if len(table.index(split)) == 0:
                raise StudyError(f"dataset {self.dataset.name} with {backbone.name}: no readable {split} clips "
                                 f"({len(failed)} clip(s) failed, e.g. {failed[:1]})")
        return np.asarray(fs.features, dtype=np.float32), table

    def _train(self, features: np.ndarray, todo: Sequence[tuple[int, int]]) -> None:
        """Train the ``todo`` probes on ``features`` (n_clips, n_layers, 2D) all at once (``probe_batched``), then
        score and save each; a probe's files are written as soon as its group has finished."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from vocalprobe.training.probe_batched import ProbeJob, fit_probes

        if not todo:
            return
        table = self.table
        labels = np.asarray(table.labels, dtype=np.int64)
        train, val = table.index("train"), table.index("val")
        layer_of = [table.layers.index(layer) for layer, _ in todo]
        jobs = [ProbeJob(index, seed) for index, (_, seed) in zip(layer_of, todo)]
        what = f"probes {self.dataset.name} / {self.label}"
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, disable=not self.progress, transient=False) as bar:
            task = bar.add_task(what, total=len(todo))

            def save(i: int, clf) -> None:  # as soon as its group has finished: a stopped study keeps it
                layer, seed = todo[i]
                self._save_one(features[:, layer_of[i], :], layer, seed, clf)  # (n_clips, 2D)
                bar.advance(task)

            fit_probes(features, labels, train=train, val=val, jobs=jobs, config=self.probe,
                       n_classes=len(self.manifest.labels), on_fitted=save)

    def _save_one(self, x: np.ndarray, layer: int, seed: int, clf) -> None:
        """Score a trained probe on Val and Test and save it, its Test posteriors and its result."""
        from vocalprobe.training.probe import ProbeInfo, save_probe

        table, ds = self.table, self.dataset
        labels = np.asarray(table.labels, dtype=np.int64)
        train, val, test = (table.index(s) for s in ("train", "val", "test"))
        probe = clf.config
        val_uar = clf.score(x[val], labels[val])
        proba = clf.predict_proba(x[test], layer=layer)  # (n_test, n_classes)
        y_test = labels[test]
        pred = proba.argmax(1)  # decided at full precision; the posteriors are kept as float32
        test_uar = uar(y_test, pred)
        ci = bootstrap_uar_ci(y_test, pred, n_resamples=self.config.bootstrap_resamples, seed=seed)
        result = ProbeResult(ds.name, self.label, layer, seed, val_uar, test_uar, ci[0], ci[1], clf.best_epoch_,
                             len(clf.history_), len(train), len(val), len(test))
        info = ProbeInfo(backbone=self.backbone, backbone_id=table.backbone.get("source", self.backbone),
                         backbone_revision=table.backbone.get("revision"),
                         backbone_fingerprint=table.backbone.get("fingerprint"), layer=layer,
                         labels=tuple(self.manifest.labels), n_features=x.shape[1],
                         hidden_sizes=self.probe.hidden_sizes, val_uar=val_uar, test_uar=test_uar, seed=seed,
                         dataset=ds.name, probe_config=probe.to_dict())
        stem = self.probe_stem(layer, seed)
        save_probe(stem, clf.model_, info)
        self._test_proba[(layer, seed)] = proba.astype(np.float32)
        atomic_save_npy(self.proba_path(layer, seed), self._test_proba[(layer, seed)])
        # the key is written last: a probe counts as done only when all its files exist
        write_json(with_suffix(stem, ".json"), {
            "key": self.probe_key(seed), "result": to_record(result),
            "history": [asdict(h) for h in clf.history_], "stopped_early": clf.stopped_early_})

    # -- what the choice and the fusion need --------------------------------------------------------------------------

    def test_proba(self, layer: int, seed: int) -> np.ndarray:
        """Test posteriors (n_test, n_classes) of one probe, in this run's test-row order: from memory when it was
        trained in this run, else from its file."""
        if (layer, seed) not in self._test_proba:
            self._test_proba[(layer, seed)] = np.load(self.proba_path(layer, seed), allow_pickle=False)
        return self._test_proba[(layer, seed)]

    def test_rows(self) -> np.ndarray:
        return np.asarray(self.table.rows, np.int64)[self.table.index("test")]

    def clip_counts(self) -> dict[str, int]:
        return {s: int(len(self.table.index(s))) for s in SPLITS}

    def failed(self) -> list[dict[str, str]]:
        return [{"backbone": self.label, **f} for f in self.table.failed]


def _argmax_lowest(values: Sequence[float]) -> int:
    """Index of the maximum; ties go to the first (the lower layer)."""
    best = max(values)
    return next(i for i, v in enumerate(values) if v == best)


def choose_layer(run: BackboneRun) -> LayerChoice:
    """Best layer on mean Val UAR (ties -> lower layer); save its best-seed probe and Test posteriors."""
    table, out = run.table, run.config.out_dir
    by = {(r.layer, r.seed): r for r in run.results}
    seeds = run.config.seed_list
    val = np.array([[by[(layer, s)].val_uar for s in seeds] for layer in table.layers])  # (n_layers, n_seeds)
    test = np.array([[by[(layer, s)].test_uar for s in seeds] for layer in table.layers])
    val_mean, test_mean = val.mean(1), test.mean(1)
    best = table.layers[_argmax_lowest(list(val_mean))]
    best_test = table.layers[_argmax_lowest(list(test_mean))]
    seed = seeds[_argmax_lowest(list(val[table.layers.index(best)]))]

    stem = best_probe_stem(out, run.dataset.name, run.label)
    src = run.probe_stem(best, seed)
    for suffix in (".safetensors", ".json"):
        _copy_atomic(with_suffix(src, suffix), with_suffix(stem, suffix))
    posteriors = with_suffix(stem, ".test_posteriors.npy")
    _copy_atomic(run.proba_path(best, seed), posteriors)
    atomic_save_npy(with_suffix(stem, ".test_rows.npy"), run.test_rows())
    atomic_save_npy(with_suffix(stem, ".test_labels.npy"), np.asarray(table.labels, np.int64)[table.index("test")])
    return LayerChoice(
        dataset=run.dataset.name, backbone=run.label, backbone_name=run.backbone, kind=table.kind,
        layers=tuple(table.layers), val_mean=tuple(float(v) for v in val_mean),
        val_std=tuple(float(v) for v in val.std(1)), test_mean=tuple(float(v) for v in test_mean),
        test_std=tuple(float(v) for v in test.std(1)), best_layer=best, best_layer_on_test=best_test,
        exported_seed=seed, probe_path=str(with_suffix(stem, ".safetensors").relative_to(out)),
        posteriors_path=str(posteriors.relative_to(out)))


def _copy_atomic(src: Path, dst: Path) -> None:
    with atomic_open(dst, "wb") as out, src.open("rb") as handle:
        shutil.copyfileobj(handle, out)


def fuse(runs: Sequence[BackboneRun], choices: Sequence[LayerChoice]) -> FusionResult:
    """Mean of the best-on-Val probes' Test posteriors over backbones, per seed; scored like any probe."""
    config, dataset = runs[0].config, runs[0].dataset.name
    out = config.out_dir
    test_rows = [run.test_rows() for run in runs]
    common = test_rows[0]
    for rows in test_rows[1:]:
        common = np.intersect1d(common, rows)  # clips every backbone could read
    common = np.sort(common)
    label_of = dict(zip(runs[0].table.rows, runs[0].table.labels))
    y = np.array([label_of[int(r)] for r in common], dtype=np.int64)

    folder = fusion_dir(out, dataset)
    atomic_save_npy(folder / "test_rows.npy", common)
    atomic_save_npy(folder / "test_labels.npy", y)
    scores, cis, posterior_paths, sources = [], [], [], []
    confusion = None
    for seed in config.seed_list:
        stack = []
        for run, choice, rows in zip(runs, choices, test_rows):
            position = {int(r): i for i, r in enumerate(rows)}
            stack.append(run.test_proba(choice.best_layer, seed)[[position[int(r)] for r in common]])
        fused = np.mean(np.stack(stack), axis=0).astype(np.float32)  # (n_common, n_classes)
        pred = fused.argmax(1)
        scores.append(uar(y, pred))
        cis.append(bootstrap_uar_ci(y, pred, n_resamples=config.bootstrap_resamples, seed=seed))
        path = folder / f"s{seed}.test_posteriors.npy"
        atomic_save_npy(path, fused)
        posterior_paths.append(str(path.relative_to(out)))
        sources.append(tuple(str(run.proba_path(choice.best_layer, seed).relative_to(out))
                             for run, choice in zip(runs, choices)))
        cm = confusion_matrix(y, pred, fused.shape[1])
        confusion = cm if confusion is None else confusion + cm
    result = FusionResult(
        dataset=dataset, backbones=tuple(c.backbone for c in choices), layers=tuple(c.best_layer for c in choices),
        seeds=tuple(config.seed_list), test_uar=tuple(float(s) for s in scores),
        test_ci=tuple((float(a), float(b)) for a, b in cis), mean=float(np.mean(scores)), std=float(np.std(scores)),
        posteriors=tuple(posterior_paths), sources=tuple(sources),
        rows=str((folder / "test_rows.npy").relative_to(out)),
        labels=str((folder / "test_labels.npy").relative_to(out)),
        confusion=tuple(tuple(int(v) for v in r) for r in confusion))
    write_json(folder / FUSION_FILE, to_record(result))
    return result
