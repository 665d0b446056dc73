"""Extract every manifest clip's per-layer pooled features once, with a resumable on-disk cache.

Each clip is read and resampled to 16 kHz (``runtime.clips``), then goes through ``LayerFeatures``: one backbone
pass gives all requested layers. Clips longer than the chunk limit (default 20 s) are peak-normalised as a whole,
cut by ``chunk_bounds`` and their chunks' frame statistics merged, so memory follows the chunk, not the clip.

Batching policy (see ``features``' docstring for the measurement): in float32 on the CPU, clips of any lengths
share packs of frames (``packed_features``: only the per-frame ops are packed, so each clip keeps its solo
features); otherwise (bfloat16 / float16, cuda, WavLM) only clips of exactly equal length after repeat padding
share a batch and any other clip runs alone. Files that cannot be read are reported in ``FeatureSet.failed``
and left out; the rest finishes.

Cache: ``cache_dir/<key>/`` where the key hashes the backbone (name, source, revision, weights fingerprint, config),
the manifest (content hash and folder), the preprocessing constants, chunk limit, dtype, layers and
``FEATURE_VERSION``. It holds ``shard-NNNNN.npy`` files (float32 ``[rows, n_layers, 2D]``, written atomically) and
``index.json`` (settings, and for each shard the manifest rows it holds), rewritten atomically after each shard. An
interrupted run resumes from the shards listed in the index; failed rows are retried on the next run. No pickle:
shards load with ``allow_pickle=False``.

Several writers (``shard=`` i/n: a SLURM array task, a Ray task of ``study --engine ray``) share one cache folder:
each unit writes only its own ``index-IofN.json`` and ``IofN-shard-NNNNN.npy`` files, so no index is written by two
processes, and every run reads all the indexes of the folder together (a row held by several is taken once). A
run without ``shard`` writes ``index.json`` as before, so caches written earlier stay readable as they are.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from vocalprobe.runtime.core.atomic import atomic_save_npy, atomic_write_text
from vocalprobe.runtime.core.audio import seconds_to_samples
from vocalprobe.runtime.core.clips import load_row
from vocalprobe.runtime.core.digests import json_sha256
from vocalprobe.runtime.core.errors import VocalprobeError
from vocalprobe.runtime.core.manifest import Manifest, ManifestRow, read_manifest
from vocalprobe.runtime.core.preprocess import MIN_SAMPLES, repeat_pad
from vocalprobe.runtime.core.resample import MODEL_SAMPLE_RATE, QUALITY
from vocalprobe.runtime.core.shards import Shard
from vocalprobe.training.backbones import Backbone, load_backbone, resolve_device
from vocalprobe.training.features import LayerFeatures, clip_features
from vocalprobe.training.packed_features import PackedFeatures

log = logging.getLogger(__name__)

#: Bump when the meaning of a cached feature changes (pooling, layer numbering, preprocessing...).
FEATURE_VERSION = 1
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
INDEX_NAME = "index.json"
UNIT_INDEX_GLOB = "index-*.json"  # the indexes of shard units (``unit_files``)


class FeatureCacheError(VocalprobeError):
    """A feature cache folder that is inconsistent with its index."""


@dataclass(frozen=True)
class FailedClip:
    row: int  # index into manifest.rows
    path: str
    error: str


@dataclass
class FeatureSet:
    """Features of the readable clips of a manifest, in manifest row order."""

    features: np.ndarray  # float32 [n_clips, n_layers, 2 * D]: per layer, mean then population std over frames
    labels: np.ndarray  # int64 [n_clips]: class index in ``class_names`` (= manifest.labels) order
    splits: np.ndarray  # str [n_clips]: "train" / "val" / "test", or "" where the manifest has no split
    layers: tuple[int, ...]  # the layer index of each position on axis 1
    rows: np.ndarray  # int64 [n_clips]: manifest row of each clip
    failed: tuple[FailedClip, ...]  # rows that could not be read (left out above)
    class_names: tuple[str, ...]
    backbone: dict  # Backbone.identity()
    cache_dir: Path | None = None  # the cache folder these features live in (None: not cached)
    precision: dict | None = None  # for bfloat16/float16: difference to float32 on a sample of clips
    stats: dict = field(default_factory=dict)  # clips computed / taken from the cache, seconds, throughput

    def layer(self, layer: int) -> np.ndarray:
        """Features ``[n_clips, 2D]`` of one layer (by layer index, not position)."""
        if layer not in self.layers:
            raise KeyError(f"layer {layer} was not extracted; available: {list(self.layers)}")
        return self.features[:, self.layers.index(layer)]


def cache_settings(backbone: Backbone, manifest: Manifest, *, layers: Sequence[int], chunk_samples: int,
                   dtype: str) -> dict:
    """Everything the cached features depend on."""
    return {
        "feature_version": FEATURE_VERSION,
        "backbone": backbone.identity(),
        "manifest": {"content_hash": manifest.content_hash(), "root": str(Path(manifest.root).resolve())},
        "preprocessing": {"sample_rate": MODEL_SAMPLE_RATE, "resample_quality": QUALITY, "peak_normalize": True,
                          "min_samples": MIN_SAMPLES},
        "chunk_samples": int(chunk_samples),
        "dtype": dtype,
        "layers": [int(layer) for layer in layers],
    }


def cache_key(settings: dict) -> str:
    return json_sha256(settings)[:24]


def unit_files(shard: Shard | None) -> tuple[str, str]:
    """(index file, prefix of the feature files) that the unit extracting ``shard`` writes, and no other."""
    if shard is None:
        return INDEX_NAME, ""
    tag = f"{shard.index}of{shard.count}"
    return f"index-{tag}.json", f"{tag}-"


def row_key(row: ManifestRow) -> str:
    """What ``--shard`` hashes: the clip's path as the manifest gives it, and its segment when it has one."""
    return row.path if row.start is None and row.end is None else f"{row.path}@{row.start}-{row.end}"


