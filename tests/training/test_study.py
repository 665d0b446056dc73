"""End to end: a small study on tiny real checkpoints and synthetic tones; its outputs, fusion, re-runs and CLI."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from vocalprobe.runtime.core.manifest import ManifestRow, read_manifest, write_manifest
from vocalprobe.runtime.core.metrics import uar
from vocalprobe.training.study.config import DatasetSpec, StudyConfig, StudyError, dataset_from_manifest, parse_layers
from vocalprobe.training.study.results import load_summary
from vocalprobe.training.study.runner import run_study

ROOT = Path(__file__).resolve().parents[2]
CALLS = {"chirp": 500.0, "hoot": 1500.0, "trill": 4000.0}
SPLITS = ["train"] * 8 + ["val"] * 4 + ["test"] * 4
SEEDS = 2


def make_tones(root: Path, *, with_splits: bool = True) -> Path:
    """Three call types (tones at 0.5, 1.5, 4 kHz with jitter and noise) at mixed sample rates, 16 clips each."""
    rng = np.random.default_rng(0)
    rows = []
    for label, freq in CALLS.items():
        for i, split in enumerate(SPLITS):
            sr = (16_000, 22_050, 48_000)[i % 3]
            n = int(sr * rng.uniform(0.2, 0.9))
            t = np.arange(n) / sr
            x = 0.5 * np.sin(2 * np.pi * freq * (1 + 0.05 * rng.normal()) * t) + 0.05 * rng.normal(size=n)
            path = root / "clips" / f"{label}_{i:02d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(path), x.astype(np.float32), sr)
            rows.append(ManifestRow(path.relative_to(root).as_posix(), label, split=split if with_splits else None))
    return write_manifest(root / "manifest.csv", rows) and root / "manifest.csv"


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_checkpoints):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("study")
    manifest = make_tones(root / "tones")
    config = StudyConfig(name="small", datasets=(DatasetSpec("tones", manifest),),
                         backbones=(str(tiny_checkpoints["hubert"]), str(tiny_checkpoints["wav2vec2"])),
                         seeds=SEEDS, device="cpu", out_root=root / "studies", cache_dir=root / "cache",
                         bootstrap_resamples=100)
    summary = run_study(config, progress=False)
    return config, summary


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


#: A summary.json of vocalprobe 0.9.0 (hand-written to_dict/from_dict), as compact JSON; the file it wrote was this
#: with indent=2 and sorted keys, whose sha256 is OLD_SUMMARY_SHA256.
OLD_SUMMARY = (
    '{"choices": [{"backbone": "hubert", "backbone_name": "/tmp/m/hubert", "best_layer": 1, "best_layer_on_test": 1'
    ', "dataset": "tones", "exported_seed": 0, "kind": "untrained", "layers": [0, 1], "posteriors_path": "probes/to'
    'nes/hubert.test_posteriors.npy", "probe_path": "probes/tones/hubert.safetensors", "test_mean": [0.416666666666'
    '66663, 0.75], "test_std": [0.05, 0.0], "val_mean": [0.5, 0.8333333333333334], "val_std": [0.0, 0.1]}], "config'
    '": {"backbones": ["a", "b"], "layers": "all", "name": "small", "probe": {"hidden_sizes": [128, 64, 32]}}, "dat'
    'asets": [{"failed": [{"backbone": "hubert", "path": "clips/broken.wav", "problem": "not audio"}], "labels": ["'
    'chirp", "hoot"], "manifest": "/tmp/tones/manifest.csv", "n_clips": {"test": 12, "train": 24, "val": 12}, "name'
    '": "tones"}], "fusion": [{"backbones": ["hubert", "wav2vec2"], "confusion": [[4, 0], [1, 3]], "dataset": "tone'
    's", "labels": "fusion/tones/test_labels.npy", "layers": [1, 2], "mean": 0.8333333333333333, "posteriors": ["fu'
    'sion/tones/s0.test_posteriors.npy", "fusion/tones/s1.test_posteriors.npy"], "rows": "fusion/tones/test_rows.np'
    'y", "seeds": [0, 1], "sources": [["runs/tones/hubert/L01_s0.test_proba.npy", "runs/tones/wav2vec2/L02_s0.test_'
    'proba.npy"], ["runs/tones/hubert/L01_s1.test_proba.npy", "runs/tones/wav2vec2/L02_s1.test_proba.npy"]], "std":'
    ' 0.08333333333333331, "test_ci": [[0.5, 1.0], [0.6666666666666666, 1.0]], "test_uar": [0.75, 0.916666666666666'
    '6]}], "results": [{"backbone": "hubert", "best_epoch": 7, "dataset": "tones", "epochs_run": 18, "layer": 1, "n'
    '_test": 12, "n_train": 24, "n_val": 12, "seed": 0, "test_ci_high": 1.0, "test_ci_low": 0.5, "test_uar": 0.75, '
    '"val_uar": 0.8333333333333334}], "vocalprobe_version": "0.9.0"}'
)
OLD_SUMMARY_SHA256 = "27e1d0e149f19fb7ed37f6d00d97aa9773a91d4a9fffebdebb9bea145a47292e"


def test_summary_written_before_loads_and_rewrites_byte_identically(tmp_path):
    import hashlib

    from vocalprobe.training.study.results import write_summary

    old = json.dumps(json.loads(OLD_SUMMARY), indent=2, sort_keys=True) + "\n"
    assert hashlib.sha256(old.encode()).hexdigest() == OLD_SUMMARY_SHA256
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "summary.json").write_text(old)
    summary = load_summary(tmp_path / "old")
    fusion, choice = summary.fusion[0], summary.choices[0]
    assert fusion.test_ci == ((0.5, 1.0), (0.6666666666666666, 1.0)) and fusion.confusion == ((4, 0), (1, 3))
    assert isinstance(fusion.sources[0], tuple) and choice.layers == (0, 1) and choice.score(1) == (0.75, 0.0)
    assert summary.datasets[0].n_clips == {"test": 12, "train": 24, "val": 12} and summary.vocalprobe_version == "0.9.0"
    write_summary(tmp_path / "new", summary)
    grown = json.loads(old)  # an old summary gains only the datasets' origin and warnings, at their defaults
    grown["datasets"][0].update(origin="unknown", warnings=[])
    assert (tmp_path / "new" / "summary.json").read_text() == json.dumps(grown, indent=2, sort_keys=True) + "\n"
    assert load_summary(tmp_path / "new") == summary


def test_unreadable_summary_is_one_study_error(tmp_path):
    with pytest.raises(StudyError, match="not found: run the study first"):
        load_summary(tmp_path)
    (tmp_path / "summary.json").write_text('{"config": {}, "datasets": [], "results": [{"layer": 1}]}')
    with pytest.raises(StudyError, match="not a study summary.*re-run the study"):
        load_summary(tmp_path)


def test_outputs_exist_and_agree(study):
    config, summary = study
    out = config.out_dir
    for name in ("results.csv", "best_layers.csv", "fusion.csv", "table3.md", "report.md", "summary.json",
                 "study.toml", "figures/layers_tones.png", "figures/fig5_fusion_confusion.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.pkl"))
    import matplotlib.image

    image = matplotlib.image.imread(out / "figures" / "layers_tones.png")
    assert image.shape[0] > 200 and image.shape[1] > 400 and image.std() > 0  # a real, non-blank plot
    # no AVES/HuBERT registry backbones here, so no Fig. 3 / Fig. 4
    assert not (out / "figures" / "fig3_aves_vs_hubert.png").exists()

    rows = read_csv(out / "results.csv")
    assert len(rows) == 1 * 2 * 3 * SEEDS  # dataset x backbone x layer (0..2) x seed
    assert {(r["backbone"], int(r["layer"]), int(r["seed"])) for r in rows} == {
        (b, layer, s) for b in ("hubert", "wav2vec2") for layer in range(3) for s in range(SEEDS)}
    for r in rows:
        assert float(r["test_ci_low"]) <= float(r["test_uar"]) + 1e-9 <= float(r["test_ci_high"]) + 2e-9
        assert (int(r["n_train"]), int(r["n_val"]), int(r["n_test"])) == (24, 12, 12)
        assert r["type"] == "untrained"

    # the best layer is the highest mean Val UAR (ties -> lower layer); the saved probe is that layer
    from vocalprobe.training.probe import load_probe

    manifest = read_manifest(config.datasets[0].manifest)
    for choice in summary.choices:
        mine = [r for r in rows if r["backbone"] == choice.backbone]
        val = [np.mean([float(r["val_uar"]) for r in mine if int(r["layer"]) == layer]) for layer in range(3)]
        test = [np.mean([float(r["test_uar"]) for r in mine if int(r["layer"]) == layer]) for layer in range(3)]
        assert choice.best_layer == int(np.argmax(np.round(val, 6)))
        assert choice.best_layer_on_test == int(np.argmax(np.round(test, 6)))
        clf, info = load_probe(out / choice.probe_path)
        assert info.layer == choice.best_layer and info.labels == tuple(manifest.labels)
        assert info.backbone == choice.backbone_name and info.dataset == "tones" and info.n_features == 64
        assert info.backbone_fingerprint and info.seed == choice.exported_seed
        assert info.val_uar == pytest.approx(max(float(r["val_uar"]) for r in mine
                                                 if int(r["layer"]) == choice.best_layer))


def test_probes_learn_the_tones_well_above_chance(study):
    _, summary = study
    chance = 1 / len(CALLS)
    for choice in summary.choices:
        assert max(choice.val_mean) > chance + 0.3
    assert summary.fusion[0].mean > chance + 0.3


def test_saved_probe_reproduces_its_saved_posteriors(study):
    """The exported probe is the one that was scored: applied to the clips' features it gives the saved posteriors."""
    from vocalprobe.training.extract import extract_features
    from vocalprobe.training.probe import load_probe

    config, summary = study
    out = config.out_dir
    choice = summary.choices[0]
    fs = extract_features(config.datasets[0].manifest, choice.backbone_name, layers=list(choice.layers),
                          device="cpu", cache_dir=config.cache_dir, progress=False)
    clf, info = load_probe(out / choice.probe_path)
    rows = np.load(out / choice.posteriors_path.replace(".test_posteriors.npy", ".test_rows.npy"))
    position = {int(r): i for i, r in enumerate(fs.rows)}
    x = fs.layer(info.layer)[[position[int(r)] for r in rows]]
    np.testing.assert_allclose(clf.predict_proba(x, layer=info.layer), np.load(out / choice.posteriors_path),
                               atol=1e-6)


