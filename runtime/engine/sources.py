"""Where streamed audio comes from: files, folders, a raw PCM stream on stdin, or a folder a recorder writes into.

Every source yields mono float32 blocks already resampled to the model's rate. Resampling is a soxr stream, so the
size of the blocks read never changes a sample of the output (``tests/runtime/field/test_stream.py`` holds it to exact
equality), and memory is bounded by the block size, never by the length of a recording.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

import numpy as np

from vocalprobe.runtime.core.audio import audio_info, is_audio_file, iter_blocks, wav_data_size
from vocalprobe.runtime.core.errors import AudioFileNotFound, VocalprobeError, os_reason, printable_name
from vocalprobe.runtime.core.resample import StreamResampler

log = logging.getLogger(__name__)

#: Samples read from a file at a time (at its own rate): about 1.4 s at 48 kHz.
DEFAULT_BLOCK_SIZE = 65_536
#: Raw PCM sample formats on stdin: numpy dtype and the full-scale value (as libsndfile scales them).
PCM_DTYPES = {"s16": ("<i2", 32768.0), "s32": ("<i4", 2147483648.0), "f32": ("<f4", 1.0)}
STDIN_NAME = "stdin"


class SourceError(VocalprobeError):
    """Inputs that cannot be streamed (missing paths, bad stdin options, clashing output names)."""


def _resampled(blocks: Iterator[np.ndarray], sample_rate: int, target_rate: int) -> Iterator[np.ndarray]:
    resampler = StreamResampler(sample_rate, target_rate)
    for block in blocks:
        out = resampler.process(block)
        if out.size:
            yield out
    tail = resampler.flush()
    if tail.size:
        yield tail


@dataclass(frozen=True)
class FileSource:
    path: Path
    name: str  # how outputs refer to it: relative to the folder given on the command line, POSIX-style
    block_size: int = DEFAULT_BLOCK_SIZE
    #: A WAV cut short (a recorder that died, an interrupted copy) is read for the part it holds instead of failing;
    #: the run notes it (``audio.truncation``). Off for a watched folder, where such a file may still be written.
    partial: bool = False
    glitches = None  # a file is read whole: what cannot be read fails it (class attribute, not a field)

    def duration(self) -> float:
        return audio_info(self.path, truncated_ok=self.partial).duration

    def source_rate(self) -> int:
        """The rate the recording was made at (the band it holds ends at half of it)."""
        return audio_info(self.path, truncated_ok=self.partial).sample_rate

    def blocks(self, target_rate: int) -> Iterator[np.ndarray]:
        info = audio_info(self.path, truncated_ok=self.partial)
        blocks = iter_blocks(self.path, self.block_size, truncated_ok=self.partial)
        yield from _resampled(blocks, info.sample_rate, target_rate)


@dataclass(frozen=True)
class StdinSource:
    """Raw interleaved little-endian PCM, e.g. ``arecord -f S16_LE -r 48000 -c 1 -t raw | vocalprobe stream -``."""

    sample_rate: int
    channels: int = 1
    dtype: str = "s16"
    stream: BinaryIO | None = None  # default: sys.stdin.buffer
    block_frames: int = DEFAULT_BLOCK_SIZE
    name: str = STDIN_NAME
    path = None  # no file: nothing to journal (class attribute, not a field)
    partial = False  # a stream has no header to fall short of (class attribute, not a field)
    #: (start_s, end_s) of blocks that held NaN/inf samples, analysed as silence (a live stream survives a glitch).
    glitches: list[tuple[float, float]] = field(default_factory=list, compare=False)

    def __post_init__(self):
        if self.dtype not in PCM_DTYPES:
            raise SourceError(f"--dtype must be one of {', '.join(PCM_DTYPES)}, got {self.dtype!r}")
        if self.sample_rate is None or self.sample_rate <= 0:
            raise SourceError("reading raw audio from stdin needs --sample-rate (e.g. --sample-rate 48000)")
        if self.channels < 1:
            raise SourceError(f"--channels must be >= 1, got {self.channels}")

    def duration(self) -> None:
        return None

    def source_rate(self) -> int:
        return self.sample_rate

    def raw_blocks(self) -> Iterator[np.ndarray]:
        """Mono float32 blocks at the stream's own rate, scaled like soundfile reads the same samples from a file."""
        stream = self.stream if self.stream is not None else sys.stdin.buffer
        dtype, full_scale = PCM_DTYPES[self.dtype]
        frame_bytes = np.dtype(dtype).itemsize * self.channels
        want = self.block_frames * frame_bytes
        pending = b""
        done = 0
        while True:
            chunk = stream.read(want)  # blocks until `want` bytes or the end of the stream
            if not chunk:
                break
            pending += chunk
            usable = len(pending) - len(pending) % frame_bytes
            if usable == 0:
                continue
            data, pending = pending[:usable], pending[usable:]
            frames = np.frombuffer(data, dtype=dtype).reshape(-1, self.channels)
            if self.dtype == "f32":
                block = frames.astype(np.float32)
                if not np.all(np.isfinite(block)):
                    span = (done / self.sample_rate, (done + len(block)) / self.sample_rate)
                    log.warning("%s: NaN/inf samples at %.3f-%.3f s; that block is analysed as silence",
                                self.name, *span)
                    self.glitches.append(span)
                    block = np.zeros_like(block)
            else:
                block = frames.astype(np.float32) / np.float32(full_scale)
            done += block.shape[0]
            yield (block.mean(axis=1, dtype=np.float64).astype(np.float32) if self.channels > 1
                   else block[:, 0].copy())
        if pending:
            log.warning("stdin ended with %d byte(s) that do not make a whole frame; ignored", len(pending))

    def blocks(self, target_rate: int) -> Iterator[np.ndarray]:
        yield from _resampled(self.raw_blocks(), self.sample_rate, target_rate)


