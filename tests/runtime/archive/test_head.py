"""head.json as a typed record (runtime/archive/head.py): written and read back unchanged, and a damaged or
foreign file refused with a message naming what is wrong, before any weight is used."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from vocalprobe.runtime.archive.head import HEAD_FORMAT, HEAD_JSON, WEIGHTS, HeadError, HeadRecord, load_head

RECORD = HeadRecord(kind="linear", classes=("call", "background"), hidden_sizes=(), thresholds={"call": 0.75,
                    "background": 1.0}, precision_target=0.9, precision_reached={"call": True, "background": False},
                    graph_sha256="ab" * 32, embedding_dim=4, seed=0, counts={"call": 5, "background": 7},
                    split={"train": 7, "val": 2, "test": 3}, test_uar=0.8, test_uar_ci95=(0.6, 0.95), val_uar=0.9,
                    database="/archive")


def write_safetensors(path, tensors: dict[str, np.ndarray]) -> None:
    """The safetensors layout (an 8-byte header size, a JSON header, raw little-endian data), float32 only."""
    header, offset = {}, 0
    for name, array in tensors.items():
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    text = json.dumps(header).encode()
    data = b"".join(a.astype("<f4").tobytes() for a in tensors.values())
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def head_folder(tmp_path, text: str, classes: int = 2, dim: int = 4):
    write_safetensors(tmp_path / WEIGHTS, {"mean": np.zeros(dim, np.float32), "std": np.ones(dim, np.float32),
                                           "head.weight": np.eye(classes, dim, dtype=np.float32),
                                           "head.bias": np.zeros(classes, np.float32)})
    (tmp_path / HEAD_JSON).write_text(text)
    return tmp_path


def test_a_record_round_trips_through_its_json_and_loads_as_a_head(tmp_path):
    text = RECORD.to_json()
    assert json.loads(text)["format"] == HEAD_FORMAT and json.loads(text)["test_uar_ci95"] == [0.6, 0.95]
    assert HeadRecord.from_json(text) == RECORD
    assert HeadRecord.from_json(text).to_json() == text
    head = load_head(head_folder(tmp_path, text))
    assert head.record == RECORD and head.classes == ("call", "background") and head.thresholds["call"] == 0.75
    assert head.predict_proba(np.ones((3, 4), np.float32)).shape == (3, 2)


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.pop("thresholds"), "missing thresholds"),
    (lambda d: d.update(embedding_dim="4"), "wrong type: embedding_dim"),
    (lambda d: d.update(test_uar_ci95=[0.6]), "wrong type: test_uar_ci95"),
    (lambda d: d.update(classes=["call", 3]), "wrong type: classes"),
    (lambda d: d.update(thresholds={"call": 0.5}), "no threshold for background"),
    (lambda d: d.update(format=HEAD_FORMAT + 1), "newer than this vocalprobe"),
])
def test_a_damaged_record_is_refused_with_what_is_wrong(tmp_path, change, message):
    data = json.loads(RECORD.to_json())
    change(data)
    with pytest.raises(HeadError, match=message):
        load_head(head_folder(tmp_path, json.dumps(data)))


def test_cut_json_and_weights_of_another_probe_are_refused(tmp_path):
    with pytest.raises(HeadError, match="not valid JSON"):
        load_head(head_folder(tmp_path, RECORD.to_json()[:50]))
    with pytest.raises(HeadError, match="does not hold the probe"):
        load_head(head_folder(tmp_path, RECORD.to_json(), dim=8))
    with pytest.raises(HeadError, match="a JSON object expected"):
        HeadRecord.from_json("[1, 2]")
