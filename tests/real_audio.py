"""Real labelled animal audio for the tests and benchmarks, assembled from two pinned Debian packages.

No dataset site is reachable from these machines, package mirrors are. Two GPL packages carry recordings of the same
farm animals made by different people: ``tuxpaint-stamps-default`` (one ``.ogg`` per stamp) and ``gcompris-qt-data``
(Qt resource bundles: the farm-animals activity and the sound-memory game, whose barks and field noises serve as
extra dogs and a ``background`` class). Classes with at least three recordings from the two sources are kept:
cow, sheep, pig, chicken, duck, dog and background. Each recording is one ``group`` (the unit a group split keeps
in one split); recordings longer than 1.5 s are cut into 1 s clips (``start``/``end`` rows), quiet ones left out.

The .deb files land in ``$VOCALPROBE_TEST_CACHE/debs`` (default ``~/.cache/vocalprobe-test``), checked by sha256;
the dataset (16-bit WAVs at the recordings' own rates, ``manifest.csv`` with ``path,label,group,start,end``) in
``farm-<digest of the recordings and clip rules>``. ``AudioUnavailable`` says why a package could not be had; the
fixtures skip on it, or fail where ``CI=true``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import lzma
import os
import random
import shutil
import struct
import tarfile
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vocalprobe.runtime.core.digests import file_sha256

MIRROR = os.environ.get("VOCALPROBE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
CLIP_SECONDS = 1.0
QUIET = 0.1  # a clip whose RMS is below this share of its recording's loudest clip is left out


class AudioUnavailable(RuntimeError):
    """A pinned package could not be downloaded or did not match its pin."""


@dataclass(frozen=True)
class Deb:
    pool_path: str  # under the mirror's root
    sha256: str

    @property
    def filename(self) -> str:
        return self.pool_path.rsplit("/", 1)[1]


TUXPAINT = Deb("pool/main/t/tuxpaint-stamps/tuxpaint-stamps-default_2022.06.04-1_all.deb",
               "6db6c1bfc870a47f1499d6203b083522eacb57c5f9c87d468f2e92eb6d9d5f34")
GCOMPRIS = Deb("pool/main/g/gcompris-qt/gcompris-qt-data_3.1-2_all.deb",
               "e9cf06ab2105529068df73085784e835d2ff03f870d2a8091f09125d40abac9f")
_STAMPS = "./usr/share/tuxpaint/stamps/animals/"
_RCC = "./usr/share/gcompris-qt/rcc/"
_FARM = "/gcompris/src/activities/explore_farm_animals/resource/animals/"
_MEMORY = "/gcompris/src/activities/memory-sound/resource/"

def _tux(member: str) -> tuple[Deb, str]:
    return TUXPAINT, _STAMPS + member


def _farm(name: str) -> tuple[Deb, str]:
    return GCOMPRIS, f"{_RCC}explore_farm_animals.rcc:{_FARM}{name}.ogg"


def _memory(name: str) -> tuple[Deb, str]:
    return GCOMPRIS, f"{_RCC}memory-sound.rcc:{_MEMORY}{name}.ogg"


#: label -> (package, member) per recording; a Qt resource member is "BUNDLE.rcc:/path/inside".
RECORDINGS: dict[str, tuple[tuple[Deb, str], ...]] = {
    "cow": (_tux("mammals/bovines/cow.ogg"), _tux("mammals/bovines/cow_white.ogg"), _tux("mammals/bovines/bull.ogg"),
            _farm("cow")),
    "sheep": (_tux("mammals/bovines/sheep.ogg"), _tux("mammals/bovines/sheep_lamb.ogg"),
              _tux("mammals/bovines/ram.ogg"), _farm("sheep")),
    "pig": (_tux("mammals/pig.ogg"), _tux("mammals/pig_golden.ogg"), _tux("mammals/pig_golden2.ogg"), _farm("pig")),
    "chicken": (_tux("birds/hen.ogg"), _tux("birds/rooster.ogg"), _farm("chickens")),
    "duck": (_tux("birds/duck.ogg"), _tux("birds/drake.ogg"), _farm("duck")),
    "dog": (_tux("mammals/dogs/dog.ogg"), _farm("dog"), _memory("LRBark_1_LA_cut"), _memory("LRBark_3_LA_cut")),
    "background": tuple(_memory(name) for name in (
        "LRRain_in_garden_01_LA_cut", "LRTrain_slowing_down_01_LA_cut", "LRStartAndStopCarEngine1LACut",
        "LRFactory_noise_01_LA", "LRFactory_noise_02_LA", "LRFactory_noise_04_LA", "LRDoor_Open_2_LA",
        "LRHits_01_LA")),
}


def cache_root() -> Path:
    return Path(os.environ.get("VOCALPROBE_TEST_CACHE", "~/.cache/vocalprobe-test")).expanduser()


def deb_path(deb: Deb) -> Path:
    """The pinned package in the cache, downloaded from the mirror when absent; its sha256 is checked either way."""
    folder = cache_root() / "debs"
    path = folder / deb.filename
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        url = f"{MIRROR}/{deb.pool_path}"
        with tempfile.NamedTemporaryFile(dir=folder, delete=False) as tmp:
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    shutil.copyfileobj(response, tmp, 1 << 20)
            except OSError as exc:
                os.unlink(tmp.name)
                raise AudioUnavailable(f"cannot download {url}: {exc}") from exc
        os.replace(tmp.name, path)
    if (found := file_sha256(path)) != deb.sha256:
        path.unlink()
        raise AudioUnavailable(f"{deb.filename}: sha256 {found}, pinned {deb.sha256} (removed; a re-run downloads it)")
    return path


def deb_members(path: Path, wanted: set[str]) -> dict[str, bytes]:
    """The wanted members of a .deb's data.tar.xz (an ar archive: 8-byte magic, then 60-byte headers)."""
    data = path.read_bytes()
    if data[:8] != b"!<arch>\n":
        raise AudioUnavailable(f"{path.name} is not a Debian package")
    offset = 8
    while offset + 60 <= len(data):
        name, size = data[offset:offset + 16].decode().strip(), int(data[offset + 48:offset + 58])
        body = data[offset + 60:offset + 60 + size]
        if name.startswith("data.tar"):
            raw = lzma.decompress(body) if name.endswith(".xz") else body
            found = {}
            with tarfile.open(fileobj=io.BytesIO(raw)) as archive:
                for member in archive:
                    if member.name in wanted and member.isfile():
                        found[member.name] = archive.extractfile(member).read()
            return found
        offset += 60 + size + (size & 1)
    raise AudioUnavailable(f"{path.name} has no data.tar member")


