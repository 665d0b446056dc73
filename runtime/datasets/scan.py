"""Listing a dataset folder so that no file goes missing without a word.

Every entry ends up in exactly one place: an audio candidate, a problem (a folder that cannot be listed, a broken or
looping symlink, a link that leaves the source tree, a second link to a file already listed) or a counted skip (hidden
files, other extensions). Links keep their own path: a manifest must never point at a link's resolved target.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from vocalprobe.runtime.core.audio import READABLE_KINDS, is_audio_file
from vocalprobe.runtime.core.errors import os_reason

FOLLOW_LINKS_HINT = "pass --follow-links to include it"


@dataclass(frozen=True)
class FileProblem:
    """A file or folder left out of the manifest, and why."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


@dataclass
class Listing:
    audio: list[Path] = field(default_factory=list)  # sorted, link paths kept
    problems: list[FileProblem] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> number of files not processed (not problems)


def source_root(source: Path) -> Path:
    """The source folder itself, resolved: paths inside it keep their links, the folder's own location is real."""
    return Path(os.path.realpath(source))


def _inside(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def escape_problem(path: Path, root: Path, *, follow_links: bool) -> str | None:
    """Why ``path`` (a path under ``root``, possibly through links) may not be used, or None when it may."""
    lexical = os.path.normpath(path)
    real = os.path.realpath(path)
    if follow_links:
        return None
    if not _inside(lexical, str(root)):
        return f"lies outside the source folder {root}; {FOLLOW_LINKS_HINT}"
    if not _inside(real, str(root)):
        return f"is a symlink that leaves the source folder (-> {real}); {FOLLOW_LINKS_HINT}"
    return None


def list_audio(folder: Path, root: Path, *, follow_links: bool = False) -> Listing:
    """Walk ``folder`` (inside the resolved source ``root``) and sort every entry into the listing."""
    listing = Listing()
    first_link_of: dict[str, Path] = {}
    _walk(Path(folder), root, follow_links, frozenset({os.path.realpath(folder)}), listing, first_link_of)
    listing.audio.sort()
    return listing


def _walk(folder: Path, root: Path, follow_links: bool, ancestors: frozenset[str], listing: Listing,
          first_link_of: dict[str, Path]) -> None:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        listing.problems.append(FileProblem(str(folder), f"folder cannot be listed ({os_reason(exc)}); "
                                                         "its files are missing from the manifest"))
        return
    for entry in entries:
        path = folder / entry.name
        if entry.name.startswith("."):
            listing.skipped["hidden (name starts with '.')"] += 1
            continue
        if entry.is_symlink():
            try:
                os.stat(path)
            except OSError as exc:
                what = "a symlink loop" if "loop" in os_reason(exc) else f"a broken symlink ({os_reason(exc)})"
                listing.problems.append(FileProblem(str(path), f"is {what} (-> {os.readlink(path)})"))
                continue
            refused = escape_problem(path, root, follow_links=follow_links)
            if refused:
                listing.problems.append(FileProblem(str(path), refused))
                continue
        real = os.path.realpath(path)
        if entry.is_dir():
            if real in ancestors:
                listing.problems.append(FileProblem(str(path), f"is a symlink loop (-> {real}, a folder above it)"))
                continue
            _walk(path, root, follow_links, ancestors | {real}, listing, first_link_of)
        elif not entry.is_file():
            listing.skipped["not a regular file"] += 1
        elif not is_audio_file(path):
            listing.skipped[f"not {READABLE_KINDS}"] += 1
        elif real in first_link_of:
            listing.problems.append(FileProblem(str(path), f"is the same file as {first_link_of[real]} (linked "
                                                           "twice: it would count twice and could sit in two splits)"))
        else:
            first_link_of[real] = path
            listing.audio.append(path)


def describe_skipped(skipped: Counter) -> list[str]:
    """One line per reason, for the CLI to report what was not processed."""
    return [f"{n} file{'s' if n != 1 else ''} not processed: {reason}" for reason, n in sorted(skipped.items())]
