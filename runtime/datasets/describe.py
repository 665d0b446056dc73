"""The paper's Table I for any manifest: clips, total minutes, sample rates, classes, median and std of length."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from vocalprobe.runtime.core.audio import AudioInfo, audio_info
from vocalprobe.runtime.core.errors import AudioError
from vocalprobe.runtime.core.manifest import SPLITS, Manifest


@dataclass
class DatasetSummary:
    n_clips: int
    total_minutes: float
    sample_rates: list[int]
    n_classes: int
    median_ms: float
    std_ms: float
    per_class: dict[str, Counter] = field(default_factory=dict)  # label -> Counter(split or "all")
    unreadable: list[str] = field(default_factory=list)

    def table_one(self) -> dict[str, str]:
        rates = "/".join(f"{r / 1000:g}" for r in self.sample_rates)
        return {"# Samples": f"{self.n_clips:,}", "L (min)": f"{self.total_minutes:.1f}",
                "SR (kHz)": rates if len(self.sample_rates) == 1 else f"mixed ({rates})",
                "n_c": str(self.n_classes), "median (ms)": f"{self.median_ms:.0f}", "std (ms)": f"{self.std_ms:.0f}"}


def summarize(manifest: Manifest) -> DatasetSummary:
    """Durations come from start/end when given, else from the file header (no audio is decoded)."""
    infos: dict[str, AudioInfo | None] = {}
    durations, rates, unreadable = [], set(), []
    per_class: dict[str, Counter] = {}
    for row in manifest:
        path = str(manifest.audio_path(row))
        if path not in infos:
            try:
                infos[path] = audio_info(path)
            except AudioError as exc:
                infos[path] = None
                unreadable.append(str(exc))
        info = infos[path]
        if info is None:
            continue
        rates.add(info.sample_rate)
        start = row.start or 0.0
        end = row.end if row.end is not None else info.duration
        durations.append(max(0.0, end - start))
        counts = per_class.setdefault(row.label, Counter())
        counts["all"] += 1
        if row.split:
            counts[row.split] += 1
    seconds = np.asarray(durations) if durations else np.zeros(1)
    return DatasetSummary(n_clips=len(durations), total_minutes=float(seconds.sum() / 60), sample_rates=sorted(rates),
                          n_classes=len(per_class), median_ms=float(np.median(seconds) * 1000),
                          std_ms=float(np.std(seconds) * 1000), per_class=dict(sorted(per_class.items())),
                          unreadable=unreadable)


def render(summary: DatasetSummary, title: str) -> list:
    """Table I, the per-class counts (with split columns when the manifest has splits) and the unreadable clips, as
    rich renderables for the CLI to print."""
    from rich.table import Table

    out = []
    table_one = Table(title=f"{title} (Table I)")
    row = summary.table_one()
    for column in row:
        table_one.add_column(column, justify="right")
    table_one.add_row(*row.values())
    out.append(table_one)
    has_splits = any(c[s] for c in summary.per_class.values() for s in SPLITS)
    classes = Table(title="clips per class")
    classes.add_column("class")
    for column in ("all", *SPLITS) if has_splits else ("all",):
        classes.add_column(column, justify="right")
    for label, counts in summary.per_class.items():
        classes.add_row(label, *(str(counts[c]) for c in (("all", *SPLITS) if has_splits else ("all",))))
    out.append(classes)
    out.extend(f"[red]unreadable:[/red] {problem}" for problem in summary.unreadable)
    return out
