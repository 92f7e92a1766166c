"""`<stateDir>/metrics.prom`: the node's figures in the Prometheus text format.

Written for node_exporter's textfile collector, which reads whole files: the file is replaced
by a rename, so a scrape never sees half of it. It is derived from the journal and the last
cycle, never read back, so losing it loses nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

PREFIX = "edgefleet_agent"

# name -> (type, help)
METRICS: dict[str, tuple[str, str]] = {
    "last_sync_timestamp_seconds": ("gauge", "When the origin last answered (Unix time)."),
    "last_cycle_timestamp_seconds": ("gauge", "When the last cycle ended (Unix time)."),
    "last_cycle_exit_code": (
        "gauge",
        "Exit code of the last cycle (0 ok, 1 rolled back, 3"
        " rejected, 75 origin or artifacts unreachable).",
    ),
    "applied_release": ("gauge", "Version of the release this node runs (0: none)."),
    "state": ("gauge", "1 for the node's current state, by label."),
    "downloaded_bytes_total": ("counter", "Artifact bytes downloaded."),
    "applies_total": ("counter", "Releases applied and committed."),
    "rollbacks_total": ("counter", "Releases rolled back after failing on this node."),
    "rejections_total": ("counter", "Releases refused by verification or validation."),
    "health_check_duration_seconds": ("gauge", "Duration of the last run of each health check."),
}


def _number(value: float) -> str:
    # Unix times need ten digits before the point; `g` would round them to the minute.
    return str(int(value)) if float(value).is_integer() else format(value, ".15g")


def _line(name: str, value: float, labels: Mapping[str, str] | None = None) -> str:
    if labels:
        inner = ",".join(
            f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
            for k, v in sorted(labels.items())
        )
        return f"{PREFIX}_{name}{{{inner}}} {_number(value)}"
    return f"{PREFIX}_{name} {_number(value)}"


def render(
    values: Mapping[str, float],
    labelled: Iterable[tuple[str, Mapping[str, str], float]] = (),
) -> str:
    by_name: dict[str, list[str]] = {}
    for name, value in values.items():
        by_name.setdefault(name, []).append(_line(name, value))
    for name, labels, value in labelled:
        by_name.setdefault(name, []).append(_line(name, value, labels))
    out: list[str] = []
    for name in METRICS:
        if name not in by_name:
            continue
        kind, text = METRICS[name]
        out.append(f"# HELP {PREFIX}_{name} {text}")
        out.append(f"# TYPE {PREFIX}_{name} {kind}")
        out.extend(by_name[name])
    return "\n".join(out) + "\n"


def write(path: Path, text: str) -> None:
    # No fsync: metrics are rebuilt every cycle, and the no-op cycle must stay cheap.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