def rcc_files(bundle: bytes) -> dict[str, bytes]:
    """Every file of a Qt binary resource bundle (``rcc``, format 1-3): header, tree of 14/22-byte nodes, names in
    UTF-16, data blocks prefixed by their size (zlib-compressed ones by the unpacked size too)."""
    if bundle[:4] != b"qres":
        raise AudioUnavailable("not a Qt resource bundle")
    version, tree, data, names = struct.unpack(">IIII", bundle[4:20])
    node = 22 if version >= 2 else 14

    def name_at(offset: int) -> str:
        length = struct.unpack(">H", bundle[names + offset:names + offset + 2])[0]
        return bundle[names + offset + 6:names + offset + 6 + 2 * length].decode("utf-16-be")

    files: dict[str, bytes] = {}
    pending = [(0, "")]
    while pending:
        index, prefix = pending.pop()
        base = tree + index * node
        name_offset, flags = struct.unpack(">IH", bundle[base:base + 6])
        name = name_at(name_offset) if index else ""
        if flags & 2:  # a directory: child count, first child
            count, first = struct.unpack(">II", bundle[base + 6:base + 14])
            pending.extend((child, f"{prefix}{name}/") for child in range(first, first + count))
            continue
        start = data + struct.unpack(">I", bundle[base + 10:base + 14])[0]
        size = struct.unpack(">I", bundle[start:start + 4])[0]
        blob = bundle[start + 4:start + 4 + size]
        files[prefix + name] = zlib.decompress(blob[4:]) if flags & 1 else blob
    return files