def test_fusion_is_the_mean_of_the_saved_posteriors(study):
    config, summary = study
    out = config.out_dir
    fusion = summary.fusion[0]
    assert fusion.layers == tuple(c.best_layer for c in summary.choices)
    labels = np.load(out / fusion.labels)
    for seed, fused_path, sources, score in zip(fusion.seeds, fusion.posteriors, fusion.sources, fusion.test_uar):
        per_backbone = [np.load(out / "runs" / "tones" / c.backbone / f"L{c.best_layer:02d}_s{seed}.test_proba.npy")
                        for c in summary.choices]
        assert list(sources) == [f"runs/tones/{c.backbone}/L{c.best_layer:02d}_s{seed}.test_proba.npy"
                                 for c in summary.choices]
        fused = np.load(out / fused_path)
        np.testing.assert_allclose(fused, np.mean(per_backbone, axis=0), atol=1e-7)
        assert score == pytest.approx(uar(labels, fused.argmax(1)))
    # the posteriors saved beside each exported probe are its seed's run posteriors
    for c in summary.choices:
        run = np.load(out / "runs" / "tones" / c.backbone / f"L{c.best_layer:02d}_s{c.exported_seed}.test_proba.npy")
        np.testing.assert_array_equal(np.load(out / c.posteriors_path), run)
    fused_rows = {(r["dataset"], int(r["seed"])): float(r["test_uar"]) for r in read_csv(out / "fusion.csv")}
    assert fused_rows == {("tones", s): pytest.approx(v) for s, v in zip(fusion.seeds, fusion.test_uar)}
    assert int(np.sum(fusion.confusion)) == len(labels) * SEEDS


