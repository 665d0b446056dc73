"""The MLP probe: learns, is deterministic, validates its input, saves and loads without pickle."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vocalprobe.runtime.core.errors import VocalprobeError
from vocalprobe.runtime.core.metrics import uar
from vocalprobe.training.probe import (
    MLPProbe,
    NotFittedError,
    ProbeCheckpointError,
    ProbeClassifier,
    ProbeConfig,
    ProbeInfo,
    ProbeInputError,
    checkpoint_paths,
    load_probe,
    save_probe,
)

N_CLASSES, N_FEATURES = 5, 24


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def blobs(n: int, *, seed: int, spread: float = 1.5):
    """Gaussian blobs around fixed class centres, offset and scaled so that z-scoring matters."""
    centres = np.random.default_rng(123).normal(size=(N_CLASSES, N_FEATURES))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_CLASSES, n)
    x = centres[y] + spread * rng.normal(size=(n, N_FEATURES))
    return (x * 40.0 + 300.0).astype(np.float32), y


@pytest.fixture(scope="module")
def data():
    return blobs(240, seed=0), blobs(80, seed=1), blobs(80, seed=2)


@pytest.fixture(scope="module")
def fitted(data):
    (xt, yt), (xv, yv), _ = data
    return ProbeClassifier(ProbeConfig(seed=3)).fit(xt, yt, xv, yv)


def test_paper_defaults():
    cfg = ProbeConfig()
    assert (cfg.hidden_sizes, cfg.learning_rate, cfg.batch_size, cfg.max_epochs) == ((128, 64, 32), 1e-3, 16, 30)
    assert (cfg.lr_factor, cfg.lr_patience, cfg.early_stopping_patience) == (0.1, 10, 10)
    model = MLPProbe(10, 3)
    kinds = [type(m).__name__ for m in model.blocks]
    assert kinds == ["Linear", "LayerNorm", "ReLU"] * 3
    assert [m.out_features for m in model.blocks if isinstance(m, torch.nn.Linear)] == [128, 64, 32]
    assert model.head.out_features == 3


def test_probe_learns_well_above_chance(data, fitted):
    _, _, (xs, ys) = data
    chance = 1.0 / N_CLASSES
    assert fitted.score(xs, ys) > 0.8 > chance + 0.5
    proba = fitted.predict_proba(xs)
    assert proba.shape == (len(xs), N_CLASSES) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    assert np.array_equal(fitted.predict(xs), proba.argmax(1))


def test_kept_checkpoint_is_the_best_val_epoch(data, fitted):
    (_, _), (xv, yv), _ = data
    best = max(h.val_uar for h in fitted.history_)
    assert fitted.best_val_uar_ == best
    assert fitted.history_[fitted.best_epoch_ - 1].val_uar == best
    assert fitted.history_.index(next(h for h in fitted.history_ if h.val_uar == best)) == fitted.best_epoch_ - 1
    assert fitted.score(xv, yv) == pytest.approx(best)


def test_early_stopping_after_patience(data):
    (xt, yt), (xv, yv), _ = data
    clf = ProbeClassifier(ProbeConfig(seed=0, early_stopping_patience=2, max_epochs=30)).fit(xt, yt, xv, yv)
    assert len(clf.history_) == clf.best_epoch_ + 2 or len(clf.history_) == 30
    assert clf.stopped_early_ == (len(clf.history_) < 30)


def test_z_score_uses_train_statistics(data, fitted):
    (xt, _), _, _ = data
    np.testing.assert_allclose(fitted.model_.mean.numpy(), xt.mean(0), rtol=1e-5)
    np.testing.assert_allclose(fitted.model_.std.numpy(), xt.std(0), rtol=1e-4)


def test_constant_feature_is_not_nan(data):
    (xt, yt), (xv, yv), (xs, _) = data
    xt, xv, xs = xt.copy(), xv.copy(), xs.copy()
    for x in (xt, xv, xs):
        x[:, 0] = 7.0
    clf = ProbeClassifier(ProbeConfig(seed=0, max_epochs=3)).fit(xt, yt, xv, yv)
    assert np.isfinite(clf.predict_proba(xs)).all()


def test_same_seed_same_probe_other_seed_other_probe(data):
    (xt, yt), (xv, yv), (xs, _) = data
    cfg = ProbeConfig(seed=11, max_epochs=4)
    a = ProbeClassifier(cfg).fit(xt, yt, xv, yv).predict_proba(xs)
    torch.manual_seed(999)  # the caller's global RNG state must not matter
    b = ProbeClassifier(cfg).fit(xt, yt, xv, yv).predict_proba(xs)
    c = ProbeClassifier(ProbeConfig(seed=12, max_epochs=4)).fit(xt, yt, xv, yv).predict_proba(xs)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_fit_leaves_global_rng_alone(data):
    (xt, yt), (xv, yv), _ = data
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    ProbeClassifier(ProbeConfig(max_epochs=1)).fit(xt, yt, xv, yv)
    assert torch.equal(torch.rand(3), expected)


def test_n_classes_covers_a_class_missing_from_train(data):
    (xt, yt), (xv, yv), _ = data
    clf = ProbeClassifier(ProbeConfig(max_epochs=1)).fit(xt, yt, xv, yv, n_classes=N_CLASSES + 2)
    assert clf.predict_proba(xv).shape == (len(xv), N_CLASSES + 2)


def test_not_fitted_error_message(data):
    _, _, (xs, ys) = data
    with pytest.raises(NotFittedError, match="ProbeClassifier instance is not fitted yet"):
        ProbeClassifier().predict_proba(xs)
    assert issubclass(NotFittedError, VocalprobeError)


def test_validators_name_expected_and_actual(data, fitted):
    (xt, yt), (xv, yv), (xs, ys) = data
    with pytest.raises(ProbeInputError, match=r"expected 24 features \(layer 9\), got 10"):
        fitted.predict_proba(xs[:, :10], layer=9)
    with pytest.raises(ProbeInputError, match="expected a 2-D array .* got shape \\(24,\\)"):
        fitted.predict_proba(xs[0])
    bad = xs.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ProbeInputError, match="1 clip\\(s\\) have NaN"):
        fitted.predict(bad)
    with pytest.raises(ProbeInputError, match="expected 240 labels \\(one per clip\\), got 239"):
        ProbeClassifier().fit(xt, yt[:-1], xv, yv)
    with pytest.raises(ProbeInputError, match="X_val: expected 24 features, got 23"):
        ProbeClassifier().fit(xt, yt, xv[:, 1:], yv)
    with pytest.raises(ProbeInputError, match="integer class indices"):
        ProbeClassifier().fit(xt, yt.astype(float), xv, yv)
    with pytest.raises(ProbeInputError, match="out of range for 3 classes"):
        ProbeClassifier().fit(xt, yt, xv, yv, n_classes=3)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        ProbeConfig(batch_size=0)


def test_score_is_uar_over_classes_present(fitted, data):
    _, _, (xs, ys) = data
    keep = ys != 0  # class 0 absent from the reference: it must not count
    assert fitted.score(xs[keep], ys[keep]) == pytest.approx(uar(ys[keep], fitted.predict(xs[keep])))


def _info(**kw):
    base = dict(backbone="hubert", backbone_id="facebook/hubert-base-ls960", backbone_revision="main", layer=9,
                labels=tuple(f"c{i}" for i in range(N_CLASSES)), n_features=N_FEATURES, hidden_sizes=(128, 64, 32),
                val_uar=0.9, test_uar=0.8, seed=3, dataset="blobs", backbone_fingerprint="abc")
    base.update(kw)
    return ProbeInfo(**base)


def test_save_load_roundtrip_without_pickle(tmp_path, data, fitted):
    _, _, (xs, _) = data
    weights = save_probe(tmp_path / "probes" / "hubert", fitted.model_, _info())
    weights_path, json_path = checkpoint_paths(tmp_path / "probes" / "hubert")
    assert weights == weights_path and weights_path.is_file() and json_path.is_file()
    assert not list(tmp_path.rglob("*.tmp"))
    clf, info = load_probe(weights_path)
    np.testing.assert_array_equal(clf.predict_proba(xs), fitted.predict_proba(xs))
    assert info == _info()
    assert info.preprocessing == {"sample_rate": 16000, "peak_normalize": True, "min_samples": 5000,
                                  "pooling": "mean+std"}
    sidecar = json.loads(json_path.read_text())
    assert sidecar["layer"] == 9 and sidecar["labels"][0] == "c0" and sidecar["vocalprobe_version"]
    # the file is plain safetensors: tensors load without any vocalprobe code
    from safetensors.torch import load_file

    tensors = load_file(str(weights_path))
    assert set(tensors) >= {"mean", "std", "head.weight"}


def test_exportable_module_is_self_contained(data, fitted):
    _, _, (xs, _) = data
    batch = torch.export.Dim("batch")
    exported = torch.export.export(fitted.model_, (torch.from_numpy(xs[:2]),), dynamic_shapes=({0: batch},))
    logits = exported.module()(torch.from_numpy(xs))
    np.testing.assert_allclose(torch.softmax(logits, 1).detach().numpy(), fitted.predict_proba(xs), atol=1e-6)


def test_load_errors(tmp_path, fitted):
    with pytest.raises(ProbeCheckpointError, match="not found"):
        load_probe(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ProbeCheckpointError, match="not a readable safetensors"):
        load_probe(tmp_path / "junk.safetensors")
    with pytest.raises(ProbeCheckpointError, match="does not match the probe"):
        save_probe(tmp_path / "x", fitted.model_, _info(n_features=7))


#: A probe's .json as vocalprobe 0.9.0 wrote it (hand-written to_dict, before runtime.core.records).
OLD_PROBE_JSON = """{
  "backbone": "hubert",
  "backbone_fingerprint": "abc",
  "backbone_id": "facebook/hubert-base-ls960",
  "backbone_revision": null,
  "dataset": "tones",
  "format": 1,
  "hidden_sizes": [
    16,
    8
  ],
  "labels": [
    "chirp",
    "hoot"
  ],
  "layer": 3,
  "n_features": 64,
  "preprocessing": {
    "min_samples": 5000,
    "peak_normalize": true,
    "pooling": "mean+std",
    "sample_rate": 16000
  },
  "probe_config": {
    "batch_size": 16,
    "device": "cpu",
    "early_stopping_patience": 10,
    "eval_batch_size": 4096,
    "hidden_sizes": [
      16,
      8
    ],
    "learning_rate": 0.001,
    "lr_factor": 0.1,
    "lr_patience": 10,
    "max_epochs": 30,
    "seed": 1,
    "weight_decay": 0.0
  },
  "seed": 1,
  "test_uar": 0.25,
  "val_uar": 0.5,
  "vocalprobe_version": "0.9.0"
}
"""


def test_probe_metadata_written_before_reads_and_rewrites_byte_identically():
    info = ProbeInfo.from_dict(json.loads(OLD_PROBE_JSON))
    assert info.labels == ("chirp", "hoot") and info.hidden_sizes == (16, 8) and info.backbone_revision is None
    assert json.dumps(info.to_dict(), indent=2, sort_keys=True) + "\n" == OLD_PROBE_JSON
    config = ProbeConfig.from_dict(info.probe_config)
    assert config == ProbeConfig(hidden_sizes=(16, 8), seed=1)
    assert config.to_dict() == info.probe_config  # lists, as JSON gives them back
    # keys a newer vocalprobe may add are skipped, not an error; a missing required key is one
    assert ProbeInfo.from_dict({**json.loads(OLD_PROBE_JSON), "added_later": 1}) == info
    with pytest.raises(ProbeCheckpointError, match="lacks labels"):
        ProbeInfo.from_dict({k: v for k, v in json.loads(OLD_PROBE_JSON).items() if k != "labels"})
    with pytest.raises(ValueError, match="unknown probe setting.*colour"):
        ProbeConfig.from_dict({"colour": "red"})
