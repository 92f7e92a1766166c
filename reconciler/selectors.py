"""Label selectors, as in Kubernetes: matchLabels and matchExpressions, all must hold.

An empty selector matches every node, so that a group or wave of `selector: {}` means "all".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", ()):
        key = expression["key"]
        operator = expression["operator"]
        present = key in labels
        if operator == "In":
            if not present or labels[key] not in expression["values"]:
                return False
        elif operator == "NotIn":
            if present and labels[key] in expression["values"]:
                return False
        elif operator == "Exists":
            if not present:
                return False
        elif present:  # DoesNotExist
            return False
    return True
