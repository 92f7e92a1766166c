"""A problem found in a fleet repository, and the three ways `validate` prints problems."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Problem:
    file: str
    line: int
    message: str
    severity: Severity = "error"
    rule: str = "schema"

    def text(self) -> str:
        prefix = "" if self.severity == "error" else "warning: "
        return f"{self.file}:{self.line}: {prefix}{self.message}"

    def github(self) -> str:
        # Workflow commands need their own escaping: data escapes %, CR, LF; properties also : and ,
        def data(value: str) -> str:
            return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")

        def prop(value: str) -> str:
            return data(value).replace(":", "%3A").replace(",", "%2C")

        return (
            f"::{self.severity} file={prop(self.file)},line={self.line},"
            f"title={prop('edgefleet ' + self.rule)}::{data(self.message)}"
        )


def errors(problems: Iterable[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


def render_problems(problems: list[Problem], fmt: str) -> str:
    ordered = sorted(problems)
    if fmt == "json":
        return json.dumps([asdict(p) for p in ordered], indent=2)
    if fmt == "github":
        return "\n".join(p.github() for p in ordered)
    return "\n".join(p.text() for p in ordered)
