"""What makes a split's scores untrustworthy, found from the manifest alone, as sentences for the user.

A Test split that shares individuals or recordings with Train measures recognition of the individual; a class with a
handful of Test clips gives a score of a few coin flips; a class that is the only one from its recording source (one
group, one sample rate) can be told apart by the source, not the call. None of these stop a study; each is said.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from vocalprobe.runtime.core.audio import audio_info
from vocalprobe.runtime.core.errors import AudioError
from vocalprobe.runtime.core.manifest import Manifest

MIN_TEST_CLIPS = 5


def _shared(manifest: Manifest, key, what: str) -> list[str]:
    by_split: dict[str, set] = defaultdict(set)
    for row in manifest:
        value = key(row)
        if value is not None and row.split:
            by_split[row.split].add(value)
    out = []
    for split in ("test", "val"):
        both = by_split[split] & by_split["train"]
        if both:
            out.append(f"{split.capitalize()} shares {len(both)} of its {len(by_split[split])} {what} with Train "
                       f"(e.g. {sorted(both)[0]}): its scores measure recognising them, not the call; re-split with "
                       "`vocalprobe data split MANIFEST --group-by group`")
    return out


def _confounded(label_values: dict[str, set], what: str) -> list[str]:
    """Classes whose clips all share one value of ``what`` that no other class has."""
    owners: dict = defaultdict(set)
    for label, values in label_values.items():
        for value in values:
            owners[value].add(label)
    alone = sorted(label for label, values in label_values.items()
                   if len(values) == 1 and owners[next(iter(values))] == {label})
    if len(label_values) < 2 or not alone:
        return []
    return [f"class and recording source are confounded: {len(alone)} of {len(label_values)} classes "
            f"({', '.join(alone[:5])}{', ...' if len(alone) > 5 else ''}) each come from a single {what} no other "
            "class has, so a probe can tell them apart by the source, not the call"]


def audit(manifest: Manifest) -> list[str]:
    """Warnings about a split manifest: shared groups/recordings, small Test classes, class/source confounds."""
    out = _shared(manifest, lambda r: r.group, "groups")
    segmented = {r.path for r in manifest if r.start is not None or r.end is not None}
    out += _shared(manifest, lambda r: r.path if r.path in segmented else None, "recordings")
    test = Counter(r.label for r in manifest if r.split == "test")
    small = sorted(label for label in manifest.labels if test[label] < MIN_TEST_CLIPS)
    if small:
        shown = ", ".join(f"{label} ({test[label]})" for label in small[:8])
        out.append(f"{len(small)} class(es) have fewer than {MIN_TEST_CLIPS} Test clips: {shown}"
                   f"{', ...' if len(small) > 8 else ''}; their Test recall moves in steps of 20 points or more")
    groups: dict[str, set] = defaultdict(set)
    for row in manifest:
        groups[row.label].add(row.group)
    if all(None not in values for values in groups.values()):
        out += _confounded(groups, "group")
    rates: dict[str, set] = defaultdict(set)
    seen: dict[str, int | None] = {}
    for row in manifest:
        path = str(manifest.audio_path(row))
        if path not in seen:
            try:
                seen[path] = audio_info(path).sample_rate
            except AudioError:
                seen[path] = None
        if seen[path] is not None:
            rates[row.label].add(seen[path])
    out += _confounded(rates, "sample rate")
    return out
