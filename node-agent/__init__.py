"""EdgeFleet's node agent: the shell that fetches, persists and applies, around the core."""

from reconciler import __version__

__all__ = ["__version__"]
