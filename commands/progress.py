"""The progress bar of the commands that run audio through a model (stream, embed): audio hours done, files, and
speed as x real time, on stderr (rich). Every such command turns it off with ``--no-progress``
(``options.ProgressOpt``).
"""

from __future__ import annotations

import time


class AudioProgress:
    """Audio hours done and speed as x real time, on stderr (rich)."""

    def __init__(self, total_seconds: float | None, n_files: int | None, what: str = "stream"):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.started = time.perf_counter()
        self.audio_s = 0.0
        self.files = 0
        self.total = total_seconds
        self.n_files = n_files
        columns = [TextColumn(f"[bold]{what}"), BarColumn() if total_seconds else TextColumn(""),
                   TextColumn("{task.fields[text]}"), TimeElapsedColumn()]
        self._progress = Progress(*columns, console=Console(stderr=True), transient=False)
        self._task = self._progress.add_task(what, total=total_seconds or None, text="")

    def __enter__(self):
        self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        self._progress.__exit__(*exc)

    def _text(self) -> str:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        hours = f"{self.audio_s / 3600:.3f}" + (f"/{self.total / 3600:.3f}" if self.total else "")
        files = f"{self.files}" + (f"/{self.n_files}" if self.n_files else "") + " files, "
        files = files if self.files or self.n_files else ""  # a caller that counts no files (embed) shows none
        return f"{hours} h audio, {files}{self.audio_s / elapsed:.1f}x real time"

    def audio(self, seconds: float) -> None:
        self.audio_s += seconds
        self._progress.update(self._task, advance=seconds, text=self._text())

    def file_done(self) -> None:
        self.files += 1
        self._progress.update(self._task, text=self._text())

    @classmethod
    def named(cls, what: str):
        """A factory ``(total seconds, files) -> AudioProgress`` whose bar is labelled ``what``."""
        return lambda total_seconds, n_files: cls(total_seconds, n_files, what)
