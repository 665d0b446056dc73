"""`vocalprobe probe fit` on an archive's annotated windows (stored vectors only), and `probe apply` with numpy; the
torch-blocked CLI runs embed, label import, search and probe apply."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from runtime_graphs import build_band_graph, tone_track
from torch_blocked import run_cli_without_torch
from typer.testing import CliRunner

from vocalprobe.cli import app

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[2]
#: (start_s, end_s, frequency, class) in every recording.
TONES = ((0.5, 1.0, 600.0, "low"), (2.0, 2.5, 4200.0, "high"))
BACKGROUND_AT = (3.0, 3.5)


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def labelled_archive(root: Path, graph: Path, n_files: int = 6, embed=cli) -> tuple[Path, Path]:
    """An archive of ``n_files`` recordings (0.5 s windows) and a reviewed Raven table of their tones and of one
    background window each, imported as annotations. Returns (db, audio folder)."""
    audio = root / "audio"
    rows = ["Selection\tBegin Time (s)\tEnd Time (s)\tBegin Path\tFile Offset (s)\tLabel"]
    for i in range(n_files):
        path = audio / f"REC{i % 2 + 1:02d}" / f"2021050{i + 1}_040000.WAV"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), tone_track([(s, e, f) for s, e, f, _ in TONES], 4.0, 16_000, seed=i), 16_000,
                 subtype="FLOAT")
        for s, e, _, label in TONES + ((*BACKGROUND_AT, 0.0, "negative"),):
            rows.append(f"{len(rows)}\t{s}\t{e}\t{path.resolve()}\t{s}\t{label}")
    table = root / "reviewed.selections.txt"
    table.write_text("\n".join(rows) + "\n", encoding="utf-8")
    db = root / "db"
    assert embed("embed", audio, "-m", graph, "--db", db).returncode == 0 if embed is not cli else \
        cli("embed", audio, "-m", graph, "--db", db).exit_code == 0
    return db, audio


def import_labels(root: Path, db: Path) -> None:
    """'negative' rows become background windows: they are imported as negatives of both classes."""
    table = root / "reviewed.selections.txt"
    lines = table.read_text(encoding="utf-8").splitlines()
    positives = root / "positives.txt"
    positives.write_text("\n".join(line for line in lines if not line.endswith("negative")) + "\n", encoding="utf-8")
    negatives = root / "negatives.txt"
    negatives.write_text("\n".join([lines[0]] + [line for line in lines if line.endswith("negative")]) + "\n",
                         encoding="utf-8")
    assert cli("label", "import", positives, "--db", db).exit_code == 0
    result = cli("label", "import", negatives, "--db", db, "--class", "low")
    assert result.exit_code == 0 and "0 row(s) unmatched" in result.output, result.output


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    return build_band_graph(tmp_path_factory.mktemp("graph") / "band.onnx", sample_duration=0.5)


def test_probe_fit_trains_on_stored_vectors_and_apply_finds_the_calls(tmp_path, graph):
    db, audio = labelled_archive(tmp_path, graph)
    import_labels(tmp_path, db)
    result = cli("probe", "fit", "--db", db, "--out", tmp_path / "head", "--precision", "0.9", "--seed", "3")
    assert result.exit_code == 0, result.output
    assert "classes: high (6), low (6), background (6)" in result.output and "held-out UAR" in result.output
    head = json.loads((tmp_path / "head" / "head.json").read_text())
    assert head["classes"] == ["high", "low", "background"] and head["kind"] == "mlp"
    assert head["split"] == {"train": 12, "val": 3, "test": 3} and 0.0 <= head["test_uar"] <= 1.0
    assert set(head["thresholds"]) == {"high", "low", "background"}
    assert list(csv.reader((tmp_path / "head" / "thresholds.csv").open()))[0] == ["class", "threshold"]
    assert not list((tmp_path / "head").glob("*.pt")) and not list((tmp_path / "head").glob("*.pkl"))

    # the numpy head is the torch probe
    from vocalprobe.runtime.archive.head import load_head
    from vocalprobe.runtime.archive.store import ArchiveDB
    from vocalprobe.training.probe import load_probe

    clf, info = load_probe(tmp_path / "head" / "probe")
    assert info.labels == ("high", "low", "background") and info.hidden_sizes == (128, 64, 32)
    with ArchiveDB.open_reader(db) as archive:
        vectors = archive.vectors([w.id for w in archive.windows()])
    np.testing.assert_allclose(load_head(tmp_path / "head").predict_proba(vectors), clf.predict_proba(vectors),
                               atol=1e-5)

    # same seed, same head
    again = cli("probe", "fit", "--db", db, "--out", tmp_path / "head2", "--seed", "3")
    assert again.exit_code == 0
    assert (tmp_path / "head2" / "probe.safetensors").read_bytes() == (tmp_path / "head" / "probe.safetensors"
                                                                       ).read_bytes()

    applied = cli("probe", "apply", "--db", db, "--head", tmp_path / "head", "-o", tmp_path / "detections")
    assert applied.exit_code == 0, applied.output
    rows = list(csv.DictReader((tmp_path / "detections" / "detections.csv").open()))
    found = {(r["file"], float(r["start_s"]), r["label"]) for r in rows}
    numpy_head = load_head(tmp_path / "head")
    probs = numpy_head.predict_proba(vectors)
    with ArchiveDB.open_reader(db) as archive:
        names = {rid: r.filename for rid, r in archive.recordings().items()}
        windows = archive.windows()
    expected = {(names[w.recording_id], w.start_s, c) for w, p in zip(windows, probs)
                for j, c in enumerate(numpy_head.classes) if c != "background" and p[j] >= numpy_head.thresholds[c]}
    assert found == expected  # every window at or above its class's threshold, background never
    calls = {(f"REC{i % 2 + 1:02d}/2021050{i + 1}_040000.WAV", s, label) for i in range(6) for s, _, _, label in TONES}
    assert len(found & calls) >= 10  # the tones are found (thresholds are set for precision 0.9 on 6 held out)
    for name in names.values():
        assert (tmp_path / "detections" / Path(name).parent / (Path(name).stem + ".selection.table.txt")).is_file()

    # High Freq is each recording's own Nyquist, at most the model's; a recording that moved keeps the model's
    narrow, gone = audio / "REC01" / "20210501_040000.WAV", audio / "REC02" / "20210502_040000.WAV"
    sf.write(str(narrow), np.zeros(2_000 * 4, dtype=np.float32), 2_000, subtype="FLOAT")  # as if recorded at 2 kHz
    gone.unlink()
    assert cli("probe", "apply", "--db", db, "--head", tmp_path / "head", "-o", tmp_path / "band").exit_code == 0
    tops = {}
    for table in (tmp_path / "band").rglob("*.selection.table.txt"):
        if table.name != "detections.selection.table.txt":
            rows = list(csv.DictReader(table.open(encoding="utf-8"), delimiter="\t"))
            tops[table.stem.split(".")[0]] = {float(r["High Freq (Hz)"]) for r in rows}
    assert tops.pop("20210501_040000") == {1000.0} and tops.pop("20210502_040000") == {8000.0}
    assert all(top == {8000.0} for top in tops.values() if top), tops


def test_linear_probe_and_too_few_labels(tmp_path, graph):
    db, _ = labelled_archive(tmp_path, graph, n_files=2)
    import_labels(tmp_path, db)
    few = cli("probe", "fit", "--db", db, "--out", tmp_path / "head")
    assert few.exit_code == 1 and "label at least 3 windows per class" in few.output
    db3, _ = labelled_archive(tmp_path / "three", graph, n_files=3)
    import_labels(tmp_path / "three", db3)
    linear = cli("probe", "fit", "--db", db3, "--out", tmp_path / "linear", "--linear")
    assert linear.exit_code == 0, linear.output
    head = json.loads((tmp_path / "linear" / "head.json").read_text())
    assert head["kind"] == "linear" and head["hidden_sizes"] == []
    # 3 labels per class leave 1 val + 1 test window: trained, but no precision is claimed and the output says so
    assert "WARNING: too few labels to trust this head: high, low have fewer than 4 held-out windows" in linear.output
    assert "threshold low: " in linear.output and "precision not shown: set on 2 held-out window(s)" in linear.output
    assert head["precision_reached"]["low"] is False and head["precision_reached"]["high"] is False


def test_probe_fit_with_enough_labels_gives_no_warning(tmp_path, graph):
    from vocalprobe.training.archive_probe import RECOMMENDED_PER_CLASS, fit_head

    db, _ = labelled_archive(tmp_path, graph, n_files=RECOMMENDED_PER_CLASS)
    import_labels(tmp_path, db)
    report = fit_head(db, tmp_path / "head", resamples=50)
    assert report.too_few_held_out == () and report.held_out == {"high": 4, "low": 4, "background": 4}
    result = cli("probe", "fit", "--db", db, "--out", tmp_path / "head2")
    assert result.exit_code == 0 and "WARNING" not in result.output and "not shown" not in result.output


def test_precision_threshold_is_the_lowest_that_reaches_the_target():
    from vocalprobe.training.archive_probe import precision_threshold

    scores = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5])
    positive = np.array([True, True, False, True, False, True])
    assert precision_threshold(scores, positive, 0.75) == (0.7, True)  # 3 of 4 at 0.7
    assert precision_threshold(scores, positive, 1.0) == (0.9, True)
    assert precision_threshold(scores, np.zeros(6, bool), 0.5) == (1.0, False)


def test_embed_search_and_probe_apply_run_without_torch(tmp_path, graph):
    def blocked(*args):
        proc = run_cli_without_torch(*args)
        assert "LEAKED []" in proc.stderr, proc.stderr
        return proc

    db, audio = labelled_archive(tmp_path, graph, n_files=3, embed=blocked)
    import_labels(tmp_path, db)
    assert cli("probe", "fit", "--db", db, "--out", tmp_path / "head").exit_code == 0  # torch, in this process
    query = audio / "REC01" / "20210501_040000.WAV"
    found = blocked("search", query, "--start", "0.5", "--end", "1.0", "--db", db, "-o", tmp_path / "hits.txt")
    assert found.returncode == 0, found.stderr
    assert (tmp_path / "hits.txt").is_file()
    applied = blocked("probe", "apply", "--db", db, "--head", tmp_path / "head", "-o", tmp_path / "detections")
    assert applied.returncode == 0 and (tmp_path / "detections" / "detections.csv").is_file(), applied.stderr
    labels = blocked("label", "import", tmp_path / "positives.txt", "--db", db)
    assert labels.returncode == 0, labels.stderr
