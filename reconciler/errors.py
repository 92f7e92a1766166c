"""One error hierarchy for every command; `main()` turns it into a message and an exit code."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.problems import Problem


class EdgeFleetError(Exception):
    """Base of every error a user is meant to read; `exit_code` is what the command returns."""

    exit_code = 1


class UsageError(EdgeFleetError):
    """The command was called wrongly (a missing file, a bad flag value)."""

    exit_code = 2


class DocumentError(EdgeFleetError):
    """A document could not be read: it names the file and the line."""

    def __init__(self, file: str, line: int, message: str) -> None:
        super().__init__(f"{file}:{line}: {message}")
        self.file = file
        self.line = line
        self.message = message


class ValidationFailed(EdgeFleetError):
    """A fleet repository or a document failed validation; carries every problem found."""

    def __init__(self, problems: Sequence[Problem], summary: str) -> None:
        super().__init__(summary)
        self.problems = list(problems)


class RenderError(EdgeFleetError):
    """A node's desired state cannot be rendered (unknown node, unresolved artifact)."""
