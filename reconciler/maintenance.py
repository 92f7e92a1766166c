"""Maintenance windows: whether a node may apply a release now, and when it next may. No I/O.

A window opens on each of its `days` (every day by default) at `start` local time and closes
at `end`; an `end` at or before `start` falls on the next day (22:00-06:00 runs overnight),
and `end: 24:00` closes at midnight. Times are in the window's `timezone` (IANA, UTC by
default), so a store's night stays its night across daylight-saving changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class WindowInvalid(ValueError):
    """A window the schema lets through but that cannot be used (an unknown time zone)."""


def zone(maintenance: Mapping[str, Any]) -> tzinfo:
    name = str(maintenance.get("timezone") or "UTC")
    if name == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise WindowInvalid(
            f"maintenance.timezone: got {name!r}, expected an IANA time zone such as Europe/Berlin"
        ) from None


def _minutes(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def _spans(maintenance: Mapping[str, Any], around: datetime) -> list[tuple[datetime, datetime]]:
    """Every opening of every window from two days before `around` to eight days after, as
    aware datetimes in the window's zone."""
    tz = zone(maintenance)
    local = around.astimezone(tz)
    spans = []
    for offset in range(-2, 9):
        day = (local + timedelta(days=offset)).date()
        for window in maintenance.get("windows") or []:
            days = window.get("days") or DAYS
            if DAYS[day.weekday()] not in days:
                continue
            start, end = _minutes(window["start"]), _minutes(window["end"])
            if end <= start:
                end += 24 * 60
            midnight = datetime(day.year, day.month, day.day, tzinfo=tz)
            # Wall-clock arithmetic in the zone, then normalised: 22:00 local stays 22:00.
            opens = (midnight + timedelta(minutes=start)).astimezone(UTC)
            closes = (midnight + timedelta(minutes=end)).astimezone(UTC)
            spans.append((opens, closes))
    return sorted(spans)


def window_state(maintenance: Mapping[str, Any] | None, at: datetime) -> tuple[bool, str]:
    """(open, why): whether a release may be applied at `at` (aware), and a sentence saying
    which window is open or when the next one opens."""
    if not maintenance:
        return True, "no maintenance window: any time"
    tz = zone(maintenance)
    spans = _spans(maintenance, at)
    for opens, closes in spans:
        if opens <= at < closes:
            return True, f"inside the maintenance window until {_local(closes, tz)}"
    upcoming = [opens for opens, _ in spans if opens > at]
    when = _local(min(upcoming), tz) if upcoming else "never in the next week"
    return False, f"outside the maintenance window; the next opens {when}"


def _local(moment: datetime, tz: tzinfo) -> str:
    return moment.astimezone(tz).strftime("%a %Y-%m-%d %H:%M %Z")
