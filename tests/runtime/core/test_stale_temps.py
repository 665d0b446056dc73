"""The temporary files of a killed run are deleted by the next run to lock the folder (issue 24, item 2)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from vocalprobe.runtime.core.out_lock import LOCK_NAME, OutputLock

KILLED = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from vocalprobe.runtime.core.atomic import atomic_open
    from vocalprobe.runtime.core.out_lock import OutputLock

    out = Path(sys.argv[1])
    with OutputLock(out), atomic_open(out / "night1" / "detections.csv") as handle:
        handle.write("half a table")
        handle.flush()
        (out / ".usearch.index.4242.tmp").write_bytes(b"half an index")  # as vectors.save_index names it
        print("writing", flush=True)
        time.sleep(600)
""")


def _temps(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.tmp"))


def test_a_killed_runs_temporary_files_are_deleted_by_the_next_run(tmp_path):
    out = tmp_path / "out"
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    proc = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    left = _temps(out)
    assert len(left) == 2 and ".usearch.index.4242.tmp" in left
    assert left[0].startswith("night1/.detections.csv.") or left[1].startswith("night1/.detections.csv.")

    kept = [out / ".notes.tmp", out / "night1" / "mine.tmp"]  # not names our writers give: the user's
    busy = out / "shard-2"  # another run's folder (its own lock): that run cleans it
    busy.mkdir()
    (busy / LOCK_NAME).touch()
    kept.append(busy / ".detections.csv.abcd1234.tmp")
    for path in kept:
        path.write_text("keep")
    with OutputLock(out):
        assert _temps(out) == sorted(str(p.relative_to(out)) for p in kept)


def test_a_holder_deletes_its_temporary_files_as_it_lets_go(tmp_path):
    """Ctrl-C between a temporary file's creation and its ``try`` leaves it behind; the lock's release removes it
    (and leaves the user's own .tmp files and another run's folder alone)."""
    out = tmp_path / "out"
    busy = out / "shard-2"
    busy.mkdir(parents=True)
    (busy / LOCK_NAME).touch()
    kept = [out / ".notes.tmp", busy / ".detections.csv.abcd1234.tmp"]
    with OutputLock(out):
        for path in kept:
            path.write_text("keep")
        (out / "night1").mkdir()
        (out / "night1" / ".detections.csv.q1w2e3r4.tmp").write_text("half a table")  # as atomic_open names it
        (out / ".usearch.index.4242.tmp").write_bytes(b"half an index")
    assert _temps(out) == sorted(str(p.relative_to(out)) for p in kept)
