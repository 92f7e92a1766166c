"""Every size and count limit of the core, in one place, to be seen and tuned together."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    # A hand-written fleet document is kilobytes; the catalog of a big fleet a few megabytes.
    max_yaml_bytes: int = 4 * 1024 * 1024
    # Deeper nesting than this is never needed by the format and only serves to exhaust the stack.
    max_yaml_depth: int = 64
    # Nodes after alias expansion: stops "billion laughs" documents before they are expanded.
    max_yaml_nodes: int = 500_000
    # Files read from one fleet repository (nodes/ dominates).
    max_repo_files: int = 200_000


DEFAULT_LIMITS = Limits()
