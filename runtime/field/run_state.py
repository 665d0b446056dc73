"""The run state of `vocalprobe stream --out DIR`: which inputs are done or failed, so a restarted (or watching)
run continues where it stopped and processes each file exactly once.

It is one small JSON file, rewritten atomically after every file. A file counts as done only while its size and
modification time are what they were when it was processed: a recording that was replaced is analysed again.
The settings that shape the outputs are stored too; resuming into the same folder with different settings is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vocalprobe.runtime.core.atomic import atomic_write_text
from vocalprobe.runtime.core.digests import json_sha256
from vocalprobe.runtime.core.errors import VocalprobeError

STATE_NAME = ".vocalprobe-stream-state.json"
STATE_VERSION = 1


class StateError(VocalprobeError):
    """An output folder whose state file is unreadable or was written with other settings."""


def _fingerprint(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class RunState:
    def __init__(self, out_dir: str | Path, settings: dict):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / STATE_NAME
        self.settings = settings
        self.done: dict[str, dict] = {}
        self.failed: dict[str, dict] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise StateError(f"{self.path}: unreadable run state ({exc}); delete it to start this folder over") from exc
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise StateError(f"{self.path}: not a vocalprobe run state (version {data.get('version')!r}); "
                             "delete it to start this folder over")
        if data.get("settings_sha256") != json_sha256(self.settings):
            changed = sorted(k for k in set(self.settings) | set(data.get("settings", {}))
                             if self.settings.get(k) != data.get("settings", {}).get(k))
            raise StateError(f"{self.out_dir} holds results made with other settings (changed: {', '.join(changed)}); "
                             "use another --out folder, or delete it to start over")
        self.done = dict(data.get("done", {}))
        self.failed = dict(data.get("failed", {}))

    @staticmethod
    def key(path: str | Path) -> str:
        return os.path.abspath(path)

    def is_done(self, path: Path) -> bool:
        """Done, or failed on this very version of the file (a failed file is retried once it changes)."""
        key = self.key(path)
        record = self.done.get(key) or self.failed.get(key)
        if record is None:
            return False
        try:
            return record["fingerprint"] == _fingerprint(Path(path))
        except FileNotFoundError:
            return True  # gone since: nothing left to do

    def mark_done(self, path: Path, name: str, n_detections: int, outputs: list[str]) -> None:
        key = self.key(path)
        self.failed.pop(key, None)
        self.done[key] = {"name": name, "detections": n_detections, "outputs": outputs,
                          "fingerprint": _fingerprint(path)}
        self.save()

    def mark_failed(self, path: Path, name: str, problem: str) -> None:
        key = self.key(path)
        self.done.pop(key, None)
        try:
            fingerprint = _fingerprint(path)
        except FileNotFoundError:
            fingerprint = None
        self.failed[key] = {"name": name, "problem": problem, "fingerprint": fingerprint}
        self.save()

    def done_names(self) -> set[str]:
        return {record["name"] for record in self.done.values()}

    def save(self) -> None:
        data = {"version": STATE_VERSION, "settings_sha256": json_sha256(self.settings),
                "settings": self.settings, "done": self.done, "failed": self.failed}
        atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n")
