"""Where a prepared dataset came from (``dataset.json`` beside its manifest), so a report can say what is real.

``data prepare`` writes it; the synthetic generator writes ``synthetic.json`` instead (see ``synthetic.is_synthetic``).
A manifest with neither was written by hand or by an older vocalprobe: its origin is unknown, not assumed
(``audit.dataset_origin``).
"""

from __future__ import annotations

import json
from pathlib import Path

from vocalprobe.runtime.core.atomic import atomic_write_text

PROVENANCE_FILE = "dataset.json"


def write_provenance(out_dir: Path, kind: str, source: Path) -> Path:
    path = Path(out_dir) / PROVENANCE_FILE
    atomic_write_text(path, json.dumps({"kind": kind, "source": str(Path(source).resolve()), "synthetic": False},
                                       indent=2) + "\n")
    return path


def read_provenance(out_dir: Path) -> dict | None:
    try:
        info = json.loads((Path(out_dir) / PROVENANCE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) else None