def _first_table(text: str) -> list[list[str]]:
    block = text.split("## Best layer chosen on Val")[1].split("## Best layer chosen on Test")[0]
    lines = [line for line in block.splitlines() if line.startswith("|")][2:]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def _value(cell: str) -> float:
    return float(re.search(r"\d+\.\d+", cell).group())


def test_table3_bold_marks_the_max_and_underline_the_second(study):
    config, summary = study
    text = (config.out_dir / "table3.md").read_text()
    rows = _first_table(text)
    assert [r[1] for r in rows] == ["hubert", "wav2vec2", ""] and rows[-1][0] == "Fusion"
    values = [_value(r[2]) for r in rows]
    distinct = sorted(set(values), reverse=True)
    for row, value in zip(rows, values):
        cell = row[2]
        assert cell.startswith("**") == (value == distinct[0]), cell
        assert cell.startswith("<u>") == (len(distinct) > 1 and value == distinct[1]), cell
    # each backbone's cell is its best-on-Val layer's mean Test UAR, with the layer marked
    for row, choice in zip(rows, summary.choices):
        assert f"(L{choice.best_layer})" in row[2]
        assert _value(row[2]) == pytest.approx(round(choice.score(choice.best_layer)[0] * 100, 2))
    assert "Best layer chosen on Test (as the paper's Table III; optimistic)" in text


