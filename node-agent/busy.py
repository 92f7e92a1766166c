"""Whether this node says it is busy now: a file that exists, or a command that answers.

The agent asks before every apply; a busy node defers and reports `deferred` with the reason,
and the rollout gate counts it as pending. A command that fails or does not answer counts as
busy: interrupting a running procedure costs more than a late update.
"""

from __future__ import annotations

import subprocess

from node_agent.config import AgentConfig


def busy_reason(config: AgentConfig) -> str | None:
    """Why the node is busy, or None when it is free to apply."""
    if config.busy_file is not None and config.busy_file.exists():
        try:
            said = config.busy_file.read_text(errors="replace").strip().splitlines()
        except OSError:
            said = []
        why = said[0] if said else "no reason given"
        return f"busy: {config.busy_file} exists ({why})"
    if config.busy_command:
        shown = " ".join(config.busy_command)
        try:
            done = subprocess.run(
                list(config.busy_command),
                capture_output=True,
                text=True,
                timeout=config.busy_timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return f"busy: `{shown}` gave no answer within {config.busy_timeout:g}s (taken as busy)"
        except OSError as exc:
            return f"busy: `{shown}` could not run ({exc.strerror or exc}; taken as busy)"
        if done.returncode == 0:
            said = done.stdout.strip().splitlines()
            return f"busy: {said[0] if said else f'`{shown}` says so'}"
        if done.returncode != 1:
            return (
                f"busy: `{shown}` exited {done.returncode}, expected 0 (busy) or 1 (free);"
                " taken as busy"
            )
    return None
