"""The stream output folder's layout (runtime/core/detections/layout.py): the one reader of a run's detections, as
review, score-events, probe apply and the demo use it, and its errors on a folder or table it cannot read."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from vocalprobe.cli import app
from vocalprobe.runtime.core.detections.layout import (
    CSV_SUFFIX,
    DETECTIONS_CSV,
    Detection,
    DetectionsError,
    read_detections,
    table_path,
)
from vocalprobe.runtime.core.detections.run_tables import combine_csv
from vocalprobe.runtime.core.detections.tables import Recording, write_table
from vocalprobe.runtime.field.events import Event, detected_events

ROWS = [Detection("site1/20210502_040000.WAV", 1.5, 3.0, "low", 0.9123),
        Detection("site1/20210502_040000.WAV", 62.25, 63.0, "high", 0.5)]


def stream_folder(root):
    """A run's folder as stream writes it: the recording's CSV (with the recorder's start_time) and the combined."""
    part = table_path(root, ROWS[0].file, CSV_SUFFIX)
    write_table("csv", ROWS, part, Recording(ROWS[0].file, "/card/" + ROWS[0].file, 8000.0))
    combine_csv([part], root / DETECTIONS_CSV)
    return root


def test_a_folder_and_its_table_read_as_the_rows_written(tmp_path):
    folder = stream_folder(tmp_path)
    assert table_path(folder, ROWS[0].file, CSV_SUFFIX) == folder / "site1" / "20210502_040000.detections.csv"
    assert read_detections(folder) == ROWS  # start_time is there, and ignored
    assert read_detections(folder / DETECTIONS_CSV) == ROWS
    assert detected_events(folder) == [Event("20210502_040000.WAV", 1.5, 3.0, "low"),
                                       Event("20210502_040000.WAV", 62.25, 63.0, "high")]


def test_what_cannot_be_read_says_why(tmp_path):
    with pytest.raises(DetectionsError, match="no detections table .* --format csv"):
        read_detections(tmp_path)
    (tmp_path / DETECTIONS_CSV).write_text("file,start_s,end_s,label\na.wav,1,2,low\n")
    with pytest.raises(DetectionsError, match="missing column.s. confidence"):
        read_detections(tmp_path)
    (tmp_path / DETECTIONS_CSV).write_text("file,start_s,end_s,label,confidence\na.wav,1,2,low,high\n")
    with pytest.raises(DetectionsError, match="line 2: start_s, end_s and confidence must be numbers"):
        read_detections(tmp_path)


def test_score_events_takes_the_output_folder(tmp_path):
    folder = stream_folder(tmp_path / "out")
    truth = tmp_path / "truth.csv"
    truth.write_text("file,start_s,end_s,label\n20210502_040000.WAV,1.0,3.0,low\n")
    result = CliRunner().invoke(app, ["score-events", str(folder), str(truth)])
    assert result.exit_code == 0, result.output
    assert "events: 2 detected, 1 in the ground truth" in result.output
    assert "precision 0.500 (1/2), recall 1.000 (1/1)" in result.output
