"""Detection tables (runtime/core/detections): Raven, CSV with recorder time, JSONL, formats."""

from __future__ import annotations

import csv
import json
from datetime import datetime

import pytest

from vocalprobe.runtime.core.detections.clock import parse_recorder_timestamp
from vocalprobe.runtime.core.detections.jsonl import JsonlError, JsonlWriter
from vocalprobe.runtime.core.detections.layout import CSV_COLUMNS, RAVEN_COLUMNS, Detection
from vocalprobe.runtime.core.detections.tables import Recording, parse_formats, write_table

DETECTIONS = [Detection("site1/20210502_040000.WAV", 1.5, 3.0, "low", 0.91234),
              Detection("site1/20210502_040000.WAV", 62.25, 63.0, "high", 0.5)]


def test_raven_table_columns_exact(tmp_path):
    path = tmp_path / "t.selection.table.txt"
    write_table("raven", DETECTIONS, path, Recording("20210502_040000.WAV", "/media/card/site1/20210502_040000.WAV",
                                                     8000))
    lines = path.read_text().splitlines()
    assert lines[0].split("\t") == ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)",
                                    "Low Freq (Hz)", "High Freq (Hz)", "Begin File", "Begin Path", "File Offset (s)",
                                    "Class", "Confidence"]
    assert list(RAVEN_COLUMNS) == lines[0].split("\t")
    assert lines[1].split("\t") == ["1", "Spectrogram 1", "1", "1.500", "3.000", "0.0", "8000.0",
                                    "20210502_040000.WAV", "/media/card/site1/20210502_040000.WAV", "1.500", "low",
                                    "0.9123"]
    assert lines[2].split("\t")[0] == "2" and len(lines) == 3


def test_csv_with_recorder_time(tmp_path):
    path = tmp_path / "d.csv"
    write_table("csv", DETECTIONS, path, Recording(DETECTIONS[0].file, "/media/card/" + DETECTIONS[0].file, 8000))
    rows = list(csv.reader(path.open()))
    assert rows[0] == list(CSV_COLUMNS) + ["start_time"]
    assert rows[2] == ["site1/20210502_040000.WAV", "62.250", "63.000", "high", "0.5000", "2021-05-02T04:01:02.250"]
    write_table("csv", DETECTIONS, path, Recording("site1/night.WAV", "/media/card/site1/night.WAV", 8000))
    no_clock = list(csv.reader(path.open()))
    assert no_clock[0] == list(CSV_COLUMNS) + ["start_time"]  # the same shape: the column is there, empty
    assert no_clock[1][-1] == "" and len(no_clock[1]) == len(no_clock[0])


def test_recorder_timestamps():
    assert parse_recorder_timestamp("20210502_040000.WAV") == datetime(2021, 5, 2, 4, 0, 0)
    assert parse_recorder_timestamp("SMA01234_20210502_235959.wav") == datetime(2021, 5, 2, 23, 59, 59)
    assert parse_recorder_timestamp("20210502T040000.flac") == datetime(2021, 5, 2, 4)
    assert parse_recorder_timestamp("recording_12.wav") is None
    assert parse_recorder_timestamp("99999999_999999.wav") is None


def test_jsonl_drops_events_of_unfinished_files(tmp_path):
    path = tmp_path / "e.jsonl"
    with JsonlWriter(path, 0) as writer:
        writer.begin()
        writer.write(Detection("a.wav", 0, 1, "low", 0.9))
        committed = writer.commit()
        writer.begin()
        writer.write(Detection("b.wav", 0, 1, "low", 0.9))  # b never finishes: held, then dropped on close
    assert path.stat().st_size == committed
    prefix = path.read_bytes()
    with path.open("a") as handle:
        handle.write('{"file": "b.wav", "start_s')  # a commit cut by a kill
    JsonlWriter(path, committed).close()
    assert path.read_bytes() == prefix  # appended to, never rewritten: only the uncommitted tail goes
    assert [json.loads(line)["file"] for line in path.read_text().splitlines()] == ["a.wav"]
    with pytest.raises(JsonlError, match="journal counts"):
        JsonlWriter(path, committed + 1)


def test_jsonl_retraction_precedes_the_new_rows_of_a_file(tmp_path):
    path = tmp_path / "e.jsonl"
    with JsonlWriter(path, 0) as writer:
        writer.begin()
        writer.write(Detection("a.wav", 0, 1, "low", 0.9))
        writer.commit()
        writer.begin()
        writer.write(Detection("a.wav", 0, 1, "mid", 0.8))
        writer.commit(retract="a.wav")
        writer.write(Detection("stdin", 2, 3, "low", 0.7))  # no begin: a live stream's row goes out at once
        assert path.read_text().splitlines()[-1].startswith('{"file": "stdin"')
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[1] == {"retract": "a.wav"} and lines[2]["label"] == "mid"


def test_formats():
    assert parse_formats("csv, RAVEN,csv") == ("csv", "raven")
    with pytest.raises(Exception, match="unknown format"):
        parse_formats("csv,xlsx")