def test_ranking_marks_in_a_constructed_table():
    from vocalprobe.training.study.report import _ranks

    assert _ranks([0.5, 0.9, 0.7, 0.9, 0.1]) == [2, 0, 1, 0, 2]


def test_report_links_every_output(study):
    config, summary = study
    report = (config.out_dir / "report.md").read_text()
    assert "Untrained backbones" in report
    for link in re.findall(r"\]\(([^)]+)\)", report):
        assert (config.out_dir / link).is_file(), link
    for choice in summary.choices:
        assert choice.probe_path in report


def test_rerun_over_a_finished_study_trains_nothing_and_rewrites_the_same_bytes(study, monkeypatch):
    """Resuming is free and exact: no backbone, no probe fit, and every file of the study folder is byte-identical."""
    config, summary = study
    before = {p: p.read_bytes() for p in config.out_dir.rglob("*") if p.is_file()}

    import vocalprobe.training.backbones as backbones
    import vocalprobe.training.probe_batched as probe_batched
    from vocalprobe.training.probe import ProbeClassifier

    def refuse(*args, **kwargs):
        raise AssertionError("a finished study must not load a backbone or train a probe again")

    monkeypatch.setattr(backbones, "load_backbone", refuse)
    monkeypatch.setattr(ProbeClassifier, "fit", refuse)
    monkeypatch.setattr(probe_batched, "fit_probes", refuse)
    again = run_study(config, progress=False)
    assert again == summary
    after = {p: p.read_bytes() for p in config.out_dir.rglob("*") if p.is_file()}
    assert set(after) == set(before)
    assert [p.relative_to(config.out_dir).as_posix() for p in before if after[p] != before[p]] == []
    assert (config.out_dir / "summary.json").read_bytes() == json.dumps(
        json.loads((config.out_dir / "summary.json").read_text()), indent=2, sort_keys=True).encode() + b"\n"


def test_rerun_reuses_finished_probes(study, monkeypatch):
    config, summary = study
    runs = config.out_dir / "runs"
    before = {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file()}

    import vocalprobe.training.backbones as backbones

    def no_loading(*args, **kwargs):
        raise AssertionError("a finished study must not load a backbone again")

    monkeypatch.setattr(backbones, "load_backbone", no_loading)
    again = run_study(config, progress=False)
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file()} == before
    assert again.results == summary.results and again.fusion == summary.fusion
    monkeypatch.undo()

    # drop one probe: only it is retrained, and the same seed gives the same probe
    victim = runs / "tones" / "hubert" / "L01_s1"
    old_proba = np.load(victim.with_name(victim.name + ".test_proba.npy"))
    victim.with_name(victim.name + ".json").unlink()
    import vocalprobe.training.probe_batched as probe_batched

    trained, fit_probes = [], probe_batched.fit_probes
    monkeypatch.setattr(probe_batched, "fit_probes",
                        lambda *a, **kw: trained.append(kw["jobs"]) or fit_probes(*a, **kw))
    third = run_study(config, progress=False)
    assert [[(job.layer, job.seed) for job in jobs] for jobs in trained] == [[(1, 1)]]  # only what is missing
    after = {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file()}
    changed = {p.name for p in after if after[p] != before.get(p)}
    assert changed <= {"L01_s1.json", "L01_s1.safetensors", "L01_s1.test_proba.npy", "clips.json"}
    assert "L01_s1.json" in changed
    np.testing.assert_array_equal(np.load(victim.with_name(victim.name + ".test_proba.npy")), old_proba)
    assert third.results == summary.results
    assert load_summary(config.out_dir).results == summary.results