class _Cache:
    """The features of one cache key, from every unit's index; this unit's own shards and failures, which only it
    writes (``unit_files``). Without a folder it only holds results in memory."""

    def __init__(self, folder: Path | None, key: str, settings: dict, feature_shape: tuple[int, int],
                 shard: Shard | None = None):
        self.folder, self.key, self.settings, self.feature_shape = folder, key, settings, feature_shape
        self.index_name, self.prefix = unit_files(shard)
        self.shards: list[dict] = []  # this unit's
        self.failed: dict[int, FailedClip] = {}  # this unit's
        self.precision: dict | None = None
        self.features: dict[int, np.ndarray] = {}  # every unit's
        if folder is not None:
            indexes = [folder / INDEX_NAME] + sorted(folder.glob(UNIT_INDEX_GLOB))
            for index_path in indexes:
                if index_path.is_file():
                    self._load(index_path, own=index_path.name == self.index_name)

    def _load(self, index_path: Path, own: bool) -> None:
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise FeatureCacheError(f"{index_path}: unreadable cache index ({exc}); delete {self.folder} "
                                    "to recompute") from exc
        if index.get("key") != self.key:
            raise FeatureCacheError(f"{index_path}: index belongs to key {index.get('key')!r}, not {self.key!r}; "
                                    f"delete {self.folder} to recompute")
        for shard in index.get("shards", []):
            path = self.folder / shard["file"]
            try:
                array = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise FeatureCacheError(f"{path}: unreadable feature shard ({exc}); delete {self.folder} "
                                        "to recompute") from exc
            rows = [int(r) for r in shard["rows"]]
            if array.dtype != np.float32 or array.shape != (len(rows), *self.feature_shape):
                raise FeatureCacheError(f"{path}: shard holds {array.dtype}{list(array.shape)}, expected float32"
                                        f"{[len(rows), *self.feature_shape]}; delete {self.folder} to recompute")
            if own:
                self.shards.append({"file": shard["file"], "rows": rows})
            for row, features in zip(rows, array):
                self.features.setdefault(row, features)
        if own or self.precision is None:
            self.precision = index.get("precision") or self.precision

    @property
    def done(self) -> set[int]:
        return set(self.features)

    def add_shard(self, rows: list[int], features: list[np.ndarray], failed: Iterable[FailedClip]) -> None:
        for item in failed:
            self.failed[item.row] = item
        for row in rows:
            self.failed.pop(row, None)
        if rows:
            array = np.stack(features).astype(np.float32, copy=False)
            self.features.update(zip(rows, array))
            if self.folder is not None:
                name = f"{self.prefix}shard-{len(self.shards):05d}.npy"
                atomic_save_npy(self.folder / name, array)
                self.shards.append({"file": name, "rows": rows})
        self.write_index()

    def write_index(self) -> None:
        if self.folder is None:
            return
        index = {"key": self.key, "settings": self.settings, "feature_shape": list(self.feature_shape),
                 "shards": self.shards, "precision": self.precision,
                 "failed": [{"row": f.row, "path": f.path, "error": f.error}
                            for f in sorted(self.failed.values(), key=lambda f: f.row)]}
        atomic_write_text(self.folder / self.index_name, json.dumps(index, indent=1))


