"""UTC timestamps as documents carry them (2026-11-22T10:00:00Z), and expiry arithmetic."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from reconciler.durations import parse_duration

_SHAPE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


def parse_timestamp(text: str) -> datetime:
    head = text.replace(".", "").split("Z")[0][:19]
    # The shape checked first: fromisoformat alone would also take other ISO 8601 spellings,
    # and it is ten times faster than strptime (2,000 status documents a run).
    if not _SHAPE.fullmatch(head):
        raise ValueError(f"time data {head!r} does not match format 'YYYY-MM-DDTHH:MM:SS'")
    return datetime.fromisoformat(head).replace(tzinfo=UTC)


def format_timestamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def expiry(text: str, start: datetime) -> datetime:
    """`--expires` as a duration from `start` (30d) or an absolute timestamp."""
    try:
        return start + timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        return parse_timestamp(text)
    except ValueError:
        raise ValueError(
            f"got {text!r}, expected a duration like 30d or a timestamp like 2027-01-01T00:00:00Z"
        ) from None
