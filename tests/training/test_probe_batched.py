"""Batched probe training gives what training the probes one at a time gives: same epochs, same predictions."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from vocalprobe.training.probe import ProbeClassifier, ProbeConfig, ProbeInputError
from vocalprobe.training.probe_batched import ProbeJob, fit_probes

N_CLASSES, N_FEATURES, N_LAYERS = 4, 20, 3

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    """Three 'layers' of noisy class blobs, offset and scaled so z-scoring matters; rows 0-199 Train, then Val, Test."""
    rng = np.random.default_rng(7)
    y = rng.integers(0, N_CLASSES, 300)
    layers = [rng.normal(size=(N_CLASSES, N_FEATURES))[y] + (1.5 + layer) * rng.normal(size=(300, N_FEATURES))
              for layer in range(N_LAYERS)]
    x = (np.stack(layers, axis=1) * 25.0 + 80.0).astype(np.float32)  # (300, N_LAYERS, N_FEATURES)
    return x, y, np.arange(200), np.arange(200, 250), np.arange(250, 300)


# short patience so that within 12 epochs some probes cut their learning rate and some stop early
CONFIG = ProbeConfig(max_epochs=12, lr_patience=2, early_stopping_patience=4)
JOBS = [ProbeJob(layer, seed) for layer in range(N_LAYERS) for seed in (0, 5)]


@pytest.fixture(scope="module")
def both(data):
    x, y, train, val, _ = data
    batched = fit_probes(x, y, train=train, val=val, jobs=JOBS, config=CONFIG, n_classes=N_CLASSES, group_size=4)
    single = [ProbeClassifier(replace(CONFIG, seed=job.seed)).fit(x[train, job.layer], y[train], x[val, job.layer],
                                                                   y[val], n_classes=N_CLASSES) for job in JOBS]
    return batched, single


def test_same_epochs_losses_and_checkpoint_as_one_at_a_time(both):
    batched, single = both
    for job, got, ref in zip(JOBS, batched, single):
        assert len(got.history_) == len(ref.history_), job
        assert (got.best_epoch_, got.stopped_early_, got.config.seed) == (ref.best_epoch_, ref.stopped_early_, job.seed)
        assert got.best_val_uar_ == ref.best_val_uar_
        for a, b in zip(got.history_, ref.history_):
            assert a.learning_rate == b.learning_rate and a.val_uar == b.val_uar
            assert a.train_loss == pytest.approx(b.train_loss, rel=1e-5, abs=1e-6)
            assert a.val_loss == pytest.approx(b.val_loss, rel=1e-5, abs=1e-6)
    # the comparison covers what it should: an early stop, a full run, a cut learning rate, a group of two sizes
    assert any(r.stopped_early_ for r in single) and not all(r.stopped_early_ for r in single)
    assert any(h.learning_rate < CONFIG.learning_rate for r in single for h in r.history_)


def test_same_val_and_test_predictions(both, data):
    x, y, _, val, test = data
    batched, single = both
    assert len(batched) == len(JOBS)
    for job, got, ref in zip(JOBS, batched, single):
        for rows in (val, test):
            np.testing.assert_allclose(got.predict_proba(x[rows, job.layer]), ref.predict_proba(x[rows, job.layer]),
                                       atol=1e-5)
            np.testing.assert_array_equal(got.predict(x[rows, job.layer]), ref.predict(x[rows, job.layer]))


def test_same_initial_weights_and_statistics_as_probe_classifier(data):
    x, y, train, val, _ = data
    one_epoch = replace(CONFIG, max_epochs=1, learning_rate=1e-12)  # a step this small leaves the init in place
    got = fit_probes(x, y, train=train, val=val, jobs=[ProbeJob(2, 9)], config=one_epoch, n_classes=N_CLASSES)[0]
    ref = ProbeClassifier(replace(one_epoch, seed=9)).fit(x[train, 2], y[train], x[val, 2], y[val],
                                                          n_classes=N_CLASSES)
    for (name, a), (_, b) in zip(got.model_.state_dict().items(), ref.model_.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9, msg=name)


def test_a_stopped_probe_stops_changing_while_the_group_goes_on(both):
    batched, _ = both
    stopped = [clf for clf in batched if clf.stopped_early_]
    going = [clf for clf in batched if not clf.stopped_early_]
    assert stopped and going
    assert all(len(clf.history_) < CONFIG.max_epochs for clf in stopped)
    assert all(len(clf.history_) == CONFIG.max_epochs for clf in going)


def test_bad_input_is_refused(data):
    x, y, train, val, _ = data
    with pytest.raises(ProbeInputError, match="3-D"):
        fit_probes(x[:, 0], y, train=train, val=val, jobs=JOBS)
    with pytest.raises(ProbeInputError, match="no layer index 3"):
        fit_probes(x, y, train=train, val=val, jobs=[ProbeJob(3, 0)])
    bad = x.copy()
    bad[5, 1, 0] = np.nan
    with pytest.raises(ProbeInputError, match="NaN"):
        fit_probes(bad, y, train=train, val=val, jobs=[ProbeJob(1, 0)])


def _state(clf) -> list[bytes]:
    return [t.numpy().tobytes() for t in clf.model_.state_dict().values()]


def test_a_probe_does_not_depend_on_its_group_or_the_workers(data):
    """Group sizes, worker threads and a probe trained alone (a resumed study) give the same bytes: on a CPU a study
    is reproducible from its seeds however its probes were grouped."""
    x, y, train, val, _ = data
    ref = fit_probes(x, y, train=train, val=val, jobs=JOBS, config=CONFIG, n_classes=N_CLASSES,
                     group_size=len(JOBS), workers=1)
    runs = {(size, workers): fit_probes(x, y, train=train, val=val, jobs=JOBS, config=CONFIG, n_classes=N_CLASSES,
                                        group_size=size, workers=workers) for size, workers in ((1, 1), (4, 2), (2, 3))}
    runs["alone"] = [fit_probes(x, y, train=train, val=val, jobs=[job], config=CONFIG, n_classes=N_CLASSES)[0]
                     for job in JOBS]
    for how, got in runs.items():
        for job, a, b in zip(JOBS, ref, got):
            assert _state(a) == _state(b), (how, job)
            assert a.history_ == b.history_ and a.best_epoch_ == b.best_epoch_, (how, job)


def test_finished_probes_reach_the_caller_thread_as_their_group_ends(data):
    x, y, train, val, _ = data
    seen = []
    got = fit_probes(x, y, train=train, val=val, jobs=JOBS, config=CONFIG, n_classes=N_CLASSES, group_size=2,
                     workers=2, on_fitted=lambda i, clf: seen.append((i, clf, threading.get_ident())))
    assert sorted(i for i, _, _ in seen) == list(range(len(JOBS)))
    assert all(clf is got[i] and thread == threading.get_ident() for i, clf, thread in seen)


def test_a_failing_group_stops_the_others_and_reports_its_error(data):
    x, y, train, val, _ = data
    bad = x.copy()
    bad[5, 2, 0] = np.inf  # layer 2: the last group's
    epochs = []
    with pytest.raises(ProbeInputError, match="layer index 2"):
        fit_probes(bad, y, train=train, val=val, jobs=JOBS, config=replace(CONFIG, max_epochs=200,
                                                                          early_stopping_patience=200),
                   n_classes=N_CLASSES, group_size=2, workers=3, on_epoch=lambda i, log: epochs.append(i))
    assert len(epochs) < 2 * 200  # the two good groups stopped long before their 200 epochs


def test_ctrl_c_while_saving_stops_the_groups_still_training(data):
    """Ctrl-C reaches the caller's thread (a study saving a finished probe): the other groups end within a step
    instead of finishing their epochs, and the interrupt propagates."""
    x, y, train, val, _ = data
    epochs = []

    def interrupt(i, clf):
        raise KeyboardInterrupt

    long = replace(CONFIG, max_epochs=60, early_stopping_patience=60, lr_patience=60)
    with pytest.raises(KeyboardInterrupt):
        fit_probes(x, y, train=train, val=val, jobs=JOBS, config=long, n_classes=N_CLASSES, group_size=1,
                   workers=2, on_epoch=lambda i, log: epochs.append(i), on_fitted=interrupt)
    assert 60 <= len(epochs) < 2 * 60  # one probe finished; the one beside it stopped early; none started after