def test_config_roundtrip_and_packaged_configs(study):
    config, _ = study
    assert StudyConfig.from_toml(config.out_dir / "study.toml") == config
    paper = StudyConfig.from_toml(ROOT / "configs" / "paper.toml")
    assert paper.backbones == ("aves-bio", "hubert", "wavlm", "wav2vec2", "wavlm-100h", "wav2vec2-100h",
                               "wav2vec2-960h")
    assert [d.name for d in paper.datasets] == ["IMV", "Watkins", "Abzaliev"]
    assert paper.layers is None and paper.probe == type(paper.probe)()

    from vocalprobe.training.study.default import default_study_config

    demo = default_study_config("/somewhere", seeds=1)
    assert not demo.untrained_backbones and demo.seeds == 1 and demo.name == "default"
    assert demo.datasets[0].manifest == Path("/somewhere/artifacts/data/synthetic/manifest.csv")
    assert [Path(b).name for b in demo.backbones] == ["tiny-hubert", "tiny-wav2vec2", "tiny-wavlm", "whisper-tiny.en"]


def test_config_errors(tmp_path):
    assert parse_layers("all") is None and parse_layers("0,3,6") == (0, 3, 6) and parse_layers("2-4") == (2, 3, 4)
    with pytest.raises(ValueError, match="layers must be"):
        parse_layers("top")
    (tmp_path / "bad.toml").write_text('name = "x"\nbackbones = ["hubert"]\nseed = 3\n')
    with pytest.raises(StudyError, match="unknown setting.*seed"):
        StudyConfig.from_toml(tmp_path / "bad.toml")
    with pytest.raises(StudyError, match="at least one dataset"):
        StudyConfig(name="x", datasets=(), backbones=("hubert",))
    # values that used to fail later, as a traceback from the TOML writer or the feature extractor
    (tmp_path / "nan.toml").write_text('name = "x"\nbackbones = ["hubert"]\ndatasets = ["m.csv"]\n'
                                       'chunk_seconds = nan\n')
    with pytest.raises(StudyError, match="chunk_seconds must be a positive number"):
        StudyConfig.from_toml(tmp_path / "nan.toml")
    with pytest.raises(StudyError, match="layers must be distinct"):
        StudyConfig(name="x", datasets=(DatasetSpec("d", Path("m.csv")),), backbones=("hubert",), layers=(1, 1))
    with pytest.raises(StudyError, match="batch_size must be"):
        StudyConfig(name="x", datasets=(DatasetSpec("d", Path("m.csv")),), backbones=("hubert",), batch_size=0)
    assert dataset_from_manifest("imv=data/x.csv") == DatasetSpec("imv", Path("data/x.csv"))
    assert dataset_from_manifest("data/watkins/manifest.csv").name == "watkins"


def test_unsplit_manifest_and_too_deep_layer_are_clear_errors(tmp_path, tiny_checkpoints):
    manifest = make_tones(tmp_path / "nosplit", with_splits=False)
    config = StudyConfig(name="x", datasets=(DatasetSpec("nosplit", manifest),),
                         backbones=(str(tiny_checkpoints["hubert"]),), out_root=tmp_path, device="cpu")
    with pytest.raises(StudyError, match="no split.*vocalprobe data split"):
        run_study(config, progress=False)
    split = make_tones(tmp_path / "split")
    config = StudyConfig(name="y", datasets=(DatasetSpec("split", split),), layers=(0, 5),
                         backbones=(str(tiny_checkpoints["hubert"]),), out_root=tmp_path, device="cpu", cache_dir=None)
    with pytest.raises(StudyError, match="layers 0..2; cannot probe layer"):
        run_study(config, progress=False)


