"""Recorders' clocks: the start time a file name carries, and the clock time of an event in that file."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

# AudioMoth and Wildlife Acoustics recorders name files by their start time: 20210502_040000.WAV,
# SMA01234_20210502_040000.wav; some tools write 20210502T040000, and a trailing Z says UTC (MARS-20150910T000000Z).
_TIMESTAMP = re.compile(r"(?<!\d)(\d{8})[_T-]?(\d{6})(?!\d)(Z(?![A-Za-z]))?")


def parse_recorder_timestamp(name: str | Path) -> datetime | None:
    """The start time a recorder encoded in a file name, e.g. AudioMoth ``20210502_040000.WAV``, else None.

    A trailing ``Z`` (``MARS-20150910T000000Z``) makes it a UTC time; without one it is returned as written, without
    a time zone (AudioMoth writes UTC unless configured otherwise, but does not say so in the name).
    """
    match = _TIMESTAMP.search(Path(name).stem)
    if match is None:
        return None
    try:
        when = datetime.strptime(match.group(1) + match.group(2), "%Y%m%d%H%M%S")
    except ValueError:  # eight + six digits that are not a date, e.g. a serial number
        return None
    return when.replace(tzinfo=timezone.utc) if match.group(3) else when


def clock_time(recording_start: datetime, offset_s: float) -> str:
    """ISO 8601 time of an event; a UTC start keeps its ``Z``."""
    text = (recording_start + timedelta(seconds=offset_s)).isoformat(timespec="milliseconds")
    return text[:-len("+00:00")] + "Z" if text.endswith("+00:00") else text
