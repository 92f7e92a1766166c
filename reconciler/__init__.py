"""EdgeFleet's core: the fleet repository model, schema and meaning checks, rendering.

The core takes bytes and parsed documents, decides, and raises; it never talks to
the network. The node agent (`node_agent`) is the shell around it that fetches,
persists and calls in.
"""

__version__ = "0.1.0"
