"""The stream's tables as other tools read them (issue 14): every format round-trips through a real reader,
the combined tables, analysis_params.csv, per-class thresholds, honest Raven names and bands, exit codes."""

from __future__ import annotations

import csv
import json
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from runtime_graphs import DEFAULT_FREQS, tone_track
from typer.testing import CliRunner

from vocalprobe.cli import app
from vocalprobe.runtime.core.digests import file_sha256
from vocalprobe.runtime.core.detections.clock import clock_time, parse_recorder_timestamp
from vocalprobe.runtime.core.detections.layout import BIRDNET_COLUMNS, KALEIDOSCOPE_COLUMNS, RAVEN_COLUMNS, Detection
from vocalprobe.runtime.core.detections.tables import OutputNameError, Recording, write_table

LOW, MID, HIGH = DEFAULT_FREQS
runner = CliRunner()
ALL = "raven,csv,jsonl,birdnet-csv,audacity,kaleidoscope,parquet"
DETECTIONS = [Detection("site1/20210502_040000.WAV", 1.5, 3.0, "low", 0.91234),
              Detection("site1/20210502_040000.WAV", 62.25, 63.0, "high", 0.5)]
RECORDING = Recording("site1/20210502_040000.WAV", "/media/card/site1/20210502_040000.WAV", 1000.0, 0.5)


def run_cli(args, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


def rows(path: Path, **kwargs) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, **kwargs))


def card(root: Path) -> Path:
    """Two nights of 6 s recordings at 22.05 kHz, one with a UTC-stamped name."""
    folder = root / "card"
    for i, name in enumerate(("night1/20210501_040000.wav", "night2/MARS-20150910T000000Z.wav")):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(folder / name, tone_track([(0.5 + i, 2.5 + i, DEFAULT_FREQS[i])], 6.0, 22_050, seed=i), 22_050)
    return folder


# -- one writer at a time, read back by a real reader ---------------------------------------------------------------
def test_raven_table_reads_back_with_crowsetta(tmp_path):
    from crowsetta.formats.bbox.raven import Raven

    path = tmp_path / "a.selection.table.txt"
    write_table("raven", DETECTIONS, path, RECORDING)
    table = Raven.from_file(path, annot_col="Class")
    assert list(table.df["annotation"]) == ["low", "high"]
    np.testing.assert_allclose(table.df["begin_time_s"], [1.5, 62.25])
    np.testing.assert_allclose(table.df["end_time_s"], [3.0, 63.0])
    np.testing.assert_allclose(table.df["high_freq_hz"], [1000.0, 1000.0])  # the band the model saw
    line = path.read_text().splitlines()[1].split("\t")
    assert line[RAVEN_COLUMNS.index("Begin File")] == "20210502_040000.WAV"
    assert line[RAVEN_COLUMNS.index("Begin Path")] == "/media/card/site1/20210502_040000.WAV"


@pytest.mark.parametrize("name", ["bad\tname.wav", "bad\nname.wav"])
def test_raven_refuses_names_it_cannot_hold(tmp_path, name):
    with pytest.raises(OutputNameError, match="Raven table"):
        write_table("raven", DETECTIONS, tmp_path / "t.txt", Recording(name, "/x/" + name, 8000.0))
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left


def test_names_with_quotes_and_commas_are_written_exactly(tmp_path):
    name = 'site "A", north.wav'
    path = tmp_path / "t.txt"
    write_table("raven", DETECTIONS, path, Recording(name, "/card/" + name, 8000.0))
    assert path.read_text().splitlines()[1].split("\t")[RAVEN_COLUMNS.index("Begin File")] == name  # no quoting


def test_birdnet_csv_columns_and_values(tmp_path):
    path = tmp_path / "a.birdnet.csv"
    write_table("birdnet-csv", DETECTIONS, path, RECORDING)
    with open(path, newline="") as handle:
        assert next(csv.reader(handle)) == ["Start (s)", "End (s)", "Scientific name", "Common name", "Confidence",
                                            "File"]
    got = rows(path)
    assert list(BIRDNET_COLUMNS) == list(got[0])
    assert got[0] == {"Start (s)": "1.500", "End (s)": "3.000", "Scientific name": "low", "Common name": "low",
                      "Confidence": "0.9123", "File": "/media/card/site1/20210502_040000.WAV"}