def _is_listed_audio(path: Path, root: Path) -> bool:
    """An audio file below ``root`` that is not hidden: ``._NAME.WAV`` files macOS writes onto SD cards, and
    anything in a hidden folder, are not recordings."""
    return is_audio_file(path) and not any(part.startswith(".") for part in path.relative_to(root).parts)


def _is_linked_file(path: Path, root: Path) -> bool:
    """``path.is_file()``, saying what it does with links: a link that cannot be followed (a loop) is skipped with a
    warning instead of silently, and one that leads out of ``root`` is followed with a note naming its target."""
    if not path.is_symlink():
        return path.is_file()
    shown = printable_name(str(path))
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # RuntimeError: a loop, on Pythons before 3.13
        if is_audio_file(path):
            reason = os_reason(exc) if isinstance(exc, OSError) else "a symlink loop"
            log.warning(f"skipping {shown}: {reason}")
        return False
    if not target.is_file():
        return False
    if is_audio_file(path) and not target.is_relative_to(root.resolve()):
        log.warning(f"{shown} is a link to {printable_name(str(target))}, outside {printable_name(str(root))}: "
                    "reading it")
    return True


def collect_files(inputs: Sequence[str | Path], block_size: int = DEFAULT_BLOCK_SIZE, *,
                  partial: bool = False) -> list[FileSource]:
    """Expand files and folders (recursively, sorted) into sources with distinct output names.

    Folders contribute files with a wav/flac/ogg extension in any case; hidden files (names starting with ``.``,
    such as the ``._NAME.WAV`` files macOS writes onto SD cards) are not audio and are left out. ``partial``: see
    ``FileSource.partial``.
    """
    sources: list[FileSource] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if _is_linked_file(p, path) and _is_listed_audio(p, path))
            if not found:
                raise SourceError(f"{path}: no .wav/.flac/.ogg files in this folder or below")
            sources.extend(FileSource(p, printable_name(p.relative_to(path).as_posix()), block_size, partial)
                           for p in found)
        elif path.exists():
            sources.append(FileSource(path, printable_name(path.name), block_size, partial))
        else:
            raise AudioFileNotFound(path, "input not found (give audio files, folders, or - for stdin)")
    seen: dict[str, Path] = {}
    for source in sources:
        key = str(Path(source.name).with_suffix("")).lower()
        if key in seen and seen[key].resolve() != source.path.resolve():
            raise SourceError(f"{seen[key]} and {source.path} would write the same output files "
                              f"({source.name}); run them separately or give their common parent folder")
        seen[key] = source.path
    unique = {s.path.resolve(): s for s in sources}
    return list(unique.values())


def still_being_written(path: Path) -> bool:
    """A WAV whose header declares more data than the file holds (or whose header is not all there yet).

    A recorder that writes the final size into the header before the samples (or rewrites it on close) makes a file
    that is still being written recognisable whatever pauses its writing has. Placeholder sizes (streaming writers)
    and other formats say nothing: then only the settle time decides.
    """
    try:
        data = wav_data_size(path, unfinished_header=True)
    except OSError:
        return False
    return data is not None and data.short


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    stable_since: float