def _recordings() -> list[tuple[str, str, bytes]]:
    """(label, group, encoded audio) of every recording, read from the pinned packages."""
    wanted: dict[Deb, set[str]] = {}
    for items in RECORDINGS.values():
        for deb, member in items:
            wanted.setdefault(deb, set()).add(member.split(":", 1)[0])
    members = {deb: deb_members(deb_path(deb), names) for deb, names in wanted.items()}
    bundles: dict[str, dict[str, bytes]] = {}
    out = []
    for label, items in RECORDINGS.items():
        for deb, member in items:
            outer, _, inner = member.partition(":")
            if outer not in members[deb]:
                raise AudioUnavailable(f"{deb.filename} lacks {outer}")
            if inner:
                if outer not in bundles:
                    bundles[outer] = rcc_files(members[deb][outer])
                files = bundles[outer]
                if inner not in files:
                    raise AudioUnavailable(f"{outer} lacks {inner}")
                blob = files[inner]
            else:
                blob = members[deb][outer]
            stem = Path(inner or outer).stem
            out.append((label, f"{deb.filename.split('_')[0]}:{stem}", blob))
    return out


def _clips(samples: np.ndarray, rate: int) -> list[tuple[float, float] | None]:
    """1 s clips of a recording (None: the whole recording, when it is at most 1.5 s); quiet clips left out."""
    seconds = len(samples) / rate
    if seconds <= 1.5 * CLIP_SECONDS:
        return [None]
    n = int(seconds // CLIP_SECONDS)
    spans = [(i * CLIP_SECONDS, (i + 1) * CLIP_SECONDS if i < n - 1 else seconds) for i in range(n)]
    loudness = [float(np.sqrt(np.mean(samples[int(a * rate):int(b * rate)] ** 2))) for a, b in spans]
    return [span for span, rms in zip(spans, loudness) if rms >= QUIET * max(loudness)]


def dataset_digest() -> str:
    """Of what decides the dataset's content: a change to the recordings or the clip rules builds it again."""
    return hashlib.sha256(repr((RECORDINGS, CLIP_SECONDS, QUIET)).encode()).hexdigest()[:12]


def farm_dataset() -> Path:
    """The folder of the farm-animals dataset (built once); its ``manifest.csv`` has no split column yet."""
    import soundfile as sf

    folder = cache_root() / f"farm-{dataset_digest()}"
    if (folder / "manifest.csv").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent))
    try:
        lines = ["path,label,group,start,end"]
        for label, group, blob in _recordings():
            samples, rate = sf.read(io.BytesIO(blob), dtype="float32", always_2d=True)
            mono = samples.mean(axis=1)
            name = f"{label}/{group.replace(':', '_')}.wav"
            (tmp / label).mkdir(exist_ok=True)
            sf.write(str(tmp / name), mono, rate, subtype="PCM_16")
            for span in _clips(mono, rate):
                times = "," if span is None else f"{span[0]:.3f},{span[1]:.3f}"
                lines.append(f"{name},{label},{group},{times}")
        (tmp / "manifest.csv").write_text("\n".join(lines) + "\n")
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def split_by_recording(dataset: Path, out: Path, seed: int) -> Path:
    """A copy of the farm manifest with absolute paths and a split column: per class, one recording (seeded) in
    Test, one in Val, the rest in Train. ``data split``'s 70:20:10 of 3-4 recordings would leave classes out of
    Test, so this writes the split itself; every split is group-disjoint."""
    out.mkdir(parents=True, exist_ok=True)
    rows = list(csv.DictReader(open(dataset / "manifest.csv", newline="")))
    rng = random.Random(seed)
    split_of = {}
    for label in sorted({row["label"] for row in rows}):
        groups = sorted({row["group"] for row in rows if row["label"] == label})
        rng.shuffle(groups)
        split_of.update({group: "test" if i == 0 else "val" if i == 1 else "train" for i, group in enumerate(groups)})
    path = out / "manifest.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*rows[0], "split"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "path": str(dataset / row["path"]), "split": split_of[row["group"]]})
    return path
