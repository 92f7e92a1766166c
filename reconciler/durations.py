"""Durations as the documents write them: a positive whole number and one unit (30s, 5m, 1h, 7d)."""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PATTERN = re.compile(r"^([1-9][0-9]{0,8})([smhd])$")


def parse_duration(text: str) -> int:
    """Seconds in a duration; ValueError saying what was expected for anything else."""
    match = _PATTERN.match(text)
    if match is None:
        raise ValueError(f"got {text!r}, expected a duration like 30s, 5m, 1h or 7d")
    return int(match.group(1)) * _UNITS[match.group(2)]
