"""Event scoring (runtime/field/events.py) and the `score-events` command."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from runtime_graphs import DEFAULT_CLASSES, DEFAULT_FREQS, build_band_graph, tone_track
from typer.testing import CliRunner

from vocalprobe.cli import app
from vocalprobe.runtime.field.events import (
    Event,
    EventTableError,
    chance_score,
    read_events,
    score_events,
    score_events_collar,
)


def test_event_scoring(tmp_path):
    truth = [Event("f.WAV", 1, 2, "low"), Event("f.WAV", 5, 6, "mid"), Event("f.WAV", 8, 9, "high")]
    detected = [Event("f.WAV", 1.5, 2.5, "low"), Event("f.WAV", 5.5, 6.5, "high"), Event("f.WAV", 8.2, 8.4, "high")]
    score = score_events(detected, truth)
    assert (score.n_correct, score.n_detected, score.n_found, score.n_truth) == (2, 3, 2, 3)
    assert score.precision == pytest.approx(2 / 3) and score.recall == pytest.approx(2 / 3)
    assert score.per_class["mid"] == (0.0, 0.0, 0, 1)
    assert chance_score(detected, truth)[0] <= score.precision
    table = tmp_path / "t.csv"
    table.write_text("file,start_s,end_s,label\nsome/dir/f.WAV,1,2,low\n")
    assert read_events(table) == [Event("f.WAV", 1.0, 2.0, "low")]


runner = CliRunner()


def test_score_events_cli(tmp_path):
    graph = build_band_graph(tmp_path / "m.onnx")
    truth_events = [(2, 3, "low"), (6, 7, "mid"), (11, 12.5, "high"), (15, 16, "low")]
    freq = dict(zip(DEFAULT_CLASSES, DEFAULT_FREQS))
    x = tone_track([(s, e, freq[label]) for s, e, label in truth_events], 18, 48_000)
    field = tmp_path / "field" / "20250601_053000.WAV"
    field.parent.mkdir()
    sf.write(field, x, 48_000, subtype="PCM_16")
    truth = tmp_path / "truth.csv"
    truth.write_text("file,start_s,end_s,label\n" + "".join(f"{field.name},{s},{e},{lab}\n"
                                                              for s, e, lab in truth_events))
    out = tmp_path / "out"
    streamed = runner.invoke(app, ["stream", str(field.parent), "-m", str(graph), "--window", "0.5", "--merge",
                                   "--min-conf", "0.8", "-o", str(out), "--format", "csv"])
    assert streamed.exit_code == 0, streamed.output
    result = runner.invoke(app, ["score-events", str(out / "detections.csv"), str(truth)])
    assert result.exit_code == 0, result.output
    assert "precision 1.000 (4/4), recall 1.000 (4/4)" in result.output
    assert "chance (labels shuffled)" in result.output
    assert "DCASE event-based (onset within 0.2 s, offset within max(0.2 s, 0.5 x length)): F1" in result.output
    onsets_only = runner.invoke(app, ["score-events", str(out / "detections.csv"), str(truth), "--no-offsets",
                                      "--collar", "0.6"])
    assert onsets_only.exit_code == 0, onsets_only.output
    assert "DCASE event-based (onset within 0.6 s): F1 1.000 (precision 1.000, recall 1.000, 4 matched)" \
        in onsets_only.output


def test_collar_metric_matches_optimally():
    """Two detections near two true events: the one-to-one matching finds both (a first-come matching that gives the
    first detection the first event it fits would leave the second event unmatched)."""
    truth = [Event("a.wav", 1.0, 2.0, "low"), Event("a.wav", 1.3, 2.3, "low")]
    detected = [Event("a.wav", 1.15, 2.15, "low"), Event("a.wav", 0.95, 1.95, "low")]
    score = score_events_collar(detected, truth, collar_s=0.2)
    assert (score.n_matched, score.precision, score.recall, score.f1) == (2, 1.0, 1.0, 1.0)
    # an onset 0.25 s late misses a 0.2 s collar but not a 0.3 s one; a 1 s event's offset may be 0.5 s off
    late = [Event("a.wav", 1.25, 2.5, "low")]
    assert score_events_collar(late, truth[:1], collar_s=0.2).n_matched == 0
    assert score_events_collar(late, truth[:1], collar_s=0.3).n_matched == 1
    assert score_events_collar([Event("a.wav", 1.0, 2.6, "low")], truth[:1]).n_matched == 0
    assert score_events_collar([Event("a.wav", 1.0, 2.6, "low")], truth[:1], offset_fraction=None).n_matched == 1
    # other file, other label: no match; precision and recall by class, macro F1 over the classes seen
    other = [Event("b.wav", 1.0, 2.0, "low"), Event("a.wav", 1.0, 2.0, "high")]
    mixed = score_events_collar(other + detected, truth)
    assert (mixed.n_matched, mixed.n_detected, mixed.n_truth) == (2, 4, 2)
    assert mixed.per_class["high"] == (0.0, 0.0, 0.0, 0, 1, 0) and mixed.per_class["low"][:3] == (2 / 3, 1.0, 0.8)
    assert mixed.f1_macro == pytest.approx(0.4) and mixed.f1 == pytest.approx(2 / 3)
    with pytest.raises(EventTableError, match="collar must be >= 0"):
        score_events_collar(detected, truth, collar_s=-1)


def _random_events(rng, files, labels, n):
    events = []
    for _ in range(n):
        start = float(np.round(rng.uniform(0, 20), 2))
        events.append(Event(str(rng.choice(files)), start, start + float(np.round(rng.uniform(0.05, 2), 2)),
                            str(rng.choice(labels))))
    return events


@pytest.mark.parametrize("collar, fraction", [(0.2, 0.5), (0.5, 0.2), (0.25, None)])
def test_collar_metric_equals_sed_eval(collar, fraction):
    """The definition held against the DCASE reference implementation (test extra: sed_eval)."""
    sed_eval = pytest.importorskip("sed_eval", reason="sed_eval (test extra) is not installed")
    import dcase_util

    rng = np.random.default_rng(7)
    files, labels = ["a.wav", "b.wav", "c.wav"], ["low", "mid", "high"]
    truth = _random_events(rng, files, labels, 60)
    # detections: jittered copies of most true events (some relabelled), plus random ones
    detected = [Event(t.file, t.start_s + float(rng.normal(0, 0.2)), t.end_s + float(rng.normal(0, 0.3)),
                      t.label if rng.random() < 0.85 else str(rng.choice(labels))) for t in truth[:50]]
    detected = [d if d.end_s > d.start_s else Event(d.file, d.start_s, d.start_s + 0.1, d.label) for d in detected]
    detected += _random_events(rng, files, labels, 25)
    ours = score_events_collar(detected, truth, collar_s=collar, offset_fraction=fraction)

    def container(events):
        return dcase_util.containers.MetaDataContainer(
            [{"filename": e.file, "onset": e.start_s, "offset": e.end_s, "event_label": e.label} for e in events])

    metrics = sed_eval.sound_event.EventBasedMetrics(
        event_label_list=labels, t_collar=collar, percentage_of_length=fraction or 0.0,
        evaluate_onset=True, evaluate_offset=fraction is not None, event_matching_type="optimal")
    ref, est = container(truth), container(detected)
    for name in files:
        metrics.evaluate(reference_event_list=ref.filter(filename=name), estimated_event_list=est.filter(filename=name))
    results = metrics.results()
    overall = results["overall"]["f_measure"]
    assert 0 < ours.n_matched < len(truth)
    assert ours.f1 == pytest.approx(overall["f_measure"], abs=1e-9)
    assert ours.precision == pytest.approx(overall["precision"], abs=1e-9)
    assert ours.recall == pytest.approx(overall["recall"], abs=1e-9)
    assert ours.f1_macro == pytest.approx(results["class_wise_average"]["f_measure"]["f_measure"], abs=1e-9)
    for label in labels:
        assert ours.per_class[label][2] == pytest.approx(results["class_wise"][label]["f_measure"]["f_measure"],
                                                         abs=1e-9)


def test_raven_and_birdnet_tables_are_read_as_ground_truth(tmp_path):
    raven_header = "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tSpecies\n"
    one_file = tmp_path / "rec1.Table.1.selections.txt"  # names its recording by its own name
    one_file.write_text(raven_header + "1\tWaveform 1\t1\t1.5\t2.5\t0\t8000\tlow\n"
                        "1\tSpectrogram 1\t1\t1.5\t2.5\t0\t8000\tlow\n")
    assert read_events(one_file) == [Event("rec1", 1.5, 2.5, "low")]
    many = tmp_path / "all.txt"
    many.write_text("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tBegin Path\tFile Offset (s)\tClass\n"
                    "1\tSpectrogram 1\t1\t61.0\t62.0\tC:\\\\card\\\\b.wav\t1.0\tmid\n")
    assert read_events(many) == [Event("b.wav", 1.0, 2.0, "mid")]
    birdnet = tmp_path / "birdnet.csv"
    birdnet.write_text("Start (s),End (s),Scientific name,Common name,Confidence,File\n0.0,3.0,Turdus merula,"
                       "Eurasian Blackbird,0.9,/x/c.wav\n")
    assert read_events(birdnet) == [Event("c.wav", 0.0, 3.0, "Eurasian Blackbird")]
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(EventTableError, match="Raven selection table"):
        read_events(other)


def test_score_events_takes_a_raven_truth_table(tmp_path):
    graph = build_band_graph(tmp_path / "m.onnx")
    truth_events = [(2, 3, "low"), (6, 7, "mid")]
    freq = dict(zip(DEFAULT_CLASSES, DEFAULT_FREQS))
    field = tmp_path / "field" / "rec.wav"
    field.parent.mkdir()
    sf.write(field, tone_track([(s, e, freq[lab]) for s, e, lab in truth_events], 9, 16_000), 16_000)
    raven = tmp_path / "rec.Table.1.selections.txt"
    raven.write_text("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tAnnotation\n" + "".join(
        f"{i}\tSpectrogram 1\t1\t{s}\t{e}\t{lab}\n" for i, (s, e, lab) in enumerate(truth_events, start=1)))
    out = tmp_path / "out"
    streamed = runner.invoke(app, ["stream", str(field.parent), "-m", str(graph), "--window", "0.5", "--merge",
                                   "--min-conf", "0.8", "-o", str(out), "--format", "csv"])
    assert streamed.exit_code == 0, streamed.output
    result = runner.invoke(app, ["score-events", str(out), str(raven)])
    assert result.exit_code == 0, result.output
    assert "precision 1.000 (2/2), recall 1.000 (2/2)" in result.output
