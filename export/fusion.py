"""Fuse exported graphs into ONE graph: the paper's late fusion, a (weighted) mean of the members' probabilities.

The fused graph keeps the graph contract: one ``waveform`` input (shared by every member), an optional shared
``peak``, and ``probabilities`` ``[batch, classes]`` = sum_i w_i * p_i with every member's columns reordered (by class
name) to the first member's order. ``embedding`` is the members' embeddings concatenated in member order. Every
member's state stays available under its prefix (inputs ``m0_prior_*``, outputs ``m0_stats_*``), so
``vocalprobe.runtime.engine.long_clips`` feeds long clips to a fused graph exactly as to a single one.

Members must share their class names (any order) and sample rate, chunk limit and default window; anything else is
refused with an error naming the files and the difference. The metadata key ``members`` lists each member's file,
backbone, layer, quantization and weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from vocalprobe.export.onnx_io import OnnxFileError, get_metadata, load_model, save_model, set_metadata
from vocalprobe.runtime.core.errors import VocalprobeError
from vocalprobe.runtime.core.graph_contract import (EMBEDDING, INT8_SAFE_WEIGHTS, INT8_WEIGHTS, MEMBERS, PEAK,
                                                    PRIOR_INPUTS,
                                                    PROBABILITIES, QUANTIZATION, STATE_BATCH_AXIS, STATS_OUTPUTS,
                                                    WAVEFORM, GraphMetadata, int8_weights)
from vocalprobe.runtime.engine.ensemble import normalized_weights

__all__ = ["FusionError", "fuse_models", "fusion_from_study"]


class FusionError(VocalprobeError):
    """Graphs that cannot be fused, or fusion options that make no sense."""


@dataclass
class _Member:
    path: Path
    model: object  # onnx.ModelProto
    info: GraphMetadata


def _load_member(path: str | Path) -> _Member:
    path = Path(path)
    try:
        model = load_model(path)
    except OnnxFileError as exc:
        raise FusionError(f"member graph {exc}") from None
    info = GraphMetadata.from_map(get_metadata(model), str(path))
    inputs = {i.name for i in model.graph.input}
    outputs = {o.name for o in model.graph.output}
    missing = [n for n in (WAVEFORM,) if n not in inputs] + [
        n for n in (info.class_outputs_key, info.embedding_outputs_key) if n and n not in outputs]
    if missing:
        raise FusionError(f"{path}: lacks {', '.join(missing)}; only graphs written by `vocalprobe export` "
                          "can be fused")
    return _Member(path, model, info)


def _refuse_member_as_output(paths: Sequence[str | Path], out_path: str | Path) -> None:
    """Writing the fused graph over a member would destroy an input silently; compared as resolved paths (and as
    the same file, for hard links)."""
    out = Path(out_path)
    for path in map(Path, paths):
        same = out.resolve() == path.resolve() or (out.exists() and path.exists() and out.samefile(path))
        if same:
            raise FusionError(f"--out {out} is the member graph {path}: the fused graph would overwrite it; "
                              "choose another --out")


def _check_compatible(members: list[_Member], sample_duration: float | None) -> None:
    first = members[0]
    problems = []
    for m in members[1:]:
        if set(m.info.classes) != set(first.info.classes):
            missing = sorted(set(first.info.classes) - set(m.info.classes))
            extra = sorted(set(m.info.classes) - set(first.info.classes))
            problems.append(f"{m.path.name} has different classes than {first.path.name}"
                            + (f" (lacks {missing})" if missing else "") + (f" (adds {extra})" if extra else ""))
        if m.info.sample_rate != first.info.sample_rate:
            problems.append(f"{m.path.name} runs at {m.info.sample_rate} Hz, {first.path.name} at "
                            f"{first.info.sample_rate} Hz")
        if m.info.max_chunk_samples != first.info.max_chunk_samples:
            problems.append(f"{m.path.name} has chunk limit {m.info.max_chunk_samples} samples, {first.path.name} "
                            f"{first.info.max_chunk_samples}: they were not extracted alike")
        if sample_duration is None and m.info.sample_duration != first.info.sample_duration:
            problems.append(f"{m.path.name} has a {m.info.sample_duration:g} s default window, {first.path.name} "
                            f"{first.info.sample_duration:g} s (choose one with --window)")
    if problems:
        raise FusionError("cannot fuse these graphs: " + "; ".join(problems))


def _opset_imports(members: list[_Member]) -> dict[str, int]:
    versions: dict[str, int] = {}
    for m in members:
        for entry in m.model.opset_import:
            domain = entry.domain or ""
            if domain in versions and versions[domain] != entry.version:
                raise FusionError(f"{m.path.name} uses opset {entry.version} of domain {domain or 'ai.onnx'!r}, "
                                  f"another member {versions[domain]}; re-export them with the same vocalprobe")
            versions[domain] = entry.version
    return versions


def _fused_int8_weights(members: list[_Member]) -> str | None:
    """One unsafe member makes the fusion unsafe (``INT8_WEIGHTS``)."""
    kinds = {kind for m in members if (kind := int8_weights(m.info.metadata))}
    unsafe = sorted(kinds - set(INT8_SAFE_WEIGHTS))
    return unsafe[0] if unsafe else (",".join(sorted(kinds)) or None)


def fuse_models(paths: Sequence[str | Path], out_path: str | Path, *, weights: Sequence[float] | None = None,
                sample_duration: float | None = None, extra_metadata: dict | None = None) -> Path:
    """Merge the member graphs at ``paths`` into one graph at ``out_path`` (written atomically), which may not be
    one of the members."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnx.compose import add_prefix

    from vocalprobe.export.metadata import build_metadata
    from vocalprobe.export.onnx_export import apply_waveform_layout

    if len(paths) < 2:
        raise FusionError(f"fusion needs at least 2 member graphs, got {len(paths)}")
    _refuse_member_as_output(paths, out_path)
    members = [_load_member(p) for p in paths]
    _check_compatible(members, sample_duration)
    w = normalized_weights(weights, len(members))
    opsets = _opset_imports(members)
    classes = list(members[0].info.classes)

    nodes, initializers, inputs, outputs = [], [], [], []
    peak_value = None
    weighted = []
    embeddings = []
    for i, m in enumerate(members):
        prefix = f"m{i}_"
        graph = add_prefix(m.model, prefix).graph
        shared = {f"{prefix}{WAVEFORM}": WAVEFORM, f"{prefix}{PEAK}": PEAK}
        for node in graph.node:
            node.input[:] = [shared.get(n, n) for n in node.input]
        for init in graph.initializer:
            if init.name == f"{prefix}{PEAK}":
                peak_value = init
                continue
            initializers.append(init)
        nodes.extend(graph.node)
        for value in graph.input:
            if value.name.removeprefix(prefix) in PRIOR_INPUTS:
                inputs.append(value)
        for value in graph.output:
            if value.name.removeprefix(prefix) in STATS_OUTPUTS:
                outputs.append(value)
        order = [list(m.info.classes).index(c) for c in classes]  # member column of each fused class
        order_name, weight_name = f"{prefix}class_order", f"{prefix}fusion_weight"
        initializers += [numpy_helper.from_array(np.asarray(order, np.int64), order_name),
                         numpy_helper.from_array(np.asarray(w[i], np.float32), weight_name)]
        nodes += [helper.make_node("Gather", [prefix + m.info.class_outputs_key, order_name],
                                   [f"{prefix}probabilities_aligned"], axis=1, name=f"{prefix}align"),
                  helper.make_node("Mul", [f"{prefix}probabilities_aligned", weight_name],
                                   [f"{prefix}probabilities_weighted"], name=f"{prefix}weight")]
        weighted.append(f"{prefix}probabilities_weighted")
        embeddings.append(prefix + m.info.embedding_outputs_key)
    nodes.append(helper.make_node("Sum", weighted, [PROBABILITIES], name="fusion_mean"))
    nodes.append(helper.make_node("Concat", embeddings, [EMBEDDING], axis=1, name="fusion_embedding"))
    graph_inputs = [helper.make_tensor_value_info(WAVEFORM, TensorProto.FLOAT, ["batch", "samples"])]
    if peak_value is not None:
        peak_value.name = PEAK
        initializers.append(peak_value)
        graph_inputs.append(helper.make_tensor_value_info(PEAK, TensorProto.FLOAT, [STATE_BATCH_AXIS, 1]))
    graph_outputs = [helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["batch", len(classes)]),
                     helper.make_tensor_value_info(EMBEDDING, TensorProto.FLOAT, ["batch", None])]
    graph = helper.make_graph(nodes, "vocalprobe_fusion", graph_inputs + inputs, graph_outputs + outputs,
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              producer_name="vocalprobe")
    model.ir_version = max(m.model.ir_version for m in members)
    apply_waveform_layout(model)  # also when the members are older [batch, samples] graphs
    described = []
    for m, weight in zip(members, w):
        meta = m.info.metadata
        described.append({"file": m.path.name, "backbone": meta.get("backbone"), "layer": meta.get("layer"),
                          "dataset": meta.get("dataset"), "quantization": meta.get(QUANTIZATION, "none"),
                          "weight": float(weight)})
    first_meta = members[0].info.metadata
    extra = {MEMBERS: described, "dataset": first_meta.get("dataset"),
             "manifest_sha256": first_meta.get("manifest_sha256")
             if len({m.info.metadata.get("manifest_sha256") for m in members}) == 1 else None,
             "preprocessing": first_meta.get("preprocessing"), "backbone": "fusion",
             QUANTIZATION: ",".join(sorted({d["quantization"] for d in described})),
             INT8_WEIGHTS: _fused_int8_weights(members),
             **(extra_metadata or {})}
    metadata = build_metadata(classes=classes, sample_rate=members[0].info.sample_rate,
                              sample_duration=sample_duration or members[0].info.sample_duration,
                              max_chunk_samples=members[0].info.max_chunk_samples, extra=extra)
    set_metadata(model, metadata)
    try:
        return save_model(model, out_path)
    except onnx.checker.ValidationError as exc:
        raise FusionError(f"the fused graph is not valid ONNX ({str(exc).splitlines()[0]})") from None


