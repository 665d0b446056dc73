"""The Python API: ``vocalprobe.predict``, ``stream``, ``rethreshold``, ``embed``, ``segments``, ``study`` and
``export_graph``, for scripts and notebooks.

Each calls the producer its command calls (the engine's ``predict``, ``field.run.run_stream``, ``archive.embed``,
``field.segments``, the study runner, ``export.onnx_export``), so it accepts and refuses what the command does, with
the same ``VocalprobeError`` messages. ``vocalprobe.export`` is the export subpackage, hence ``export_graph``.

Tables: a pandas DataFrame when pandas is installed, else a dict of numpy columns (pandas is not a dependency).
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path
from typing import Sequence

#: The first columns of ``predict``'s table; one column per class follows.
PREDICT_COLUMNS = ("file", "start", "end")


def table(columns: dict):
    """``columns`` (name -> numpy array) as a pandas DataFrame, or as the dict itself without pandas."""
    try:
        import pandas
    except ImportError:
        return columns
    return pandas.DataFrame(columns)


def _paths(files) -> list[str]:
    return [str(files)] if isinstance(files, (str, Path)) else [str(f) for f in files]


def _models(model) -> list[str]:
    return _paths(model)


def _files(files, what: str) -> list:
    """The sources of ``files`` (files and folders, as `stream` lists them); stdin is `stream`'s alone."""
    from vocalprobe.runtime.engine.sources import SourceError, collect_files

    paths = _paths(files)
    if "-" in paths:
        raise SourceError(f"{what} reads files and folders, not stdin; stream stdin with `vocalprobe stream -`")
    return collect_files(paths)


def predict(files, model, *, window: float | None = None, hop: float | None = None, final_window: str = "pad",
            batch: int = 8, threads: int | None = None, provider: str = "auto", weights: str | None = None):
    """Every window's class probabilities: a table with ``file``, ``start`` and ``end`` (seconds) and one column per
    class. ``files``: audio files or folders (as `stream` takes them); ``model``: an exported .onnx graph, or a list
    of graphs to fuse (``weights`` as for `stream --weights`). An unreadable file raises its ``AudioError``."""
    import numpy as np

    from vocalprobe.runtime.engine.ensemble import load_models
    from vocalprobe.runtime.engine.predict import predict as produce
    from vocalprobe.runtime.engine.windows import WindowPlan

    net = load_models(_models(model), weights=weights, provider=provider, threads=threads)
    plan = WindowPlan.from_seconds(window if window is not None else net.sample_duration, hop, net.sample_rate,
                                   final_window)
    sources = _files(files, "predict")
    names, starts, ends, probabilities = [], [], [], []
    with closing(produce(sources, net, plan, batch)) as recordings:
        for recording in recordings:
            name = str(recording.source.path) if recording.source.path is not None else recording.source.name
            for prediction in recording.predictions():
                for w in prediction.windows:
                    start, end = w.seconds(net.sample_rate)
                    names.append(name)
                    starts.append(start)
                    ends.append(end)
                probabilities.append(np.asarray(prediction.probabilities, np.float32))
    probs = np.concatenate(probabilities) if probabilities else np.zeros((0, len(net.classes)), np.float32)
    columns = {"file": np.array(names, dtype=object), "start": np.array(starts, np.float64),
               "end": np.array(ends, np.float64)}
    columns.update({c: probs[:, j] for j, c in enumerate(net.classes)})
    return table(columns)


def stream(files, model, out, **options):
    """`vocalprobe stream FILES -m MODEL -o OUT`: detection tables in ``out`` (resumable); returns the run's
    ``RunSummary``. ``options``: the fields of ``runtime.field.run.StreamJob`` (formats, min_conf, top_k, merge,
    window_s, hop_s, ...)."""
    from vocalprobe.runtime.field.run import StreamJob, run_stream

    if isinstance(options.get("formats"), str):
        from vocalprobe.runtime.core.detections.tables import parse_formats

        options["formats"] = parse_formats(options["formats"])
    if "ignore" in options:
        options["ignore"] = frozenset(options["ignore"])
    job = StreamJob(tuple(Path(m) for m in _models(model)), Path(out), tuple(_paths(files)), **options)
    return run_stream(job).summary


