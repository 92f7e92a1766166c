"""The agent's log: one JSON line per event for journald and collectors, key=value at a terminal.

A structlog processor chain: level, UTC timestamp, the node bound once, then the renderer.
Every step of a cycle is one event named `<area>.<what>` with the node, the release and the
component it concerns, so that `jq 'select(.release == 7)'` tells one update's story.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog


def configure(node: str, fmt: str = "json", stream: TextIO | None = None) -> Any:
    """A logger bound to `node`; `fmt` is `json` or `console` (the default when at a terminal)."""
    out = stream or sys.stderr
    renderer: Any
    if fmt == "console" or (fmt == "auto" and out.isatty()):
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    else:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    return structlog.get_logger().bind(node=node)
