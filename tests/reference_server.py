"""The reference server (docs/deploy/reference-server.sh) for tests and benchmarks.

`reference_server(...)` runs the script's `setup` and `start` and always its `stop`: nginx
serving a copy of a fleet repository over smart HTTP (fcgiwrap, `git http-backend`, TLS from a
CA made for the test, one basic-auth credential per node and one for the operator, the
`edgefleet hook pre-receive --require-user` hook) and an artifact store as static files.

CPU accounting (`ReferenceServer.cpu_seconds`): fcgiwrap ignores SIGCHLD, so the kernel reaps
every `git http-backend` (and the upload-pack, receive-pack and hook under it) without adding
its CPU time to fcgiwrap's cutime/cstime. Where `start` could put the server into a cgroup of
its own (root, or a delegated cgroup v2 subtree: `run/cgroup` names it), the count is that
cgroup's `cpu.stat` and includes every process of the server, git's too, exactly. Elsewhere it
falls back to /proc/<pid>/stat (utime+stime+cutime+cstime) of the nginx master, its workers,
fcgiwrap and its preforked children, where a child counts once its parent reaped it: that
covers nginx's TLS and static files but not git. `cpu_accounting` says which one is in use.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "docs" / "deploy" / "reference-server.sh"
EDGEFLEET = Path(sys.executable).parent / "edgefleet"

# The access log's tab-separated fields, in order (docs/deploy/reference-server.md).
LOG_FIELDS = (
    "time",
    "user",
    "method",
    "uri",
    "status",
    "bytes_sent",
    "request_time",
    "request_length",
    "connection",
    "connection_requests",
    "ssl_session_reused",
)
_INTS = {"status", "bytes_sent", "request_length", "connection", "connection_requests"}


def read_env_file(path: Path) -> dict[str, str]:
    """`KEY=value` lines of server.env (values are never quoted: setup allows no characters
    that would need it)."""
    values = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key] = value
    return values


def run_script(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"reference-server.sh {args[0]} exited {done.returncode}: {done.stderr.strip()}"
        )
    return done


@dataclass
class ReferenceServer:
    dir: Path
    port: int
    git_url: str
    artifacts_url: str
    ca: Path

    @property
    def repo(self) -> Path:
        """The served bare repository."""
        return self.dir / "git" / "fleet.git"

    def gitconfig(self, user: str) -> Path:
        path = self.dir / "auth" / f"{user}.gitconfig"
        if not path.is_file():
            raise KeyError(f"expected a credential for {user!r} in {path.parent}, found none")
        return path

    def env(self, user: str) -> dict[str, str]:
        """This process's environment for a git command or an agent acting as `user`.

        GIT_SSL_CAINFO is removed: it would override the gitconfig's http.sslCAInfo.
        SSL_CERT_FILE makes httpx (trust_env, the default) trust only this server's CA.
        """
        env = {k: v for k, v in os.environ.items() if k != "GIT_SSL_CAINFO"}
        env["GIT_CONFIG_GLOBAL"] = str(self.gitconfig(user))
        env["SSL_CERT_FILE"] = str(self.ca)
        # A refused credential must fail, never wait at a prompt.
        env["GIT_TERMINAL_PROMPT"] = "0"
        return env

    def add_users(self) -> None:
        """Credentials for every node now in nodes/ on the served main branch."""
        run_script("users", str(self.dir))

    @property
    def cpu_accounting(self) -> str:
        """'cgroup' (every process of the server, git included) or 'proc' (nginx and fcgiwrap
        only); see the module's docstring."""
        return "cgroup" if (self.dir / "run" / "cgroup").is_file() else "proc"

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the server has used since `start`."""
        marker = self.dir / "run" / "cgroup"
        if marker.is_file():
            stat = Path(marker.read_text().strip()) / "cpu.stat"
            fields = dict(line.split() for line in stat.read_text().splitlines())
            return int(fields["usage_usec"]) / 1e6
        tick = os.sysconf("SC_CLK_TCK")
        return sum(_proc_ticks(pid) for pid in self._server_pids()) / tick

    def _server_pids(self) -> list[int]:
        roots = []
        for name in ("nginx.pid", "fcgiwrap.pid"):
            text = (self.dir / "run" / name).read_text().strip()
            roots.append(int(text))
        children = [pid for pid, ppid in _parents().items() if ppid in roots]
        return roots + children

    def access_log(self) -> list[dict[str, Any]]:
        """One dict per request: LOG_FIELDS, `user` None when the request carried none,
        numbers as int or float."""
        path = self.dir / "logs" / "access.log"
        entries = []
        for line in path.read_text().splitlines():
            values = line.split("\t")
            if len(values) != len(LOG_FIELDS):
                raise ValueError(f"{path}: expected {len(LOG_FIELDS)} fields, got: {line!r}")
            entry: dict[str, Any] = dict(zip(LOG_FIELDS, values, strict=True))
            for key in _INTS:
                entry[key] = int(entry[key])
            entry["request_time"] = float(entry["request_time"])
            entry["user"] = None if entry["user"] == "-" else entry["user"]
            entry["ssl_session_reused"] = entry["ssl_session_reused"] == "r"
            entries.append(entry)
        return entries


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; the fields after it do not.
    return text[text.rindex(")") + 2 :].split()


def _proc_ticks(pid: int) -> int:
    fields = _stat_fields(pid)
    if fields is None:
        return 0
    # utime, stime, cutime, cstime: fields 14-17 of proc(5), 12-15 after the name.
    return sum(int(v) for v in fields[11:15])


def _parents() -> dict[int, int]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                found[int(entry.name)] = int(fields[1])
    return found


@contextmanager
def reference_server(
    base: Path,
    fleet_git: Path,
    store: Path | None = None,
    operator: str = "operator",
    *,
    children: int = 8,
    workers: int = 2,
) -> Iterator[ReferenceServer]:
    """A running reference server in `base`/srv serving a mirror of `fleet_git`, and `store`
    under /artifacts/; stopped on the way out, whatever happened."""
    folder = base / "srv"
    args = ["--dir", str(folder), "--fleet", str(fleet_git), "--operator", operator]
    args += ["--children", str(children), "--workers", str(workers)]
    args += ["--edgefleet", str(EDGEFLEET)]
    if store is not None:
        args += ["--artifacts", str(store)]
    run_script("setup", *args)
    try:
        run_script("start", str(folder))
        values = read_env_file(folder / "server.env")
        yield ReferenceServer(
            dir=folder,
            port=int(values["PORT"]),
            git_url=values["GIT_URL"],
            artifacts_url=values["ARTIFACTS_URL"],
            ca=Path(values["CA"]),
        )
    finally:
        run_script("stop", str(folder))
