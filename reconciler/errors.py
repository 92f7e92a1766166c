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


class ReleaseInvalid(ValidationFailed):
    """A signed release whose desired state fails validation: refused like a bad signature."""

    exit_code = 3


class RenderError(EdgeFleetError):
    """A node's desired state cannot be rendered (unknown node, unresolved artifact)."""


class TrustError(EdgeFleetError):
    """A release or trust root was refused by verification; nothing it names may be applied.

    Every subclass names the rule that failed, so that an operator (and the threat table in
    docs/trust.md) can tell an attack from a signing mistake.
    """

    exit_code = 3
    rule = "trust"


class SignatureError(TrustError):
    """Too few valid signatures from distinct trusted keys, or a signature that does not verify."""

    rule = "threshold"


class RollbackError(TrustError):
    """A version not above the one already accepted (rollback, or replay of an equal version)."""

    rule = "rollback"


class ExpiredError(TrustError):
    """Signed metadata whose expiry has passed (freeze), judged by a clock never set back."""

    rule = "expired"


class MixAndMatchError(TrustError):
    """Pieces that never belonged together: another fleet's release, a tag and its payload."""

    rule = "mix-and-match"


class TamperedError(TrustError):
    """Content whose digest differs from what was signed."""

    rule = "tampered"


class ReleaseChainError(TrustError):
    """A release that lists only what changed since an earlier one, whose earlier release is
    missing, altered, of another fleet, or too far back to follow."""

    rule = "release-chain"


class RootChainError(TrustError):
    """A trust root rotation that does not follow the chain (thresholds of old and new keys)."""

    rule = "root-chain"


class SigstoreError(TrustError):
    """A sigstore bundle that does not verify, or whose identity the trust root does not allow."""

    rule = "sigstore"
