"""Export a probe pipeline (truncated backbone + pooling + MLP + softmax) to ONE ONNX graph.

``export_pipeline`` is the mechanism: ``torch.onnx.export(dynamo=True)`` of ``training.deployable.ProbePipeline``
with a dynamic batch and time axis, then four edits of the graph (names from ``runtime.core.graph_contract``):

1. the outputs get their contract names (``OUTPUT_NAMES``); an internal value that already has such a name (WavLM's
   ``embedding`` module) is renamed first;
2. the optional inputs (``OPTIONAL_INPUTS``: peak and the prior statistics) get initializers of the same name
   holding their defaults, which makes them OPTIONAL: a caller that feeds only the waveform gets the clip's own
   result (the ONNX rule: an input with an initializer may be overridden or omitted; onnxruntime honours it). Their
   batch axis is ``STATE_BATCH_AXIS``: 1 (broadcast) or the waveform's batch;
3. the exporter's intermediate shape annotations are dropped: they tie every batch axis to the waveform's, which
   is false once the state broadcasts, and onnxruntime would reuse buffers of the wrong size;
4. ``apply_waveform_layout``: the waveform takes any leading axes (OpenSoundscape feeds ``[batch, 1, samples]``,
   perch-hoplite ``[batch, samples]``), flattened into the batch by the graph's first node. Every path that writes
   a graph (export, quantize, fusion, attach) goes through this one function.

``export_from_study`` is the product: it finds a study's probe, loads the backbone it was trained on, exports,
checks parity on real clips (``export.parity``), optionally quantizes (``export.quantize``), and writes the
metadata (``export.metadata``). Files are written atomically; a failed parity check leaves no output file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import statistics
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from vocalprobe.export import quant_modes
from vocalprobe.export.onnx_io import save_model, set_metadata
from vocalprobe.runtime.core.errors import VocalprobeError
from vocalprobe.runtime.core.graph_contract import (INPUT_NAMES, LAYOUT_ANY_LEADING, OPTIONAL_INPUTS, OUTPUT_NAMES,
                                                    QUANTIZATION, STATE_BATCH_AXIS, WAVEFORM, WAVEFORM_LAYOUT,
                                                    optional_input_defaults)
from vocalprobe.runtime.core.resample import MODEL_SAMPLE_RATE

if TYPE_CHECKING:
    import onnx

__all__ = ["ExportError", "ExportResult", "export_pipeline", "export_from_study", "select_probe", "parity_clips",
           "PARITY_SECONDS", "apply_waveform_layout"]

#: Parity clip lengths in seconds; the longest is replaced by 1.25 x the chunk limit (see ``parity_clips``).
PARITY_SECONDS = (0.1, 1.0, 7.0)


class ExportError(VocalprobeError):
    """A study, probe or option that cannot be exported as asked."""


# ----------------------------------------------------------------------------------------------------------------
# the mechanism


def _rename_value(graph, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.name == old:
            value.name = new
    for init in graph.initializer:
        if init.name == old:
            init.name = new


def _value_names(graph) -> set[str]:
    names = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    for node in graph.node:
        names.update(node.output)
    return names


#: The graph's first node, and the value it feeds the rest of the graph with.
_LAYOUT_NODE = "waveform_layout"
_FLAT_WAVEFORM = "waveform__batch_samples"


def apply_waveform_layout(model) -> "onnx.ModelProto":
    """Let ``model``'s ``waveform`` input take any leading axes, in place (``graph_contract.WAVEFORM_LAYOUT``).

    Every consumer of ``waveform`` reads ``Flatten(waveform, axis=-1)`` instead (``[b, 1, s]`` -> ``[b, s]``, ``[b, s]``
    unchanged, ``[s]`` -> ``[1, s]``) and the input loses its declared shape, so onnxruntime accepts any rank; the
    metadata says so (``WAVEFORM_LAYOUT``). Idempotent.
    """
    from onnx import helper

    graph = model.graph
    if any(node.name == _LAYOUT_NODE for node in graph.node):
        return model
    inputs = [value for value in graph.input if value.name == WAVEFORM]
    if not inputs:
        raise ExportError(f"the graph has no {WAVEFORM!r} input (inputs: {', '.join(i.name for i in graph.input)})")
    for node in graph.node:
        node.input[:] = [_FLAT_WAVEFORM if name == WAVEFORM else name for name in node.input]
    for output in graph.output:
        if output.name == WAVEFORM:
            raise ExportError(f"the graph returns its {WAVEFORM!r} input unchanged; nothing to export")
    flatten = helper.make_node("Flatten", [WAVEFORM], [_FLAT_WAVEFORM], axis=-1, name=_LAYOUT_NODE)
    graph.node.insert(0, flatten)
    inputs[0].type.tensor_type.ClearField("shape")
    entry = next((p for p in model.metadata_props if p.key == WAVEFORM_LAYOUT), None) or model.metadata_props.add()
    entry.key, entry.value = WAVEFORM_LAYOUT, LAYOUT_ANY_LEADING
    return model


#: Notices the exporter prints on every export that say nothing about this graph (torchvision ops we never use,
#: internal deprecations, axis renaming, the optimizer skipping multi-output ops). Real errors still raise.
_EXPORTER_NOISE = (
    (r".*axis name.*will not be used.*", UserWarning),
    (r".*isinstance\(treespec, LeafSpec\).*", FutureWarning),
)
_EXPORTER_LOGGERS = ("torch.onnx._internal.exporter._registration", "onnxscript.optimizer._constant_folding")


@contextlib.contextmanager
def _quiet_exporter():
    levels = {name: logging.getLogger(name).level for name in _EXPORTER_LOGGERS}
    with warnings.catch_warnings():
        for message, category in _EXPORTER_NOISE:
            warnings.filterwarnings("ignore", message=message, category=category)
        for name in _EXPORTER_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def to_onnx_model(pipeline, *, opset: int = 18, example_samples: int = MODEL_SAMPLE_RATE, optimize: bool = True):
    """``ProbePipeline`` -> ``onnx.ModelProto`` following the graph contract (no metadata yet).

    ``optimize``: run the exporter's graph optimizer (constant folding, fewer nodes; about 40% of the export time).
    """
    import torch
    from onnx import numpy_helper
    from torch.export import Dim

    pipeline = pipeline.eval()
    # batch 2 and a length that is no constant of the model, so the exporter specialises neither
    waveform = torch.randn(2, int(example_samples), generator=torch.Generator().manual_seed(0))
    state = pipeline.default_state(2)
    args = (waveform, *(state[name] for name in OPTIONAL_INPUTS))
    batch = Dim("batch")
    samples = Dim("samples", min=1, max=2**31 - 2)
    shapes = {WAVEFORM: {0: batch, 1: samples}, **{name: {0: batch} for name in OPTIONAL_INPUTS}}
    temporary = [f"vocalprobe_out_{name}" for name in OUTPUT_NAMES]
    with torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(pipeline, args, None, dynamo=True, input_names=list(INPUT_NAMES),
                                    output_names=temporary, dynamic_shapes=shapes, opset_version=opset,
                                    optimize=optimize, verbose=False)
    model = program.model_proto
    graph = model.graph
    taken = _value_names(graph)
    for final, tmp in zip(OUTPUT_NAMES, temporary):
        if final in taken:
            _rename_value(graph, final, f"{final}__internal")
        _rename_value(graph, tmp, final)
    defaults = optional_input_defaults(pipeline.dim)
    for value in graph.input:
        if value.name in defaults:
            value.type.tensor_type.shape.dim[0].dim_param = STATE_BATCH_AXIS
            graph.initializer.append(numpy_helper.from_array(defaults[value.name], value.name))
    del graph.value_info[:]
    return apply_waveform_layout(model)


def export_pipeline(pipeline, out_path: str | Path, *, metadata: dict[str, str], opset: int = 18) -> Path:
    """Export ``pipeline`` with ``metadata`` to ``out_path`` (fp32); returns the path."""
    model = to_onnx_model(pipeline, opset=opset)
    set_metadata(model, metadata)
    return save_model(model, out_path)


# ----------------------------------------------------------------------------------------------------------------
# from a study


@dataclass(frozen=True)
class ProbeSelection:
    """Which probe of a study to export, and what the study measured for it."""

    dataset: str
    backbone_label: str
    backbone_name: str
    layer: int
    seed: int
    probe_path: Path
    is_best: bool
    chunk_seconds: float
    manifest: Path
    reason: str = ""  # why this layer, when a rule picked it (--layer frontier:M)


@dataclass
class ExportResult:
    path: Path
    metadata: dict[str, str]
    parity: Any  # ParityReport of the fp32 graph
    quantized_parity: Any | None = None  # ParityReport of the quantized graph, when quantized
    notes: list[str] = field(default_factory=list)


def _check_same_export(graph: Path, expected: dict[str, str]) -> None:
    """``graph`` must be the fp32 export of the same probe: its metadata equal to what would be written now."""
    from vocalprobe.export.metadata import read_metadata

    if not graph.is_file():
        raise ExportError(f"fp32 graph {graph} does not exist")
    found = read_metadata(graph)
    differ = sorted(k for k in {*found, *expected} if found.get(k) != expected.get(k))
    if differ:
        raise ExportError(f"{graph} is not the fp32 export of this probe: its metadata differ in "
                          f"{', '.join(differ[:5])}; export without reusing it")


def select_probe(study_dir: str | Path, *, dataset: str | None, backbone: str | None,
                 layer: str | int = "best") -> ProbeSelection:
    """Find the probe of (dataset, backbone, layer) in a study folder; errors list what the study has."""
    from vocalprobe.training.study.results import load_summary, probe_checkpoint

    study_dir = Path(study_dir)
    summary = load_summary(study_dir)
    choices = summary.choices
    datasets = sorted({c.dataset for c in choices})
    if dataset is None:
        if len(datasets) != 1:
            raise ExportError(f"{study_dir}: the study has datasets {datasets}; choose one with --dataset")
        dataset = datasets[0]
    in_ds = [c for c in choices if c.dataset == dataset]
    if not in_ds:
        raise ExportError(f"{study_dir}: no dataset {dataset!r} in this study (it has {', '.join(datasets)})")
    if backbone is None:
        if len(in_ds) != 1:
            raise ExportError(f"{study_dir}: dataset {dataset} has backbones "
                              f"{[c.backbone for c in in_ds]}; choose one with --backbone")
        choice = in_ds[0]
    else:
        wanted = str(backbone).strip()
        matches = [c for c in in_ds if wanted in (c.backbone, c.backbone_name)
                   or wanted.lower() == c.backbone.lower() or Path(c.backbone_name).name == wanted]
        if not matches:
            raise ExportError(f"{study_dir}: no backbone {wanted!r} for dataset {dataset} (it has "
                              f"{', '.join(c.backbone for c in in_ds)})")
        choice = matches[0]
    ds_info = next(d for d in summary.datasets if d.name == dataset)
    chunk_seconds = float(summary.config.get("chunk_seconds", 20.0))
    if str(layer).strip().lower() == "best":
        return ProbeSelection(dataset, choice.backbone, choice.backbone_name, choice.best_layer, choice.exported_seed,
                              study_dir / choice.probe_path, True, chunk_seconds, Path(ds_info.manifest))
    frontier = _frontier_layer(study_dir, summary, choice, str(layer))
    try:
        number = int(str(layer)) if frontier is None else frontier[0]
    except ValueError:
        raise ExportError(f"--layer must be 'best', a layer number or frontier:M, got {layer!r}") from None
    if number not in choice.layers:
        raise ExportError(f"{choice.backbone} on {dataset}: the study probed layers {list(choice.layers)}, "
                          f"not {number}")
    results = [r for r in summary.results
               if r.dataset == dataset and r.backbone == choice.backbone and r.layer == number]
    best = max(results, key=lambda r: (r.val_uar, -r.seed))  # best Val UAR; ties -> the lowest seed
    path = probe_checkpoint(study_dir, dataset, choice.backbone, number, best.seed)
    return ProbeSelection(dataset, choice.backbone, choice.backbone_name, number, best.seed, path,
                          number == choice.best_layer, chunk_seconds, Path(ds_info.manifest),
                          "" if frontier is None else frontier[1])


def _frontier_layer(study_dir: Path, summary, choice, spec: str) -> tuple[int, str] | None:
    """``--layer frontier:M``: (the cheapest layer within M Val UAR points of the best, why; ``study.frontier``);
    None for any other spec."""
    from vocalprobe.training.study.frontier import frontier_layer, parse_frontier_spec

    margin = parse_frontier_spec(spec)
    if margin is None:
        return None
    return frontier_layer(study_dir, summary, choice, margin)


def _layer_choice(selection: ProbeSelection, spec: str | int) -> str:
    """The metadata's ``layer_choice``: best, frontier:M (the rule that picked it) or manual."""
    if selection.reason:
        return str(spec).strip().lower()
    return "best" if selection.is_best else "manual"