class _Runner:
    """Runs batches and long clips through the module on one device and dtype, tracking the precision check."""

    def __init__(self, module: LayerFeatures, device: torch.device, dtype: str, precision_clips: int):
        self.module, self.device, self.dtype = module, device, dtype
        # packing only where it was shown exact (fp32 CPU: MKL computes a GEMM row alike whatever the other rows)
        self.packed = (PackedFeatures(module) if dtype == "float32" and device.type == "cpu"
                       and PackedFeatures.supports(module) else None)
        self.precision_left = precision_clips if dtype != "float32" else 0
        self.precision: dict | None = None

    def _autocast(self):
        if self.dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=DTYPES[self.dtype])

    def batch(self, waveforms: np.ndarray) -> np.ndarray:
        """``[B, T]`` equal-length 16 kHz clips -> ``[B, n_layers, 2D]`` float32."""
        x = torch.from_numpy(np.ascontiguousarray(waveforms, dtype=np.float32)).to(self.device)
        with torch.inference_mode(), self._autocast():
            out = self.module(x).float().cpu().numpy()
        if self.precision_left > 0:
            with torch.inference_mode():
                reference = self.module(x).float().cpu().numpy()
            self._record_precision(out, reference)
        return out

    def pack(self, waveforms: list[np.ndarray]) -> list[np.ndarray]:
        """Repeat-padded 16 kHz clips of any lengths -> ``[n_layers, 2D]`` float32 each (``packed``)."""
        with torch.inference_mode():
            out = self.packed.features([torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)).to(self.device)
                                        for w in waveforms])
        return [features.cpu().numpy() for features in out]

    def long_clip(self, waveform: np.ndarray, chunk_samples: int) -> np.ndarray:
        """One clip longer than ``chunk_samples``: whole-clip peak normalisation, chunks, merged statistics."""
        with torch.inference_mode(), self._autocast():
            return clip_features(self.module, waveform, chunk_samples, self.device)

    def _record_precision(self, out: np.ndarray, reference: np.ndarray) -> None:
        diff = np.abs(out.astype(np.float64) - reference)
        rel = np.linalg.norm((out - reference).reshape(len(out), -1), axis=1) / np.maximum(
            np.linalg.norm(reference.reshape(len(out), -1), axis=1), 1e-12)
        previous = self.precision or {"dtype": self.dtype, "clips": 0, "max_abs_diff": 0.0, "max_rel_l2_diff": 0.0}
        self.precision = {"dtype": self.dtype, "clips": previous["clips"] + len(out),
                          "max_abs_diff": max(previous["max_abs_diff"], float(diff.max())),
                          "max_rel_l2_diff": max(previous["max_rel_l2_diff"], float(rel.max()))}
        self.precision_left -= len(out)