class FolderWatcher:
    """Follow a folder a recorder writes into, handing over each recording once it is finished writing.

    A recording counts as finished when
    - its name is a recording's: files being written under a temporary name (``.TMP``, ``.part``: AudioMoth and copy
      tools rename on close) and hidden files are not listed;
    - its size and mtime have not changed for ``settle_s``;
    - and, for a WAV whose header declares its data size, the file holds all of it. A WAV that still lacks data after
      ``abandon_s`` unchanged (a recorder that died mid-file) is handed over anyway; reading reports it as truncated.
    A file that changes after it was handed over (it grew after a pause, or was replaced) is handed over again once
    it settles; the journal sees a new version and analyses it again. A watched folder that disappears (a card pulled
    out) raises ``SourceError``.
    """

    def __init__(self, folder: str | Path, *, settle_s: float = 5.0, abandon_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise SourceError(f"--watch {self.folder}: not a folder")
        self.settle_s = settle_s
        self.abandon_s = abandon_s if abandon_s is not None else max(60.0, 12 * settle_s)
        self.clock = clock
        self._seen: dict[Path, _Seen] = {}
        self._given: dict[Path, tuple[int, int]] = {}  # path -> (size, mtime_ns) when handed over
        self.refused: dict[Path, str] = {}  # names that cannot be read as files (a symlink loop): said once, skipped
        self._root = self.folder.resolve()
        self._noted: set[Path] = set()  # links out of the folder, said once

    def _listing(self) -> list[Path]:
        if not self.folder.is_dir():
            raise SourceError(f"--watch {self.folder}: the folder disappeared (card removed or unmounted?); "
                              "outputs so far are kept, re-run to resume")
        try:
            return sorted(self.folder.rglob("*"))
        except OSError as exc:
            raise SourceError(f"--watch {self.folder}: cannot list the folder ({exc.strerror or exc})") from exc

    def ready(self) -> list[Path]:
        now = self.clock()
        out = []
        for path in self._listing():
            if not _is_listed_audio(path, self.folder):
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:  # deleted between listing and stat (or a link to nothing)
                continue
            except OSError as exc:  # a symlink loop, a name the OS refuses: one bad name must not end the watch
                if path not in self.refused:
                    self.refused[path] = os_reason(exc)
                    log.warning(f"--watch: skipping {printable_name(str(path))}: {self.refused[path]}")
                continue
            if not path.is_file():
                continue
            if path not in self._noted and path.is_symlink() and not path.resolve().is_relative_to(self._root):
                self._noted.add(path)  # said once; read all the same
                log.warning(f"--watch: {printable_name(str(path))} is a link to {printable_name(str(path.resolve()))}"
                            f", outside {printable_name(str(self.folder))}: reading it")
            version = (stat.st_size, stat.st_mtime_ns)
            if self._given.get(path) == version:
                continue
            seen = self._seen.get(path)
            if seen is None or (seen.size, seen.mtime_ns) != version:
                self._seen[path] = _Seen(stat.st_size, stat.st_mtime_ns, now)
                continue
            stable = now - seen.stable_since
            if stable < self.settle_s or stat.st_size == 0:
                continue
            if still_being_written(path) and stable < self.abandon_s:
                continue
            out.append(path)
            self._given[path] = version
            del self._seen[path]
        return out

    @property
    def pending(self) -> int:
        """Files seen but not yet settled."""
        return len(self._seen)

    def source(self, path: Path, block_size: int = DEFAULT_BLOCK_SIZE) -> FileSource:
        return FileSource(path, printable_name(path.relative_to(self.folder).as_posix()), block_size)

    def follow(self, *, poll_s: float = 1.0, idle_exit_s: float | None = None,
               sleep: Callable[[float], None] = time.sleep) -> Iterator[Path]:
        """Yield settled files forever (or until nothing new has settled for ``idle_exit_s`` seconds)."""
        last_new = self.clock()
        while True:
            new = self.ready()
            for path in new:
                yield path
            if new:
                last_new = self.clock()
            elif idle_exit_s is not None and self.clock() - last_new >= idle_exit_s and not self.pending:
                return
            sleep(poll_s)