def test_kaleidoscope_columns_as_birdnet_analyzer_writes_them(tmp_path):
    path = tmp_path / "a.kaleidoscope.csv"
    write_table("kaleidoscope", DETECTIONS, path, RECORDING)
    got = rows(path)
    assert tuple(got[0]) == KALEIDOSCOPE_COLUMNS
    assert KALEIDOSCOPE_COLUMNS[:5] == ("INDIR", "FOLDER", "IN FILE", "OFFSET", "DURATION")
    assert (got[1]["INDIR"], got[1]["FOLDER"], got[1]["IN FILE"]) == ("/media/card", "site1", "20210502_040000.WAV")
    assert (got[1]["OFFSET"], got[1]["DURATION"], got[1]["scientific_name"], got[1]["confidence"]) == (
        "62.250", "0.750", "high", "0.5000")
    assert got[1]["overlap"] == "0.5" and got[1]["lat"] == ""  # BirdNET's own inputs vocalprobe does not have


def test_audacity_label_track(tmp_path):
    path = tmp_path / "a.labels.txt"
    write_table("audacity", DETECTIONS, path, RECORDING)
    with open(path, newline="") as handle:
        track = list(csv.reader(handle, delimiter="\t"))
    assert track == [["1.500", "3.000", "low 0.9123"], ["62.250", "63.000", "high 0.5000"]]


def test_parquet_reads_back_with_pyarrow(tmp_path):
    import pyarrow.parquet as pq

    path = tmp_path / "a.detections.parquet"
    write_table("parquet", DETECTIONS, path, RECORDING)
    table = pq.read_table(path).to_pylist()
    assert table[0] == {"file": "site1/20210502_040000.WAV", "start_s": 1.5, "end_s": 3.0, "label": "low",
                        "confidence": pytest.approx(0.91234), "start_time": datetime(2021, 5, 2, 4, 0, 1, 500_000)}
    assert len(table) == 2
    assert str(pq.read_schema(path).field("start_time").type) == "timestamp[ms]"
    no_clock = tmp_path / "b.detections.parquet"
    write_table("parquet", DETECTIONS, no_clock, Recording("site1/night.WAV", "/media/card/site1/night.WAV", 1000.0))
    assert pq.read_schema(no_clock) == pq.read_schema(path)  # the same columns and types, start_time null
    assert [r["start_time"] for r in pq.read_table(no_clock).to_pylist()] == [None, None]


def test_utc_names_keep_their_zone():
    start = parse_recorder_timestamp("MARS-20150910T000000Z.wav")
    assert start is not None and start.utcoffset() is not None and start.utcoffset().total_seconds() == 0
    assert clock_time(start, 61.5) == "2015-09-10T00:01:01.500Z"
    naive = parse_recorder_timestamp("20210502_040000.WAV")
    assert naive.tzinfo is None and clock_time(naive, 1.0) == "2021-05-02T04:00:01.000"
    assert parse_recorder_timestamp("20150910T000000Zulu.wav").tzinfo is None  # a word, not the zone