def extract_features(manifest: Manifest | str | os.PathLike, backbone: Backbone | str | os.PathLike, *,
                     layers: Sequence[int] | None = None, device: str = "auto",
                     cache_dir: str | os.PathLike | None = None, chunk_seconds: float = 20.0, batch_size: int = 16,
                     dtype: str = "float32", progress: bool = True, shard_size: int = 256,
                     precision_clips: int = 16, shard: Shard | None = None,
                     on_shard: Callable[[int], None] | None = None) -> FeatureSet:
    """Per-layer pooled features of every readable clip of ``manifest`` (see the module docstring).

    ``backbone``: a loaded ``Backbone`` or anything ``load_backbone`` accepts. ``layers``: layer indices
    (default all, 0..N). ``device``: auto / cpu / cuda. ``cache_dir``: parent folder of the feature caches (None:
    no cache). ``chunk_seconds``: clips longer than this are processed in chunks (at least 0.625 s, so no chunk
    needs padding). ``batch_size``: at most this many equal-length clips per forward pass
    where clips are not packed (float32 on the CPU packs up to ``PackedFeatures.max_frames`` frames instead).
    ``dtype``: float32 (default), bfloat16 or float16 autocast; for the latter two the difference to float32 on the
    first ``precision_clips`` batched clips is measured and returned in ``FeatureSet.precision``. ``shard_size``: clips
    per cache shard (how much work an interruption can lose). ``shard``: extract only the clips of shard i/n
    (``row_key`` hashed), into this unit's own index of the shared cache; the result holds that shard's clips.
    ``on_shard``: called with the number of clips this run computed so far, after each cache shard is written
    (progress of a unit run elsewhere).
    """
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest)
    torch_device = resolve_device(device)
    if not isinstance(backbone, Backbone):
        backbone = load_backbone(backbone, device=str(torch_device))
    if dtype not in DTYPES:
        raise VocalprobeError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise VocalprobeError(f"batch size must be a positive integer, got {batch_size!r}")
    if not isinstance(shard_size, int) or shard_size < 1:
        raise VocalprobeError(f"shard size must be a positive integer, got {shard_size!r}")
    chunk_samples = seconds_to_samples(chunk_seconds, MODEL_SAMPLE_RATE)
    if chunk_samples < 2 * MIN_SAMPLES:
        raise VocalprobeError(f"chunk limit must be at least {2 * MIN_SAMPLES / MODEL_SAMPLE_RATE} s "
                              f"(so that no chunk needs padding), got {chunk_seconds} s")
    if backbone.family == "whisper" and chunk_samples > 30 * MODEL_SAMPLE_RATE:
        raise VocalprobeError(f"{backbone.name}: a Whisper encoder sees at most 30 s at once; set the chunk limit "
                              f"to 30 s or less, got {chunk_seconds} s")
    try:
        backbone.model.to(torch_device)
        module = LayerFeatures(backbone.model, layers=layers)
    except ValueError as exc:
        raise VocalprobeError(f"{backbone.name}: {exc}") from exc
    feature_shape = (module.num_outputs, module.feature_dim)
    settings = cache_settings(backbone, manifest, layers=module.layers, chunk_samples=chunk_samples, dtype=dtype)
    key = cache_key(settings)
    folder = Path(cache_dir) / key if cache_dir is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    cache = _Cache(folder, key, settings, feature_shape, shard)
    runner = _Runner(module, torch_device, dtype, precision_clips if cache.precision is None else 0)
    selected = [i for i, row in enumerate(manifest.rows) if shard is None or shard.holds(row_key(row))]
    done = cache.done & set(selected)
    todo = [i for i in selected if i not in done]

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    started = time.perf_counter()
    audio_seconds = 0.0
    computed = 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("{task.fields[rate]}"))
    with Progress(*columns, disable=not progress, transient=False) as progress_bar:
        what = f"features {_short_name(backbone)}" + (f" shard {shard}" if shard is not None else "")
        bar = _Bar(progress_bar, progress_bar.add_task(what, total=len(selected), completed=len(done), rate=""))
        for first in range(0, len(todo), shard_size):
            block = todo[first:first + shard_size]
            rows, features, failed, seconds = _extract_block(manifest, block, runner, chunk_samples, batch_size,
                                                             bar)
            audio_seconds += seconds
            if runner.precision is not None:
                cache.precision = runner.precision
            cache.add_shard(rows, features, failed)
            computed += len(rows)
            if on_shard is not None:
                on_shard(computed)
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.describe(f"{audio_seconds / elapsed:.1f} audio-s/s, {len(cache.failed)} failed")
        if cache.precision is not None and progress:
            progress_bar.console.print(
                f"{dtype} vs float32 on {cache.precision['clips']} clips: max abs diff "
                f"{cache.precision['max_abs_diff']:.3g}, max relative L2 diff {cache.precision['max_rel_l2_diff']:.3g}")
    elapsed = time.perf_counter() - started
    if cache.failed:
        log.warning("%d of %d clips could not be read and were left out (first: %s)", len(cache.failed),
                    len(manifest), next(iter(sorted(cache.failed.values(), key=lambda f: f.row))).error)
    if cache.precision is not None and not progress:
        log.info("%s vs float32 on %d clips: max abs diff %.3g, max relative L2 diff %.3g", dtype,
                 cache.precision["clips"], cache.precision["max_abs_diff"], cache.precision["max_rel_l2_diff"])
    return _assemble(manifest, backbone, module.layers, cache, set(selected), {
        "computed": computed, "cached": len(done),
        "seconds": elapsed, "audio_seconds": audio_seconds,
        "clips_per_s": (len(todo) - len(cache.failed)) / elapsed if elapsed > 0 else 0.0,
        "audio_s_per_s": audio_seconds / elapsed if elapsed > 0 else 0.0})


