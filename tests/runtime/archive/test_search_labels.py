"""`vocalprobe search` finds a planted call among 10,000 windows; `label import` matches Raven rows to windows and
reports the rows it cannot place."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from vocalprobe.runtime.archive.store import ArchiveDB


def test_search_finds_a_planted_call_among_10000_windows(tmp_path, graph, write_wav, run_cli):
    window = 800  # 0.05 s at 16 kHz: 10,000 windows in 500 s
    noise = 0.3 * np.random.default_rng(1).standard_normal(10_000 * window).astype(np.float32)
    planted = 7_321
    t = np.arange(window) / 16_000
    call = (0.5 * np.sin(2 * np.pi * 1800.0 * t)).astype(np.float32)
    noise[planted * window:(planted + 1) * window] = call
    write_wav(tmp_path / "audio" / "long.wav", noise, subtype="FLOAT")
    write_wav(tmp_path / "query.wav", np.concatenate([np.zeros(1600, np.float32), call]), subtype="FLOAT")
    result = run_cli(["embed", tmp_path / "audio", "-m", graph, "--db", tmp_path / "db", "--window", "0.05",
                      "--batch", "64"])
    assert result.exit_code == 0, result.output
    with ArchiveDB.open_reader(tmp_path / "db") as archive:
        assert archive.count_windows() == 10_000
    for extra in ([], ["--exact"]):
        out = tmp_path / f"hits{len(extra)}.txt"
        found = run_cli(["search", tmp_path / "query.wav", "--start", "0.1", "--end", "0.15", "--db", tmp_path / "db",
                         "-k", "10", "-o", out, *extra])
        assert found.exit_code == 0, found.output
        rows = list(csv.DictReader(out.open(encoding="utf-8"), delimiter="\t"))
        assert rows[0]["Rank"] == "1" and float(rows[0]["File Offset (s)"]) == planted * 0.05
        assert rows[0]["Begin Path"] == str((tmp_path / "audio" / "long.wav").resolve())
        assert float(rows[0]["Score"]) > 0.999 and len(rows) == 10
        assert [float(r["Score"]) for r in rows] == sorted((float(r["Score"]) for r in rows), reverse=True)
        table = list(csv.DictReader(out.with_suffix(".csv").open(encoding="utf-8")))
        assert table[0]["file"] == "long.wav" and float(table[0]["start_s"]) == planted * 0.05


def test_label_import_matches_rows_and_reports_the_rest(tmp_path, graph, tone_folder, run_cli):
    audio = tone_folder(tmp_path / "audio", n_files=2)
    assert run_cli(["embed", audio, "-m", graph, "--db", tmp_path / "db"]).exit_code == 0
    multi = tmp_path / "reviewed.txt"
    path = (audio / "REC02" / "20210502_040000.WAV").resolve()
    multi.write_text("Selection\tBegin Time (s)\tEnd Time (s)\tBegin Path\tFile Offset (s)\tAnnotation\n"
                     f"1\t10.0\t10.5\t{path}\t2.0\tyes\n"
                     f"2\t11.0\t11.5\t{path}\t0.5\tno\n"
                     f"3\t12.0\t12.5\t/nowhere/else.wav\t0.5\tyes\n"
                     f"4\t13.0\t13.5\t{path}\t99.0\tyes\n"
                     f"5\t14.0\t14.5\t{path}\t1.0\tmaybe\n", encoding="utf-8")
    result = run_cli(["label", "import", multi, "--db", tmp_path / "db", "--class", "high"])
    assert result.exit_code == 0, result.output
    assert "5 row(s) read, 2 annotation(s) added, 3 row(s) unmatched" in result.output
    assert "reviewed.txt:4: no recording /nowhere/else.wav in the archive" in result.output
    assert "reviewed.txt:5: no window of REC02/20210502_040000.WAV covers 99.000-99.500 s" in result.output
    assert "reviewed.txt:6: label 'maybe' is neither positive nor negative" in result.output
    again = run_cli(["label", "import", multi, "--db", tmp_path / "db", "--class", "high"])
    assert "0 annotation(s) added" in again.output  # importing a table twice adds nothing
    with ArchiveDB.open_reader(tmp_path / "db") as archive:
        labelled = {(archive.windows([i])[0].start_s, label, kind) for i, label, kind in archive.annotations()}
    assert labelled == {(2.0, "high", 1), (0.5, "high", 0)}
    bad = tmp_path / "no_label.txt"
    bad.write_text("Selection\tBegin Time (s)\tEnd Time (s)\n1\t0\t1\n", encoding="utf-8")
    refused = run_cli(["label", "import", bad, "--db", tmp_path / "db"])
    assert refused.exit_code == 1 and "no label column" in refused.output


def test_a_reviewed_hit_labels_its_window_alone_with_overlapping_windows(tmp_path, graph, tone_folder, run_cli):
    audio = tone_folder(tmp_path / "audio", n_files=1)
    assert run_cli(["embed", audio, "-m", graph, "--db", tmp_path / "db", "--hop", "0.25"]).exit_code == 0
    path = (audio / "REC01" / "20210501_040000.WAV").resolve()
    reviewed = tmp_path / "hits.reviewed.txt"
    reviewed.write_text("Selection\tBegin Time (s)\tEnd Time (s)\tBegin Path\tFile Offset (s)\tScore\tRank\tLabel\n"
                        f"1\t1.000\t1.500\t{path}\t1.000\t0.9\t1\tpositive\n"  # a hit: exactly window 1.0-1.5
                        f"2\t2.000\t2.200\t{path}\t2.000\t0.8\t2\tnegative\n",  # edited: windows holding half
                        encoding="utf-8")
    result = run_cli(["label", "import", reviewed, "--db", tmp_path / "db", "--class", "high"])
    assert result.exit_code == 0 and "2 row(s) read, 3 annotation(s) added" in result.output, result.output
    calls = tmp_path / "calls.txt"  # the same hit's times in a table of the user's own selections: the overlap rule
    calls.write_text("Selection\tBegin Time (s)\tEnd Time (s)\tBegin Path\tFile Offset (s)\tLabel\n"
                     f"1\t1.000\t1.500\t{path}\t1.000\tlow\n", encoding="utf-8")
    assert "1 row(s) read, 3 annotation(s) added" in run_cli(["label", "import", calls, "--db", tmp_path / "db"]).output
    with ArchiveDB.open_reader(tmp_path / "db") as archive:
        labelled = sorted((w.start_s, label, kind) for (i, label, kind), w in
                          zip(archive.annotations(), archive.windows([i for i, _, _ in archive.annotations()])))
    assert labelled == [(0.75, "low", 1), (1.0, "high", 1), (1.0, "low", 1), (1.25, "low", 1), (1.75, "high", 0),
                        (2.0, "high", 0)]


def _labels(db) -> list[tuple[str, float, float, str]]:
    with ArchiveDB.open_reader(db) as archive:
        names = {r.id: r.filename for r in archive.recordings().values()}
        return sorted((names[a.recording_id], a.start_s, a.end_s, a.label) for a in archive.annotation_rows())


def test_label_import_refuses_malformed_rows_naming_the_line(tmp_path, graph, tone_folder, run_cli):
    """Issue 24: nan times, a quote, U+2028 / form feed, too few fields, a tab in a class name: each an error naming
    its line, and nothing of that import is added."""
    audio = tone_folder(tmp_path / "audio", n_files=2)
    db = tmp_path / "db"
    assert run_cli(["embed", audio, "-m", graph, "--db", db]).exit_code == 0
    head = "Selection\tBegin Time (s)\tEnd Time (s)\tBegin File\tLabel\n"
    good = "1\t0.5\t1.0\t20210501_040000.WAV\tlow\n"
    cases = {"nan": (good + "2\tnan\t1.0\t20210501_040000.WAV\tlow\n", "3", "not a finite span"),
             "few": (good + "2\t0.5\t1.0\tlow\n", "3", "4 field(s), the header has 5"),
             "sep": (good + "2\t0.5\t1.0\t20210501_040000.WAV\tlo\u2028w\n", "3", "control character"),
             "ff": (good + "2\t0.5\t1.0\t20210501_040000.WAV\tlo\x0cw\n", "3", "control character")}
    for name, (body, line, why) in cases.items():
        table = tmp_path / f"{name}.txt"
        table.write_text(head + body, encoding="utf-8")
        result = run_cli(["label", "import", table, "--db", db])
        assert result.exit_code == 1 and f"{name}.txt:{line}:" in result.output and why in result.output, name
    assert _labels(db) == []
    quoted = tmp_path / "quoted.txt"  # Raven does not quote: a leading quote is part of the label, not a field
    quoted.write_text(head + '1\t0.5\t1.0\t20210501_040000.WAV\t"low\n2\t2.0\t2.5\t20210501_040000.WAV\thigh\n',
                      encoding="utf-8")
    result = run_cli(["label", "import", quoted, "--db", db])
    assert result.exit_code == 0 and "2 row(s) read" in result.output, result.output
    assert {label for *_, label in _labels(db)} == {'"low', "high"}
    bad_class = run_cli(["label", "import", quoted, "--db", db, "--class", "lo\tw"])
    assert bad_class.exit_code == 1 and "control character" in bad_class.output


def test_label_import_knows_ravens_table_names_and_recording_and_fails_on_nothing(tmp_path, graph, tone_folder,
                                                                                  run_cli):
    """Issue 21: ``NAME.wav.Table01.txt`` names its recording; --recording names it for any table; a run that
    labels no window exits non-zero."""
    audio = tone_folder(tmp_path / "audio", n_files=2)
    db = tmp_path / "db"
    assert run_cli(["embed", audio, "-m", graph, "--db", db]).exit_code == 0
    body = "Selection\tBegin Time (s)\tEnd Time (s)\tLabel\n1\t0.5\t1.0\tlow\n"
    raven = tmp_path / "20210502_040000.WAV.Table01.txt"
    raven.write_text(body, encoding="utf-8")
    result = run_cli(["label", "import", raven, "--db", db])
    assert result.exit_code == 0, result.output
    assert _labels(db) == [("REC02/20210502_040000.WAV", 0.5, 1.0, "low")]
    plain = tmp_path / "reviewed.txt"
    plain.write_text(body, encoding="utf-8")
    nothing = run_cli(["label", "import", plain, "--db", db])
    assert nothing.exit_code == 2 and "nothing was imported" in nothing.output
    named = run_cli(["label", "import", plain, "--db", db, "--recording", "20210501_040000.WAV"])
    assert named.exit_code == 0, named.output
    assert ("REC01/20210501_040000.WAV", 0.5, 1.0, "low") in _labels(db)
    table_csv = tmp_path / "reviewed.csv"
    table_csv.write_text('Begin Time (s),End Time (s),Begin File,Label\n2.0,2.5,20210501_040000.WAV,"hi, gh"\n',
                         encoding="utf-8")
    assert run_cli(["label", "import", table_csv, "--db", db]).exit_code == 0
    assert ("REC01/20210501_040000.WAV", 2.0, 2.5, "hi, gh") in _labels(db)


def test_search_says_which_query_window_it_embedded_and_each_hits_band(tmp_path, graph, write_wav, run_cli):
    """A long query is many windows: the command says which were embedded. High Freq is each hit recording's own
    Nyquist (at most the model's): a 2 kHz recording holds nothing above 1 kHz."""
    rng = np.random.default_rng(4)
    write_wav(tmp_path / "audio" / "wide.wav", 0.2 * rng.standard_normal(16_000 * 2).astype(np.float32))
    write_wav(tmp_path / "audio" / "narrow.wav", 0.2 * rng.standard_normal(2_000 * 2).astype(np.float32),
              sample_rate=2_000)
    write_wav(tmp_path / "query.wav", 0.2 * rng.standard_normal(16_000 * 3).astype(np.float32))
    assert run_cli(["embed", tmp_path / "audio", "-m", graph, "--db", tmp_path / "db", "--window", "0.5"]
                   ).exit_code == 0
    out = tmp_path / "hits.txt"
    whole = run_cli(["search", tmp_path / "query.wav", "--db", tmp_path / "db", "-k", "100", "-o", out])
    assert whole.exit_code == 0, whole.output
    assert "query: the mean of all 6 windows of query.wav (0.000-3.000 s of query.wav)" in whole.output
    assert "give --start/--end" in whole.output
    rows = list(csv.DictReader(out.open(encoding="utf-8"), delimiter="\t"))
    band = {Path(r["Begin Path"]).name: float(r["High Freq (Hz)"]) for r in rows}
    assert band == {"wide.wav": 8000.0, "narrow.wav": 1000.0}
    one = run_cli(["search", tmp_path / "query.wav", "--start", "1.1", "--end", "1.4", "--db", tmp_path / "db",
                   "-o", out])
    assert one.exit_code == 0, one.output
    assert "query: the window 1.000-1.500 s of query.wav, the one that overlaps --start..--end most" in one.output
    (tmp_path / "audio" / "narrow.wav").unlink()  # a recording that moved is still listed, at the model's band
    moved = run_cli(["search", tmp_path / "query.wav", "--db", tmp_path / "db", "-k", "100", "-o", out])
    assert moved.exit_code == 0, moved.output
    rows = list(csv.DictReader(out.open(encoding="utf-8"), delimiter="\t"))
    assert {float(r["High Freq (Hz)"]) for r in rows} == {8000.0}
