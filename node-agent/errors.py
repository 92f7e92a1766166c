"""The agent's errors, in the one hierarchy of `reconciler.errors`; each carries its exit code."""

from __future__ import annotations

from reconciler.errors import EdgeFleetError


class OriginUnreachable(EdgeFleetError):
    """The fleet repository could not be fetched; the node keeps running what it runs."""

    exit_code = 75


class ArtifactUnavailable(EdgeFleetError):
    """No source delivered an artifact's exact bytes; nothing was switched, retried later."""

    exit_code = 75

    def __init__(self, message: str, reasons: dict[str, str] | None = None) -> None:
        super().__init__(message)
        # source URL -> why it failed, in the order the sources were tried
        self.reasons = dict(reasons or {})


class UnsafeArchive(EdgeFleetError):
    """A signed artifact whose archive would write outside its bank or create what it must not.

    The release is refused on this node (like a release that fails validation)."""

    exit_code = 3


class ApplyFailed(EdgeFleetError):
    """A release was switched to, failed its hooks or health checks, and was rolled back."""

    exit_code = 1
