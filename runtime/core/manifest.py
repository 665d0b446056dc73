"""Dataset manifests: a CSV with ``path,label`` and optional ``start,end,split,group`` columns.

Other columns (a recording site, Xeno-canto's metadata) are kept, written back unchanged and otherwise ignored: the
``unused_columns`` of a manifest, for the commands to mention once. They do not enter its ``content_hash``.
Paths are relative to the manifest's folder, so a dataset folder can be moved or copied whole. Rows are small
frozen dataclasses; reading validates every row and names the line of the first problem.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator

from vocalprobe.runtime.core.atomic import atomic_write_text
from vocalprobe.runtime.core.errors import ManifestError

REQUIRED_COLUMNS = ("path", "label")
OPTIONAL_COLUMNS = ("start", "end", "split", "group")
COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ManifestRow:
    path: str  # relative to the manifest's folder (or absolute)
    label: str
    start: float | None = None  # seconds into the file, for calls inside long recordings
    end: float | None = None
    split: str | None = None  # train / val / test
    group: str | None = None  # e.g. the caller or the recording individual
    extra: tuple[str, ...] = ()  # the values of the manifest's unused columns, kept as read

    def with_split(self, split: str | None) -> "ManifestRow":
        return replace(self, split=split)


@dataclass(frozen=True)
class Manifest:
    rows: tuple[ManifestRow, ...]
    root: Path  # the folder relative paths are resolved against
    unused_columns: tuple[str, ...] = ()  # columns kept as read (in ``ManifestRow.extra``) and otherwise ignored

    def with_rows(self, rows: Iterable[ManifestRow]) -> "Manifest":
        """The same manifest (root, unused columns) with other rows, e.g. re-split ones."""
        return Manifest(tuple(rows), self.root, self.unused_columns)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[ManifestRow]:
        return iter(self.rows)

    def audio_path(self, row: ManifestRow) -> Path:
        path = Path(row.path)
        return path if path.is_absolute() else self.root / path

    @property
    def labels(self) -> list[str]:
        """Sorted class names: the class index order every probe and exported graph uses."""
        return sorted({row.label for row in self.rows})

    def split(self, name: str) -> "Manifest":
        if name not in SPLITS:
            raise ManifestError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        if any(row.split is None for row in self.rows):
            raise ManifestError("the manifest has no split column; run `vocalprobe data split MANIFEST` first")
        return self.with_rows(r for r in self.rows if r.split == name)

    def to_csv(self, *, unused: bool = True) -> str:
        buffer = io.StringIO()
        used = [c for c in COLUMNS if c in REQUIRED_COLUMNS or any(getattr(r, c) is not None for r in self.rows)]
        extra = list(self.unused_columns) if unused else []
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(used + extra)
        for row in self.rows:
            values = list(row.extra) + [""] * (len(extra) - len(row.extra))
            writer.writerow([_format(getattr(row, c)) for c in used] + values[:len(extra)])
        return buffer.getvalue()

    def content_hash(self) -> str:
        """sha256 of the canonical CSV without the unused columns: changes whenever any row, label, time, split or
        group changes, not when metadata the study ignores does."""
        return hashlib.sha256(self.to_csv(unused=False).encode("utf-8")).hexdigest()


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}".rstrip("0").rstrip(".") if value != int(value) else f"{value:.1f}"
    return str(value)


def _parse_seconds(text: str, column: str, where: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ManifestError(f"{where}: {column} must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value):  # "inf", "nan" and overflowing numbers such as 1e400
        raise ManifestError(f"{where}: {column} must be a finite number of seconds, got {text!r}")
    if value < 0:
        raise ManifestError(f"{where}: {column} must be >= 0 seconds, got {text!r}")
    return value


def parse_manifest(text: str, root: Path, source: str = "<manifest>") -> Manifest:
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    unused = tuple(c for c in header if c not in COLUMNS)
    if missing:  # a misspelt column is the usual cause: name the unknown ones too
        unknown = f"; unknown column(s) {', '.join(unused)}" if unused else ""
        raise ManifestError(f"{source}: missing column(s) {', '.join(missing)}{unknown}. A manifest has columns "
                            f"{', '.join(COLUMNS)} (path and label required; other columns are kept and ignored)")
    rows = []
    for record in reader:
        where = f"{source} line {reader.line_num}"
        if None in record:  # DictReader's restkey: more fields than the header names
            raise ManifestError(f"{where}: {len(header) + len(record[None])} fields, the header has {len(header)} "
                                "(a comma inside a label or path? put that field in double quotes)")
        path, label = (record.get("path") or "").strip(), (record.get("label") or "").strip()
        if not path or not label:
            raise ManifestError(f"{where}: path and label must not be empty")
        start = _parse_seconds(record.get("start") or "", "start", where)
        end = _parse_seconds(record.get("end") or "", "end", where)
        if start is not None and end is not None and end <= start:
            raise ManifestError(f"{where}: end ({end}) must be after start ({start})")
        split = (record.get("split") or "").strip().lower() or None
        if split is not None and split not in SPLITS:
            raise ManifestError(f"{where}: split must be one of {', '.join(SPLITS)}, got {split!r}")
        group = (record.get("group") or "").strip() or None
        rows.append(ManifestRow(path, label, start, end, split, group, tuple(record.get(c) or "" for c in unused)))
    if not rows:
        raise ManifestError(f"{source}: the manifest has no rows")
    return Manifest(tuple(rows), root, unused)


def read_utf8_table(path: Path, error: type[Exception], prefix: str = "") -> str:
    """A CSV table's text (a byte-order mark is allowed); a file in another encoding is ``error`` naming the line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise error(f"{path}: {prefix}not UTF-8 (line {line}): re-save it as UTF-8") from None


def read_manifest(path: str | Path) -> Manifest:
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path} (create one with `vocalprobe data prepare`)")
    text = read_utf8_table(path, ManifestError, "manifest is ")
    return parse_manifest(text, path.resolve().parent, str(path))


def write_manifest(path: str | Path, rows: Iterable[ManifestRow] | Manifest) -> Manifest:
    """Write atomically; relative row paths are kept relative to the new manifest's folder."""
    path = Path(path)
    manifest = rows if isinstance(rows, Manifest) else Manifest(tuple(rows), path.resolve().parent)
    try:
        atomic_write_text(path, manifest.to_csv())
    except OSError as exc:  # a full disk fails inside write/fsync, where the error carries no file name
        if exc.filename is None:
            exc.filename = str(path)
        raise
    return Manifest(manifest.rows, path.resolve().parent, manifest.unused_columns)
