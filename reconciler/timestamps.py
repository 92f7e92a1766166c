"""UTC timestamps as documents carry them (2026-11-22T10:00:00Z), and expiry arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from reconciler.durations import parse_duration


def parse_timestamp(text: str) -> datetime:
    value = datetime.strptime(text.replace(".", "").split("Z")[0][:19], "%Y-%m-%dT%H:%M:%S")
    return value.replace(tzinfo=UTC)


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
