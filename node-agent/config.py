"""The agent's configuration file: read safely, checked against its schema, paths resolved."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reconciler.durations import parse_duration
from reconciler.errors import DocumentError, UsageError
from reconciler.schema_check import schema_errors
from reconciler.yaml_loader import load_yaml

CONFIG_SCHEMA = "agent-config.json"


class ConfigError(UsageError):
    """A configuration file that cannot be used; the agent exits 2 and changes nothing."""


@dataclass(frozen=True)
class AgentConfig:
    path: Path
    node: str
    repo: str
    trust_root: Path
    state_dir: Path
    identity_key: Path
    artifact_sources: tuple[str, ...]
    # None: follow the fleet's pollInterval from the release applied (60 s before one is).
    poll_interval: int | None
    heartbeat_interval: int
    log_format: str
    busy_file: Path | None = None
    busy_command: tuple[str, ...] = ()
    busy_timeout: float = 10.0
    # The first poll of `run` waits uniform(0, start_jitter) seconds, so that nodes powered
    # back on together after a regional outage do not all reach the origin in the same
    # second. None: the poll interval in effect; 0: poll at once.
    start_jitter: int | None = None
    # The absolute cap of the retry backoff, on top of the cap of 32 poll intervals: with a
    # long interval, 32 of them would leave a node that saw one outage silent for a day.
    max_backoff: int = 3600


def _looks_like_path(repo: str) -> bool:
    # git's own rule: a colon before the first slash makes "host:path" an SSH address.
    return "://" not in repo and ":" not in repo.split("/", 1)[0]


def _jitter(text: str) -> int:
    # Durations in documents are positive; the schema lets this one be 0s to turn it off.
    return 0 if text[0] == "0" else parse_duration(text)


def load_config(path: Path) -> AgentConfig:
    """Read and check a configuration; relative paths are taken from the file's own folder."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration ({exc.strerror})") from None
    try:
        loaded = load_yaml(data, str(path))
    except DocumentError as exc:
        raise ConfigError(str(exc)) from None
    problems = sorted(
        (loaded.line_of(where), message)
        for where, message in schema_errors(loaded.data, CONFIG_SCHEMA)
    )
    if problems:
        lines = [f"{path}:{line}: {message}" for line, message in problems]
        raise ConfigError(f"{len(lines)} problem(s) in the configuration:\n" + "\n".join(lines))
    doc = loaded.data
    base = path.resolve().parent

    def local(value: str) -> Path:
        return (base / value).resolve()

    busy = doc.get("busy") or {}
    repo = doc["repo"]
    if _looks_like_path(repo) and not repo.startswith("/"):
        repo = str(local(repo))
    return AgentConfig(
        path=path,
        node=doc["node"],
        repo=repo,
        trust_root=local(doc["trustRoot"]),
        state_dir=local(doc["stateDir"]),
        identity_key=local(doc["identityKey"]),
        artifact_sources=tuple(doc.get("artifactSources", ())),
        poll_interval=parse_duration(doc["pollInterval"]) if "pollInterval" in doc else None,
        heartbeat_interval=parse_duration(doc.get("heartbeatInterval", "1h")),
        log_format=doc.get("logFormat", "json"),
        busy_file=local(busy["file"]) if "file" in busy else None,
        busy_command=tuple(busy.get("command", ())),
        busy_timeout=float(busy.get("timeoutSeconds", 10)),
        start_jitter=_jitter(doc["startJitter"]) if "startJitter" in doc else None,
        max_backoff=parse_duration(doc.get("maxBackoff", "1h")),
    )