def test_parquet_without_pyarrow_is_one_line(tmp_path, graph, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed: import fails
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    result = run_cli(["stream", tmp_path, "-m", graph, "--format", "csv,parquet", "-o", tmp_path / "out"])
    assert result.exit_code == 1
    assert "error: --format parquet needs pyarrow: pip install 'vocalprobe[parquet]'" in result.output


# -- a whole run ------------------------------------------------------------------------------------------------------
def test_every_format_of_a_run_and_the_combined_tables(tmp_path, graph):
    import pyarrow.parquet as pq
    from crowsetta.formats.bbox.raven import Raven

    folder, out = card(tmp_path), tmp_path / "out"
    result = run_cli(["stream", folder, "-m", graph, "--window", "0.5", "--min-conf", "0.8", "--merge",
                      "--format", ALL, "-o", out])
    assert result.exit_code == 0, result.output
    combined = rows(out / "detections.csv")
    assert [r["file"] for r in combined] == ["night1/20210501_040000.wav", "night2/MARS-20150910T000000Z.wav"]
    assert combined[1]["start_time"].endswith("Z") and combined[1]["start_time"].startswith("2015-09-10T00:00:01")
    for stem in ("night1/20210501_040000", "night2/MARS-20150910T000000Z"):
        for suffix in (".selection.table.txt", ".detections.csv", ".birdnet.csv", ".labels.txt",
                       ".kaleidoscope.csv", ".detections.parquet"):
            assert (out / (stem + suffix)).is_file(), stem + suffix
    assert not list(out.rglob("*.tmp"))

    raven = Raven.from_file(out / "detections.selection.table.txt", annot_col="Class")
    assert list(raven.df["annotation"]) == ["low", "mid"]
    lines = [line.split("\t") for line in (out / "detections.selection.table.txt").read_text().splitlines()]
    col = {c: i for i, c in enumerate(lines[0])}
    second = lines[2]
    assert second[col["Selection"]] == "2"
    assert second[col["Begin Path"]] == str((folder / "night2/MARS-20150910T000000Z.wav").resolve())
    # On the recordings laid end to end: the second file begins after the first one's 6 s.
    assert float(second[col["Begin Time (s)"]]) == pytest.approx(6.0 + float(second[col["File Offset (s)"]]))
    assert second[col["High Freq (Hz)"]] == "8000.0"  # 22.05 kHz recordings: the model's 8 kHz band

    birdnet = rows(out / "detections.birdnet.csv")
    assert [r["Common name"] for r in birdnet] == ["low", "mid"]
    assert [r["IN FILE"] for r in rows(out / "detections.kaleidoscope.csv")] == [
        "20210501_040000.wav", "MARS-20150910T000000Z.wav"]
    assert [r["label"] for r in pq.read_table(out / "detections.parquet").to_pylist()] == ["low", "mid"]

    params = {r["parameter"]: r["value"] for r in rows(out / "analysis_params.csv")}
    assert params["model_sha256"] == file_sha256(graph)
    assert params["classes"] == "low;mid;high" and params["window_s"] == "0.5" and params["hop_s"] == "0.5"
    assert params["min_conf"] == "0.8" and params["merge"] == "True"
    assert params["vocalprobe_version"]


def test_a_hydrophone_file_at_2_khz_has_its_true_band_and_a_warning(tmp_path, graph, caplog):
    folder = tmp_path / "hydro"
    folder.mkdir()
    sf.write(folder / "hydrophone.wav", tone_track([(1.0, 3.0, LOW)], 5.0, 2_000), 2_000)
    with caplog.at_level("WARNING", logger="vocalprobe"):
        result = run_cli(["stream", folder, "-m", graph, "--window", "0.5", "--min-conf", "0.5", "-o",
                          tmp_path / "out"])
    assert result.exit_code == 0, result.output
    table = rows(tmp_path / "out" / "hydrophone.selection.table.txt", delimiter="\t")
    assert table and {r["High Freq (Hz)"] for r in table} == {"1000.0"}
    warnings = [r.getMessage() for r in caplog.records if "recorded at 2000 Hz" in r.getMessage()]
    assert warnings == ["hydrophone.wav: recorded at 2000 Hz: the model's band above 1000 Hz (to 8000 Hz) is empty"]


def test_a_name_raven_cannot_hold_is_listed_and_the_others_processed(tmp_path, graph):
    folder = card(tmp_path)
    sf.write(folder / "night1" / "bad\tname.wav", np.zeros(22_050, np.float32), 22_050)
    out = tmp_path / "out"
    result = run_cli(["stream", folder, "-m", graph, "--window", "0.5", "--min-conf", "0.8", "-o", out])
    assert result.exit_code == 2, result.output  # some failed, the others were processed
    errors = rows(out / "errors.csv")
    assert [e["file"] for e in errors] == ["night1/bad\tname.wav"] and "Raven table" in errors[0]["problem"]
    assert {r["file"] for r in rows(out / "detections.csv")} == {"night1/20210501_040000.wav",
                                                                 "night2/MARS-20150910T000000Z.wav"}
    assert not list(out.rglob("*.tmp")) and not (out / "night1" / "bad\tname.selection.table.txt").exists()


# -- per-class thresholds -------------------------------------------------------------------------------------------
def test_per_class_thresholds_from_a_csv(tmp_path, graph):
    folder, out = card(tmp_path), tmp_path / "out"
    common = ["stream", folder, "-m", graph, "--window", "0.5", "--format", "csv,jsonl", "-o", out]
    plain = run_cli([*common[:-1], tmp_path / "plain", "--min-conf", "0.3"])
    assert plain.exit_code == 0, plain.output
    everything = rows(tmp_path / "plain" / "detections.csv")
    table = tmp_path / "thresholds.csv"
    table.write_text("class,threshold\nlow,0.99\nmid,0.3\n")
    result = run_cli([*common, "--min-conf", table, "--min-conf-default", "0.97"])
    assert result.exit_code == 0, result.output
    got = rows(out / "detections.csv")
    limits = {"low": 0.99, "mid": 0.3, "high": 0.97}
    expected = [r for r in everything if float(r["confidence"]) >= limits[r["label"]]]
    assert got == expected and any(r["label"] == "mid" for r in got)
    assert len(got) < len(everything)
    params = {r["parameter"]: r["value"] for r in rows(out / "analysis_params.csv")}
    assert (params["min_conf"], params["min_conf.low"], params["min_conf.mid"]) == ("0.97", "0.99", "0.3")

    # Thresholds are output options: another table into the same folder resumes, it is not refused.
    table.write_text("class,threshold\nlow,0.5\n")
    again = run_cli([*common, "--min-conf", table])
    assert again.exit_code == 0 and "resuming: 2 of 2 files already done" in again.output, again.output
    assert "other output options" in again.output and "thresholds" in again.output
    rewritten = run_cli([*common, "--min-conf", table, "--rewrite-outputs"])
    assert rewritten.exit_code == 0 and "done: 2 file(s)" in rewritten.output, rewritten.output


def test_a_threshold_table_naming_unknown_classes_is_refused(tmp_path, graph):
    table = tmp_path / "thresholds.csv"
    table.write_text("class,threshold\nlow,0.5\nwhale,0.2\nbat,0.1\n")
    result = run_cli(["stream", card(tmp_path), "-m", graph, "--min-conf", table, "-o", tmp_path / "out"])
    assert result.exit_code == 1
    assert "--min-conf: bat, whale: not a class of the model (classes: low, mid, high)" in result.output
    table.write_text("label,score\nlow,0.5\n")
    result = run_cli(["stream", card(tmp_path), "-m", graph, "--min-conf", table, "-o", tmp_path / "out"])
    assert result.exit_code == 1 and "the first line must be 'class,threshold'" in result.output
    result = run_cli(["stream", card(tmp_path), "-m", graph, "--min-conf", "high", "-o", tmp_path / "out"])
    assert result.exit_code == 1 and "neither a number nor a class,threshold CSV" in result.output


# -- a live stream survives a glitch; a file does not --------------------------------------------------------------
def test_a_nan_block_on_stdin_is_reported_and_the_stream_goes_on(tmp_path, graph):
    x = tone_track([(0.5, 2.0, LOW), (6.0, 8.0, MID)], 10.0, 16_000, seed=4).astype("<f4")
    x[4 * 16_000 + 10] = np.nan
    out = tmp_path / "out"
    result = run_cli(["stream", "-", "--sample-rate", "16000", "--dtype", "f32", "--block-size", "16000", "-m", graph,
                      "--window", "0.5", "--min-conf", "0.8", "--merge", "-o", out], input=x.tobytes())
    assert result.exit_code == 2, result.output
    errors = rows(out / "errors.csv")
    assert errors == [{"file": "stdin", "problem": "NaN/inf samples at 4.000-5.000 s of the stream; "
                                                   "analysed as silence"}]
    labels = [json.loads(line)["label"] for line in (out / "detections.jsonl").read_text().splitlines()]
    assert labels == ["low", "mid"]  # the tone after the glitch is still found

    wav = tmp_path / "nan.wav"
    sf.write(wav, x, 16_000, subtype="FLOAT")
    result = run_cli(["stream", wav, "-m", graph, "--window", "0.5", "-o", tmp_path / "file"])
    assert result.exit_code == 1 and "NaN/inf samples" in result.output  # a file with NaN is rejected
    assert not (tmp_path / "file" / "nan.detections.csv").exists()


def test_rows_reach_the_tables_in_start_order_as_events_become_final(graph):
    """Merged events close out of order (a long one after shorter ones that began later): the tables still get
    (start, label) order, the JSONL each event as soon as it is final."""
    from vocalprobe.runtime.engine.onnx_model import OnnxModel
    from vocalprobe.runtime.field.stream import DetectConfig, detect_stream
    from vocalprobe.runtime.engine.windows import WindowPlan

    model = OnnxModel(graph)
    x = tone_track([(0.5, 6.0, LOW), (1.0, 1.6, MID), (3.0, 3.6, HIGH)], 7.0, 16_000, seed=5)  # tones overlap
    for merge in (True, False):
        final, table = [], []
        config = DetectConfig(WindowPlan.from_seconds(0.25, None, 16_000), min_conf=0.4, merge=merge)
        result = detect_stream([x[i:i + 3_000] for i in range(0, len(x), 3_000)], "a.wav", model, config,
                               on_event=final.append, on_row=table.append)
        assert table == sorted(final, key=lambda d: (d.start_s, d.label)) and result.n_detections == len(table)
        if merge:
            assert final != table  # the long event really closed after later ones