def fused_test_uar(study_dir: str | Path, choices, weights: np.ndarray) -> float:
    """UAR on Test of the weighted mean of the saved probes' Test posteriors, over the clips every probe scored:
    what the fused graph of exactly these probes must reproduce."""
    from vocalprobe.runtime.core.metrics import uar

    study_dir = Path(study_dir)
    posteriors, rows, labels = [], [], []
    for c in choices:
        stem = (study_dir / c.probe_path).with_suffix("")
        posteriors.append(np.load(study_dir / c.posteriors_path, allow_pickle=False))
        rows.append(np.load(stem.with_name(stem.name + ".test_rows.npy"), allow_pickle=False))
        labels.append(np.load(stem.with_name(stem.name + ".test_labels.npy"), allow_pickle=False))
    common = rows[0]
    for r in rows[1:]:
        common = np.intersect1d(common, r)  # clips every probe could read
    fused = np.zeros((len(common), posteriors[0].shape[1]))
    for weight, proba, r in zip(weights, posteriors, rows):
        position = {int(row): i for i, row in enumerate(r)}
        fused += weight * proba[[position[int(row)] for row in common]]
    position = {int(row): i for i, row in enumerate(rows[0])}
    y = labels[0][[position[int(row)] for row in common]]
    return float(uar(y, fused.argmax(1)))