def median_train_duration(manifest) -> float:
    """The default analysis window: the median duration of the Train clips, in seconds."""
    from vocalprobe.runtime.core.audio import audio_info

    durations = []
    for row in manifest.split("train").rows:
        if row.start is not None and row.end is not None:
            durations.append(row.end - row.start)
            continue
        try:
            info = audio_info(manifest.audio_path(row))
        except VocalprobeError:
            continue  # unreadable clips were not in the study either
        end = info.duration if row.end is None else min(row.end, info.duration)
        durations.append(end - (row.start or 0.0))
    durations = [d for d in durations if d > 0]
    if not durations:
        raise ExportError("no readable Train clip to derive the default analysis window from")
    return float(statistics.median(durations))


def parity_clips(manifest, chunk_samples: int, *, split: str = "test", seconds: Sequence[float] = PARITY_SECONDS,
                 max_rows: int = 20) -> list[np.ndarray]:
    """Real clips of the manifest, cut or tiled to each parity length, plus one of 1.25 x the chunk limit."""
    from vocalprobe.runtime.core.clips import load_row

    pool: list[np.ndarray] = []
    for row in manifest.split(split).rows[:max_rows]:
        try:
            samples = load_row(manifest, row)
        except VocalprobeError:
            continue
        if samples.size and np.max(np.abs(samples)) > 0:
            pool.append(samples)
        if len(pool) >= 4:
            break
    if not pool:
        raise ExportError(f"no readable, non-silent {split} clip for the parity check")
    lengths = [max(1, int(round(s * MODEL_SAMPLE_RATE))) for s in seconds] + [chunk_samples + chunk_samples // 4]
    clips = []
    for i, n in enumerate(lengths):
        source = pool[i % len(pool)]
        reps = -(-n // source.size)
        clips.append(np.ascontiguousarray(np.tile(source, reps)[:n], dtype=np.float32))
    return clips


def export_from_study(study_dir: str | Path, out_path: str | Path, *, dataset: str | None = None,
                      backbone: str | None = None, layer: str | int = "best", quantize: str = "none",
                      parity: bool = True, quant_tolerance: float | None = None,
                      fp32_graph: str | Path | None = None,
                      log: Callable[[str], None] | None = None) -> ExportResult:
    """Export a study's probe (default: the best layer on Val) as one ONNX graph at ``out_path``.

    ``quantize``: a mode of ``export.quant_modes``; ``quant_tolerance``: max |Δprobability| allowed for a quantized
    graph (default: the mode's ``atol``). ``fp32_graph``: this probe's fp32 graph, exported earlier by this function
    (a fusion member, say): quantized instead of exporting and checking the same graph again; refused unless its
    metadata is exactly what this export would write (same probe, study, manifest and vocalprobe version).
    """
    import torch
    from vocalprobe.export.families import family_of
    from vocalprobe.export.metadata import build_metadata, read_metadata
    from vocalprobe.export.parity import check_parity
    from vocalprobe.runtime.core.audio import seconds_to_samples
    from vocalprobe.runtime.core.manifest import read_manifest
    from vocalprobe.training.backbones import load_backbone
    from vocalprobe.training.deployable import ProbePipeline
    from vocalprobe.training.probe import load_probe
    from vocalprobe.training.whisper.encoder import MAX_SAMPLES as WHISPER_MAX_SAMPLES

    log = log or (lambda message: None)
    if quantize not in quant_modes.names():
        raise ExportError(f"--quantize must be one of {', '.join(quant_modes.names())}, got {quantize!r}")
    mode = quant_modes.mode(quantize)
    out_path = Path(out_path)
    if out_path.suffix != ".onnx":
        raise ExportError(f"--out must end in .onnx, got {out_path}")
    selection = select_probe(study_dir, dataset=dataset, backbone=backbone, layer=layer)
    clf, info = load_probe(selection.probe_path)
    if info.layer != selection.layer:
        raise ExportError(f"{selection.probe_path}: the checkpoint is for layer {info.layer}, the study says "
                          f"{selection.layer}")
    if selection.reason:
        log(selection.reason)
    log(f"probe: {selection.backbone_label} layer {info.layer} (seed {selection.seed}) on {selection.dataset}")
    loaded = load_backbone(info.backbone, revision=info.backbone_revision)
    if info.backbone_fingerprint and loaded.fingerprint not in (info.backbone_fingerprint, "unpinned"):
        raise ExportError(f"{info.backbone}: the weights changed since the study (fingerprint {loaded.fingerprint} "
                          f"!= {info.backbone_fingerprint}); re-run the study or restore the checkpoint")
    family = family_of(loaded.family)
    if not mode.applies_to(loaded.family):
        raise ExportError(quant_modes.refusal(quantize, loaded.family))
    pipeline = ProbePipeline(loaded.model, clf.model_, info.layer).float()
    if not selection.manifest.is_file():
        raise ExportError(f"the study's manifest {selection.manifest} is missing (paths are relative to the "
                          "folder the study ran in); run export from there")
    manifest = read_manifest(selection.manifest)
    chunk_samples = seconds_to_samples(selection.chunk_seconds, MODEL_SAMPLE_RATE)
    if loaded.family == "whisper" and chunk_samples > WHISPER_MAX_SAMPLES:  # the study refuses it too
        raise ExportError(f"{selection.backbone_label}: the study's chunk limit {selection.chunk_seconds:g} s exceeds "
                          "the 30 s a Whisper encoder sees at once; re-run the study with chunk_seconds <= 30")
    extra = {
        "backbone": selection.backbone_label, "backbone_name": info.backbone, "backbone_id": info.backbone_id,
        "backbone_revision": info.backbone_revision, "backbone_fingerprint": info.backbone_fingerprint,
        "family": loaded.family, "layer": str(info.layer), "layer_choice": _layer_choice(selection, layer),
        "num_layers_total": str(loaded.num_layers), "seed": str(selection.seed), "dataset": selection.dataset,
        "preprocessing": info.preprocessing, "truncation": family.truncation,
        "val_uar": None if info.val_uar is None else repr(float(info.val_uar)),
        "test_uar": None if info.test_uar is None else repr(float(info.test_uar)),
        "manifest_sha256": manifest.content_hash(), QUANTIZATION: quantize,
        "graph_inputs": list(INPUT_NAMES), "graph_outputs": list(OUTPUT_NAMES),
    }
    metadata = build_metadata(classes=list(info.labels), sample_rate=MODEL_SAMPLE_RATE,
                              sample_duration=median_train_duration(manifest), max_chunk_samples=chunk_samples,
                              extra=extra)
    clips = parity_clips(manifest, chunk_samples) if parity else []
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out_path.parent) as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        report = quant_report = None
        if fp32_graph is not None:
            _check_same_export(Path(fp32_graph), {**metadata, QUANTIZATION: "none"})
            log(f"fp32 graph: {fp32_graph} (checked against PyTorch when it was exported)")
            shutil.copyfile(fp32_graph, fp32)
        else:
            log(f"exporting with torch.onnx (dynamo), opset {family.opset}")
            with torch.no_grad():
                export_pipeline(pipeline, fp32, metadata={**metadata, QUANTIZATION: "none"}, opset=family.opset)
        if parity and fp32_graph is None:
            log("parity: PyTorch vs onnxruntime on real clips of " + ", ".join(
                f"{c.size / MODEL_SAMPLE_RATE:g} s" for c in clips))
            report = check_parity(pipeline, fp32, clips, chunk_samples=chunk_samples, atol=family.atol,
                                  atol_embedding=family.atol_embedding, relative=family.relative)
        final = fp32
        if mode.function is not None:
            quantized = Path(tmp) / "quantized.onnx"
            log(f"quantizing: {mode.help}")
            mode.quantize(fp32, quantized)
            if parity:
                tolerance = quant_tolerance if quant_tolerance is not None else mode.atol
                quant_report = check_parity(pipeline, quantized, clips, chunk_samples=chunk_samples,
                                            atol=tolerance, atol_embedding=None, label=quantize)
            final = quantized
        os.replace(final, out_path)
    return ExportResult(out_path, read_metadata(out_path), report, quant_report)