class _Bar:
    """One rich progress task, with the ``update(n)`` the block loop calls."""

    def __init__(self, progress, task):
        self._progress, self._task = progress, task

    def update(self, n: int) -> None:
        self._progress.update(self._task, advance=n)

    def describe(self, rate: str) -> None:
        self._progress.update(self._task, rate=rate)


def _short_name(backbone: Backbone) -> str:
    return backbone.spec.name if backbone.spec is not None else Path(backbone.name.rstrip("/\\")).name or backbone.name


def _extract_block(manifest: Manifest, block: list[int], runner: _Runner, chunk_samples: int, batch_size: int,
                   bar: _Bar) -> tuple[list[int], list[np.ndarray], list[FailedClip], float]:
    """Features of the rows in ``block`` (those that could be read), in row order, plus the failures."""
    results: dict[int, np.ndarray] = {}
    failed: list[FailedClip] = []
    buckets: dict[int, list[tuple[int, np.ndarray]]] = {}
    pending = 0
    audio_seconds = 0.0

    packed: list[tuple[int, np.ndarray]] = []
    packed_frames = 0

    def flush_packed() -> None:
        nonlocal packed_frames
        results.update(zip((row for row, _ in packed), runner.pack([waveform for _, waveform in packed])))
        bar.update(len(packed))
        packed.clear()
        packed_frames = 0

    def flush(length: int) -> None:
        nonlocal pending
        items = buckets.pop(length)
        pending -= length * len(items)
        out = runner.batch(np.stack([waveform for _, waveform in items]))
        results.update(zip((row for row, _ in items), out))
        bar.update(len(items))

    for row_index in block:
        row = manifest.rows[row_index]
        try:
            clip = load_row(manifest, row)
        except VocalprobeError as exc:
            failed.append(FailedClip(row_index, str(manifest.audio_path(row)), str(exc)))
            bar.update(1)
            continue
        if clip.size == 0:  # a segment that resamples to nothing
            failed.append(FailedClip(row_index, str(manifest.audio_path(row)), "segment has no samples at 16 kHz"))
            bar.update(1)
            continue
        audio_seconds += clip.size / MODEL_SAMPLE_RATE
        if clip.size > chunk_samples:
            results[row_index] = runner.long_clip(clip, chunk_samples)
            bar.update(1)
            continue
        clip = repeat_pad(clip)  # the module's own padding, done early so that padded lengths can share a batch
        if runner.packed is not None:  # consecutive clips of the block, a pack per frame budget
            frames = runner.packed.frames(clip.size)
            if packed and packed_frames + frames > runner.packed.max_frames:
                flush_packed()
            packed.append((row_index, clip))
            packed_frames += frames
            continue
        buckets.setdefault(clip.size, []).append((row_index, clip))
        pending += clip.size
        if len(buckets[clip.size]) >= batch_size:
            flush(clip.size)
        elif pending > batch_size * chunk_samples:  # bound memory: run the fullest bucket now
            flush(max(buckets, key=lambda length: length * len(buckets[length])))
    for length in list(buckets):
        flush(length)
    if packed:
        flush_packed()
    rows = sorted(results)
    return rows, [results[r] for r in rows], failed, audio_seconds


def _assemble(manifest: Manifest, backbone: Backbone, layers: tuple[int, ...], cache: _Cache, selected: set[int],
              stats: dict) -> FeatureSet:
    class_names = tuple(manifest.labels)
    class_index = {name: i for i, name in enumerate(class_names)}
    rows = np.array(sorted(r for r in cache.features if r in selected), dtype=np.int64)
    if len(rows):
        features = np.stack([cache.features[int(r)] for r in rows]).astype(np.float32, copy=False)
    else:
        features = np.zeros((0, *cache.feature_shape), dtype=np.float32)
    labels = np.array([class_index[manifest.rows[r].label] for r in rows], dtype=np.int64)
    splits = np.array([manifest.rows[r].split or "" for r in rows], dtype=str)
    failed = tuple(sorted(cache.failed.values(), key=lambda f: f.row))
    return FeatureSet(features=features, labels=labels, splits=splits, layers=tuple(layers), rows=rows,
                      failed=failed, class_names=class_names, backbone=backbone.identity(),
                      cache_dir=cache.folder, precision=cache.precision, stats=stats)
