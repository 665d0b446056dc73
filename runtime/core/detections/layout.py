"""The stream output folder's format: every file name and column of what ``stream`` (and ``merge``, ``probe
apply``) write under ``--out``, and the one reader of its detections. Review, score-events, probe apply and the demo
name files and columns through this module only; ``tables``, ``run_tables`` and ``jsonl`` write them.

Layout under the output folder (NAME: a recording's path relative to the folder ``stream`` was given, its extension
replaced by the format's suffix, ``table_path``):

* per recording (``SUFFIXES``): ``NAME.selection.table.txt`` (Raven, ``RAVEN_COLUMNS``), ``NAME.detections.csv``
  (``TABLE_COLUMNS``: ``start_time`` empty when the name carries no recorder's clock), ``NAME.birdnet.csv``
  (``BIRDNET_COLUMNS``), ``NAME.labels.txt`` (Audacity), ``NAME.kaleidoscope.csv`` (``KALEIDOSCOPE_COLUMNS``),
  ``NAME.detections.parquet`` (the CSV's columns, typed: ``start_time`` a timestamp, or null);
* for the whole run (``COMBINED``): ``detections.selection.table.txt``, ``detections.csv``, ``detections.birdnet.csv``,
  ``detections.kaleidoscope.csv``, ``detections.parquet``, and ``detections.jsonl`` (one event per line, appended);
* with ``stream --scores`` (``SCORE_SUFFIXES``): ``NAME.scores.parquet`` (pyarrow importable) or ``NAME.scores.csv``,
  every window's score of every class in OpenSoundscape's score-table shape (``SCORE_INDEX``: ``file`` as the
  detections name it, ``start_time`` and ``end_time`` in seconds into the recording, then one column per class, in
  the model's order), which ``vocalprobe rethreshold`` turns into detection tables again without the model, and the
  run's (``SCORES_COMBINED``): ``scores.parquet`` or ``scores.csv``;
* ``errors.csv`` (``ERRORS_COLUMNS``: the inputs that could not be read), ``analysis_params.csv``
  (``PARAMS_COLUMNS``: what the run was made with), ``review.html`` (``vocalprobe review``'s default page);
* the run's journal (``runtime.field.run_state.JOURNAL_NAME``) and its lock (``runtime.core.out_lock.LOCK_NAME``),
  hidden files.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from vocalprobe.runtime.core.errors import VocalprobeError

FORMATS = ("raven", "csv", "jsonl", "birdnet-csv", "audacity", "kaleidoscope", "parquet")

RAVEN_COLUMNS = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                 "High Freq (Hz)", "Begin File", "Begin Path", "File Offset (s)", "Class", "Confidence")
CSV_COLUMNS = ("file", "start_s", "end_s", "label", "confidence")
#: The CSV's (and parquet's) last column: the event's clock time when the recording's name carries its start time,
#: else empty (null in parquet). Always there, so the tables of any two runs have the same shape.
CSV_TIME_COLUMN = "start_time"
#: The columns of the CSV and parquet tables.
TABLE_COLUMNS = CSV_COLUMNS + (CSV_TIME_COLUMN,)
BIRDNET_COLUMNS = ("Start (s)", "End (s)", "Scientific name", "Common name", "Confidence", "File")
KALEIDOSCOPE_COLUMNS = ("INDIR", "FOLDER", "IN FILE", "OFFSET", "DURATION", "scientific_name", "common_name",
                        "confidence", "lat", "lon", "week", "overlap", "sensitivity")
ERRORS_COLUMNS = ("file", "problem")
PARAMS_COLUMNS = ("parameter", "value")

RAVEN_SUFFIX = ".selection.table.txt"
CSV_SUFFIX = ".detections.csv"
#: Per-recording table suffix of each table format.
SUFFIXES = {"raven": RAVEN_SUFFIX, "csv": CSV_SUFFIX, "birdnet-csv": ".birdnet.csv", "audacity": ".labels.txt",
            "kaleidoscope": ".kaleidoscope.csv", "parquet": ".detections.parquet"}
#: The formats written per recording (all but the JSONL, which is one file for the run).
PER_FILE_FORMATS = tuple(SUFFIXES)

#: The first columns of a scores table (OpenSoundscape's index); one column per class follows.
SCORE_INDEX = ("file", "start_time", "end_time")
#: Per-recording scores table suffix of each scores format (``stream --scores``).
SCORE_SUFFIXES = {"parquet": ".scores.parquet", "csv": ".scores.csv"}
#: The run's combined scores table of each scores format.
SCORES_COMBINED = {"parquet": "scores.parquet", "csv": "scores.csv"}

DETECTIONS_CSV = "detections.csv"
JSONL_NAME = "detections.jsonl"
#: The run's combined table of each format (in the output folder).
COMBINED = {"raven": "detections.selection.table.txt", "csv": DETECTIONS_CSV,
            "birdnet-csv": "detections.birdnet.csv", "kaleidoscope": "detections.kaleidoscope.csv",
            "parquet": "detections.parquet"}
ERRORS_NAME = "errors.csv"
PARAMS_NAME = "analysis_params.csv"
REVIEW_NAME = "review.html"


class DetectionsError(VocalprobeError):
    """A detections table (or output folder) that cannot be read: missing, or without the columns it needs."""


@dataclass(frozen=True)
class Detection:
    """One row of the detection tables."""

    file: str  # the input's name (relative to the folder given on the command line)
    start_s: float
    end_s: float
    label: str
    confidence: float


def table_path(out_dir: str | Path, name: str, suffix: str) -> Path:
    """Where the table of recording ``name`` (relative to the input folder) with ``suffix`` lies under ``out_dir``."""
    rel = Path(name)
    return Path(out_dir) / rel.parent / (rel.stem + suffix)


def detections_table(folder_or_table: str | Path) -> Path:
    """A run's combined CSV: ``folder_or_table`` is an output folder, or the table itself."""
    path = Path(folder_or_table)
    return path / DETECTIONS_CSV if path.is_dir() else path


def read_detections(folder_or_table: str | Path) -> list[Detection]:
    """The rows of a run's ``detections.csv`` (a stream output folder, or the table itself); extra columns (the
    recorder's ``start_time``) are ignored."""
    table = detections_table(folder_or_table)
    if not table.is_file():
        raise DetectionsError(f"{table}: no detections table (run `vocalprobe stream` with --format csv into this "
                              "folder)")
    with open(table, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DetectionsError(f"{table}: missing column(s) {', '.join(missing)}; a detections table has "
                                  f"columns {', '.join(CSV_COLUMNS)}")
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                rows.append(Detection(row["file"], float(row["start_s"]), float(row["end_s"]), row["label"],
                                      float(row["confidence"])))
            except ValueError:
                raise DetectionsError(f"{table} line {line}: start_s, end_s and confidence must be numbers") from None
    return rows