def rethreshold(run_dir, out, **options):
    """`vocalprobe rethreshold RUN_DIR -o OUT`: the detection tables of a ``stream(..., scores=True)`` run made again
    in ``out`` from its stored scores, without the model; returns its ``RethresholdSummary``. ``options``: the fields
    of ``runtime.field.rethreshold.Rethreshold`` (min_conf, thresholds, top_k, merge, ignore, report_background,
    formats); each left out keeps the run's."""
    from vocalprobe.runtime.field.rethreshold import Rethreshold
    from vocalprobe.runtime.field.rethreshold import rethreshold as run_rethreshold

    if isinstance(options.get("formats"), str):
        from vocalprobe.runtime.core.detections.tables import parse_formats

        options["formats"] = parse_formats(options["formats"])
    if options.get("ignore") is not None:
        options["ignore"] = frozenset(options["ignore"])
    return run_rethreshold(Path(run_dir), Path(out), Rethreshold(**options))


def embed(files, model, db, *, window: float | None = None, hop: float | None = None, final_window: str = "pad",
          batch: int = 8, threads: int | None = None, deployment: str | None = None):
    """`vocalprobe embed FILES -m MODEL --db DB`: every window's embedding into the archive ``db`` (resumable);
    returns its ``EmbedSummary`` (done, skipped, failed recordings; windows)."""
    from vocalprobe.runtime.archive.embed import embed_sources
    from vocalprobe.runtime.archive.store import ArchiveDB
    from vocalprobe.runtime.engine.onnx_model import OnnxModel
    from vocalprobe.runtime.engine.windows import WindowPlan

    net = OnnxModel(model, provider="cpu", threads=threads)
    plan = WindowPlan.from_seconds(window if window is not None else net.sample_duration, hop, net.sample_rate,
                                   final_window)
    sources = _files(files, "embed")
    with ArchiveDB.open_writer(Path(db)) as archive:
        archive.mark_shard(None)
        return embed_sources(sources, net, plan, archive, batch=batch, deployment=deployment)


def segments(detections, out, *, audio=".", top: int | None = None, min_conf: float = 0.0, pad: float = 0.0):
    """`vocalprobe segments`: one audio clip per detection (or the ``top`` best per class) of a stream output folder,
    and the per-class summary; returns ``runtime.field.segments.SegmentsReport``."""
    from vocalprobe.runtime.field.segments import cut_segments

    return cut_segments(Path(detections), Path(out), audio_root=Path(audio), top=top, min_conf=min_conf, pad_s=pad)


def study(config: str | Path | None = None, *, data: Sequence[str] | None = None,
          backbones: Sequence[str] | None = None, layers=None, seeds: int | None = None, device: str | None = None,
          out: str | Path | None = None, name: str | None = None, dtype: str | None = None, progress: bool = False,
          engine: str = "local", address: str | None = None, folds: int | None = None) -> Path:
    """`vocalprobe study`: the layer-wise study from a TOML ``config`` and/or ``data`` manifests and ``backbones``;
    returns its report.md (with ``folds``: K-fold cross-validation over groups, its cv_report.md). (The embedded demo
    is `vocalprobe demo` / ``vocalprobe.demo``.)"""
    from vocalprobe.training.study.options import check_scale, study_config, study_overrides
    from vocalprobe.training.study.runner import run_study

    overrides = study_overrides(layers=layers, seeds=seeds, device=device,
                                out_root=Path(out) if out is not None else None, name=name, dtype=dtype,
                                folds=folds)
    cfg = study_config(config, list(data or ()), list(backbones or ()), overrides)
    check_scale(False, None, engine, cfg.folds)
    if cfg.folds:
        from vocalprobe.training.study.crossval import run_cv

        run_cv(cfg, progress=progress)
        return cfg.out_dir / "cv_report.md"
    run_study(cfg, progress=progress, engine=engine, address=address)
    return cfg.out_dir / "report.md"


def export_graph(study_dir, out, *, dataset: str | None = None, backbone: str | None = None, layer: str = "best",
                 quantize: str = "none", quant_tolerance: float | None = None):
    """`vocalprobe export STUDY_DIR --out OUT` (fixed quantization modes; ``auto`` is the command's): one probe of
    a study as one ONNX graph, parity-checked before it is written; returns the export's result (``metadata``,
    ``parity``)."""
    from vocalprobe.export.onnx_export import export_from_study

    return export_from_study(Path(study_dir), Path(out), dataset=dataset, backbone=backbone, layer=str(layer),
                             quantize=quantize, quant_tolerance=quant_tolerance)