def test_cli_flags_and_config_override(study, tmp_path, tiny_checkpoints):
    from typer.testing import CliRunner

    from vocalprobe.cli import app

    config, _ = study
    manifest = config.datasets[0].manifest
    runner = CliRunner()
    result = runner.invoke(app, ["study", "--data", f"tones={manifest}", "--backbone", str(tiny_checkpoints["wavlm"]),
                                 "--layers", "0,2", "--seeds", "1", "--device", "cpu", "--out", str(tmp_path),
                                 "--name", "cli", "--no-progress"])
    assert result.exit_code == 0, result.output
    # the terminal says what the report's top says: untrained backbones, small Test classes, wide CIs
    assert "Untrained backbones: wavlm" in result.output and "Synthetic data" not in result.output
    assert "fewer than 5 Test clips" in result.output and "points wide" in result.output
    rows = read_csv(tmp_path / "cli" / "results.csv")
    assert {(r["backbone"], int(r["layer"]), int(r["seed"])) for r in rows} == {("wavlm", 0, 0), ("wavlm", 2, 0)}

    # a config file, with --seeds and --name overriding it
    result = runner.invoke(app, ["study", "--config", str(config.out_dir / "study.toml"), "--seeds", "1",
                                 "--layers", "1", "--out", str(tmp_path), "--name", "from-config", "--no-progress"])
    assert result.exit_code == 0, result.output
    written = StudyConfig.from_toml(tmp_path / "from-config" / "study.toml")
    assert written.seeds == 1 and written.layers == (1,) and written.backbones == config.backbones

    result = runner.invoke(app, ["study", "--data", str(manifest)])
    assert result.exit_code == 1 and "without --backbone" in result.output

    # the Python API builds the same config (training/study/options.py) and runs the same study
    import vocalprobe

    report = vocalprobe.study(data=[f"tones={manifest}"], backbones=[str(tiny_checkpoints["wavlm"])], layers="0,2",
                              seeds=1, device="cpu", out=tmp_path, name="api")
    assert report == tmp_path / "api" / "report.md" and report.is_file()
    scores = [{k: v for k, v in r.items() if k != "seconds"} for r in read_csv(tmp_path / "api" / "results.csv")]
    assert scores == [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    with pytest.raises(StudyError, match="without --backbone"):
        vocalprobe.study(data=[str(manifest)])
    with pytest.raises(StudyError, match="--layers"):
        vocalprobe.study(data=[str(manifest)], backbones=["hubert"], layers="0-x")


def test_paper_figures_are_drawn_for_the_paper_backbones(study, tmp_path):
    """Fig. 3 and Fig. 4 appear when their backbones are in a study (real scores, relabelled as registry names)."""
    import dataclasses

    import matplotlib.image

    from vocalprobe.training.study.report import write_figures

    _, summary = study
    names = ["aves-bio", "hubert", "wav2vec2", "wav2vec2-100h"]
    base = summary.choices
    choices = [dataclasses.replace(base[i % len(base)], backbone=name, backbone_name=name)
               for i, name in enumerate(names)]
    relabelled = dataclasses.replace(summary, choices=choices)
    figures = dict((rel, caption) for caption, rel in write_figures(tmp_path / "figures", relabelled))
    assert set(figures) == {"figures/layers_tones.png", "figures/fig3_aves_vs_hubert.png",
                            "figures/fig4_finetuning.png", "figures/fig5_fusion_confusion.png"}
    for rel in figures:
        image = matplotlib.image.imread(tmp_path / rel)
        assert image.std() > 0


def test_unreadable_clip_is_reported_and_the_rest_finishes(tmp_path, tiny_checkpoints):
    root = tmp_path / "tones"
    manifest = make_tones(root)
    (root / "clips" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    loaded = read_manifest(manifest)
    write_manifest(manifest, list(loaded.rows) + [ManifestRow("clips/broken.wav", "hoot", split="train")])
    config = StudyConfig(name="broken", datasets=(DatasetSpec("tones", manifest),), layers=(0,), seeds=1,
                         backbones=(str(tiny_checkpoints["hubert"]),), out_root=tmp_path / "studies", device="cpu",
                         cache_dir=None, bootstrap_resamples=20)
    summary = run_study(config, progress=False)
    failed = summary.datasets[0].failed
    assert len(failed) == 1 and failed[0]["path"].endswith("broken.wav") and failed[0]["problem"]
    assert summary.datasets[0].n_clips == {"train": 24, "val": 12, "test": 12}
    assert "broken.wav" in (config.out_dir / "report.md").read_text()
    from vocalprobe.training.study.results import probe_checkpoint

    assert probe_checkpoint(config.out_dir, "tones", "hubert", 0, 0).is_file()


def test_reduced_precision_is_measured_and_saved(tmp_path, tiny_checkpoints):
    """--dtype bfloat16: probes train on bf16 features and the difference to float32 is kept beside them."""
    torch.set_num_threads(1)
    manifest = make_tones(tmp_path / "tones")
    config = StudyConfig(name="bf16", datasets=(DatasetSpec("tones", manifest),),
                         backbones=(str(tiny_checkpoints["hubert"]),), layers=(1,), seeds=1, device="cpu",
                         dtype="bfloat16", out_root=tmp_path / "studies", cache_dir=tmp_path / "cache",
                         bootstrap_resamples=20)
    run_study(config, progress=False)
    saved = list((tmp_path / "studies" / "bf16").rglob("precision.json"))
    assert len(saved) == 1
    precision = json.loads(saved[0].read_text())
    assert precision["dtype"] == "bfloat16" and 0 < precision["max_abs_diff"] < 1.0
    with pytest.raises(StudyError, match="dtype must be"):
        StudyConfig(name="x", datasets=(DatasetSpec("tones", manifest),), backbones=("hubert",), dtype="int8")


@pytest.mark.usefixtures("one_torch_thread")
def test_demo_study_with_a_backbone_it_cannot_build_is_one_line(tmp_path, monkeypatch):
    """The embedded study builds only tiny-<family> checkpoints: any other folder is a one-line error, through the
    CLI, before anything is generated."""
    from typer.testing import CliRunner

    from vocalprobe.cli import app
    from vocalprobe.training.study import default as default_study

    text = default_study.default_config_text().replace("artifacts/models/tiny-wavlm", "artifacts/models/whisper")
    monkeypatch.setattr(default_study, "default_config_text", lambda: text)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["study", "--no-progress"])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output and result.exception.__class__ is SystemExit
    assert "cannot build artifacts/models/whisper" in errors[0] and "vocalprobe study --backbone" in errors[0]
    assert not (tmp_path / "artifacts").exists()  # refused before the dataset or any checkpoint was written


@pytest.mark.parametrize("marker", ["legacy", "hashed"])
def test_demo_refuses_a_real_dataset_prepared_over_the_synthetic_folder(tmp_path, monkeypatch, marker):
    """`data prepare KIND SRC --out artifacts/data/synthetic` over a demo set: the demo must not run on it quietly."""
    from typer.testing import CliRunner

    from vocalprobe.cli import app
    from vocalprobe.runtime.datasets import synthetic

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "artifacts" / "data" / "synthetic"
    make_tones(folder)  # real-looking data: tones, not the generator's clips
    info = {"generator_version": synthetic.GENERATOR_VERSION, "seed": 42, "clips_per_class": 60,
            "field_minutes": 10.0, "stratify": True}
    if marker == "hashed":
        info["manifest_sha256"] = "0" * 64
    (folder / "synthetic.json").write_text(json.dumps(info))
    before = (folder / "manifest.csv").read_bytes()
    result = CliRunner().invoke(app, ["study", "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "is not the synthetic dataset the demo generates" in result.output
    assert (folder / "manifest.csv").read_bytes() == before
    assert not (tmp_path / "artifacts" / "models").exists()


def test_report_top_says_what_is_untrained_and_what_is_synthetic_from_facts(study):
    """The tones are real files of unknown origin, not the generator's: the banner must not call them synthetic;
    the tiny checkpoints' config says they are untrained; 4 Test clips per class and 12 in all are warned about."""
    config, summary = study
    report = (config.out_dir / "report.md").read_text()
    top = report.split("## Datasets")[0]
    assert "Untrained backbones" in top and "synthetic" not in top.lower()
    assert summary.datasets[0].origin == "unknown"
    assert "Warnings: read before trusting these scores" in top
    assert "3 class(es) have fewer than 5 Test clips" in top
    assert "95% CI is" in top and "points wide" in top


def test_audit_names_leaking_groups_and_confounds(tmp_path):
    from vocalprobe.runtime.datasets.audit import audit

    rows = [ManifestRow(f"{label}{i}.wav", label, split=split, group=f"{label}-site")
            for label in ("a", "b") for i, split in enumerate(["train"] * 6 + ["val"] * 2 + ["test"] * 5)]
    found = audit(write_manifest(tmp_path / "m.csv", rows))
    assert any(w.startswith("Test shares 2 of its 2 groups with Train") for w in found), found
    assert any(w.startswith("Val shares 2 of its 2 groups") for w in found), found
    assert any("confounded" in w and "single group" in w for w in found), found
    assert not any("fewer than 5 Test clips" in w for w in found)
    for i, label in enumerate(("a", "b")):  # one sample rate per class: the rate tells the classes apart
        for j in range(13):
            sf.write(str(tmp_path / f"{label}{j}.wav"), np.zeros(800, np.float32), (16_000, 22_050)[i])
    found = audit(read_manifest(tmp_path / "m.csv"))
    assert any("single sample rate no other class has" in w for w in found), found