def fusion_from_study(study_dir: str | Path, out_path: str | Path, *, dataset: str | None = None,
                      weights: Sequence[float] | None = None, quantize: str = "none",
                      keep_members: bool = False, log: Callable[[str], None] | None = None) -> Path:
    """The paper's fusion: every backbone's best layer of ``dataset`` exported (with parity) and fused.

    The fused graph's ``test_uar`` metadata is the UAR of exactly these probes' fused Test posteriors.
    ``keep_members``: also keep the member graphs beside ``out_path`` (``<stem>.member<i>.onnx``).
    """
    import tempfile

    from vocalprobe.export.onnx_export import export_from_study, select_probe
    from vocalprobe.training.study.results import load_summary

    log = log or (lambda message: None)
    study_dir, out_path = Path(study_dir), Path(out_path)
    summary = load_summary(study_dir)
    datasets = sorted({c.dataset for c in summary.choices})
    if dataset is None:
        if len(datasets) != 1:
            raise FusionError(f"{study_dir}: the study has datasets {datasets}; choose one with --dataset")
        dataset = datasets[0]
    choices = [c for c in summary.choices if c.dataset == dataset]
    if len(choices) < 2:
        raise FusionError(f"{study_dir}: dataset {dataset!r} has {len(choices)} backbone(s); fusion needs 2 or more")
    if weights is not None and len(weights) != len(choices):
        raise FusionError(f"{len(weights)} weight(s) for {len(choices)} backbones "
                          f"({', '.join(c.backbone for c in choices)})")
    w = normalized_weights(weights, len(choices))  # refused here, before any member is exported
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fusion-", dir=out_path.parent) as tmp:
        member_paths = []
        for i, c in enumerate(choices):
            select_probe(study_dir, dataset=dataset, backbone=c.backbone)  # fails early with a clear message
            path = Path(tmp) / f"member{i}.onnx"
            log(f"member {i}: {c.backbone} layer {c.best_layer}")
            export_from_study(study_dir, path, dataset=dataset, backbone=c.backbone, quantize=quantize, log=log)
            member_paths.append(path)
        reference = fused_test_uar(study_dir, choices, w)
        fuse_models(member_paths, out_path, weights=list(w),
                    extra_metadata={"test_uar": repr(reference), "fusion_of": "best layers on Val"})
        if keep_members:
            for i, path in enumerate(member_paths):
                path.replace(out_path.with_name(f"{out_path.stem}.member{i}.onnx"))
    return out_path
