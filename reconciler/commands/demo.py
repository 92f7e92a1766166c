"""`edgefleet demo`: the whole story on this machine, with no server to set up.

It makes keys and a trust root, releases the example fleet from a bare repository on disk,
runs the real agent for three nodes (in this process, each with its own state directory and
log), then releases a model that fails its ONNX check, shows every affected node roll back
and not retry it, releases a fixed model and shows every node converged. Everything it makes
stays in `--dir` for inspection with `edgefleet-agent status` and `git log`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import io
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import git
import yaml

from reconciler.commands.release import cmd_release
from reconciler.commands.trust import build_root, write_signers
from reconciler.errors import UsageError
from reconciler.keyfiles import write_key_pair
from reconciler.keys import SigningKey
from reconciler.signing import sign_envelope
from reconciler.timestamps import format_timestamp, now

EXAMPLE = Path(__file__).resolve().parents[2] / "fleet-repo-example"
NODES = {
    "store-0042": "a canary store",
    "store-0101": "a store in Munich",
    "wh-venlo-01": "a warehouse in Venlo",
}
MODEL = "anomaly-model"
CANARY = "store-0042"


def _say(text: str = "") -> None:
    print(text, flush=True)


def load_example_builder() -> ModuleType:
    """The example fleet's own artifact builder (`make-artifacts.py`), loaded as a module."""
    script = EXAMPLE / "make-artifacts.py"
    if not script.is_file():
        raise UsageError(
            f"{EXAMPLE}: got no example fleet, expected a source checkout of EdgeFleet"
            " (the demo releases fleet-repo-example/)"
        )
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise UsageError(
            "the demo builds ONNX models with the onnx package, which is not installed;"
            " expected `pip install -e '.[demo]'`"
        ) from None
    spec = importlib.util.spec_from_file_location("edgefleet_example_artifacts", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _variant_model(builder: ModuleType, version: str, broken: bool) -> bytes:
    """anomaly-model 1.3.0 re-exported as `version`; `broken` scales its output layer, as a
    bad export would, so that its scores drift far from the golden ones."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(builder.build_model("1.3.0"))
    if broken:
        last = max(
            (t for t in model.graph.initializer if t.name.endswith(".weight")),
            key=lambda t: t.name,
        )
        weights = numpy_helper.to_array(last) * np.float32(1.8)
        last.CopyFrom(numpy_helper.from_array(weights.astype(np.float32), name=last.name))
    del model.metadata_props[:]
    helper.set_model_props(model, {"name": MODEL, "version": version})
    model.doc_string = f"EdgeFleet example {MODEL} {version}"
    return bytes(model.SerializeToString())


def _localize(fleet: Path, artifacts: Path) -> None:
    """Make the example runnable here: hooks write to a log instead of calling systemctl,
    exec checks that name programs of a real store are replaced by the bank's own self-test,
    and artifacts come from a folder on this machine."""

    def component(spec: dict[str, Any]) -> None:
        hooks = spec.get("hooks")
        if hooks:
            for phase in list(hooks):
                hooks[phase] = [
                    "sh",
                    "-c",
                    f'echo "$(date -u +%FT%TZ) {phase} $EDGEFLEET_ARTIFACT" >> ../hooks.log',
                ]
        health = []
        for check in spec.get("health") or []:
            argv = check.get("exec", {}).get("argv")
            if argv is None:
                health.append(check)
            elif argv[0].endswith("/bin/pos-app"):
                health.append({"exec": {**check["exec"], "argv": ["sh", "bin/pos-app", *argv[1:]]}})
        if "health" in spec:
            spec["health"] = health

    for path in [fleet / "fleet.yaml", *sorted((fleet / "groups").glob("*.yaml"))]:
        doc = yaml.safe_load(path.read_text())
        if doc["kind"] == "Fleet":
            doc["spec"]["artifactSources"] = [artifacts.as_uri() + "/"]
        for spec in (doc["spec"].get("components") or {}).values():
            if spec:
                component(spec)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))


class Demo:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.fleet = base / "fleet"
        self.origin = base / "origin.git"
        self.artifacts = base / "artifacts"
        self.keys_dir = base / "keys"
        self.started = time.monotonic()

    def step(self, text: str) -> None:
        _say(f"[{time.monotonic() - self.started:5.1f}s] {text}")

    def git(self, *args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(self.fleet), *args], capture_output=True, text=True, check=True
        ).stdout

    def commit(self, message: str) -> None:
        self.git("add", "-A")
        self.git(
            "-c",
            "user.name=EdgeFleet demo operator",
            "-c",
            "user.email=operator@demo.invalid",
            "commit",
            "-q",
            "-m",
            message,
        )

    def store(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (self.artifacts / "sha256").mkdir(parents=True, exist_ok=True)
        (self.artifacts / "sha256" / digest).write_bytes(data)
        return digest

    def add_model(self, version: str, data: bytes, description: str, base: bytes) -> None:
        """A new model version in the catalog, offered as a patch from `base` (what most
        nodes run) as `edgefleet artifacts add --delta-from` would."""
        from reconciler.deltas import compressed_full_size, make_patch

        digest = self.store(data)
        patch = make_patch(base, data)
        entry: dict[str, Any] = {
            "file": "anomaly-model.onnx",
            "sha256": digest,
            "size": len(data),
            "url": f"sha256/{digest}",
            "unpack": "none",
            "description": description,
        }
        if len(patch.data) < compressed_full_size(data):
            patch_digest = self.store(patch.data)
            entry["deltas"] = [
                {
                    "from": hashlib.sha256(base).hexdigest(),
                    "format": patch.format,
                    "sha256": patch_digest,
                    "size": len(patch.data),
                    "url": f"sha256/{patch_digest}",
                }
            ]
        catalog_path = self.fleet / "artifacts.yaml"
        catalog = yaml.safe_load(catalog_path.read_text())
        catalog["spec"]["artifacts"][f"{MODEL}@{version}"] = entry
        catalog_path.write_text(yaml.safe_dump(catalog, sort_keys=False))
        fleet_path = self.fleet / "fleet.yaml"
        fleet = yaml.safe_load(fleet_path.read_text())
        fleet["spec"]["components"][MODEL]["artifact"] = f"{MODEL}@{version}"
        fleet_path.write_text(yaml.safe_dump(fleet, sort_keys=False))

    def release(self, release_keys: list[Path], wave: str | None = None) -> int:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            cmd_release(
                argparse.Namespace(
                    repo=str(self.fleet),
                    key=[str(k) for k in release_keys],
                    expires="30d",
                    wave=wave,
                    sigstore=False,
                    push=False,
                    remote="origin",
                )
            )
        import json

        info = json.loads(out.getvalue())
        self.git("push", "-q", "origin", "HEAD:refs/heads/main", f"refs/tags/{info['tag']}")
        version: int = info["version"]
        to = f"wave {wave} (baseline release {info['baseline']})" if wave else "every node"
        self.step(
            f"signed release {version} for {to}: tag {info['tag']} on commit"
            f" {info['commit'][:12]}, {len(info['signers'])} release signatures, pushed to"
            f" {self.origin.name}"
        )
        return version

    def rollout(self, action: str, release_keys: list[Path], auto: bool = False) -> str:
        """`edgefleet rollout ACTION` on the fleet clone, as an operator or a CI job runs it;
        what it printed."""
        from reconciler.commands.rollout import GateClosed, cmd_rollout_advance, cmd_rollout_status

        args = argparse.Namespace(
            repo=str(self.fleet),
            no_fetch=False,
            format="text",
            key=[str(k) for k in release_keys],
            expires="30d",
            sigstore=False,
            push=True,
            remote="origin",
            auto=auto,
        )
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                if action == "status":
                    cmd_rollout_status(args)
                else:
                    cmd_rollout_advance(args)
            except GateClosed as exc:
                print(f"error: {exc}", file=err)
        # The new tag's JSON is for scripts; the sentence on stderr says what happened.
        said = "" if out.getvalue().startswith("{") else out.getvalue()
        return (said + err.getvalue()).strip()


def _make_keys(demo: Demo) -> dict[str, SigningKey]:
    keys: dict[str, SigningKey] = {}
    for name in ("root1", "root2", "release1", "release2", *NODES):
        key = SigningKey.generate(name)
        write_key_pair(demo.keys_dir / name, key)
        keys[name] = key
    return keys


def _agents(demo: Demo) -> dict[str, Callable[[], Any]]:
    from node_agent.agent import Agent
    from node_agent.config import load_config
    from node_agent.logs import configure

    runners: dict[str, Callable[[], Any]] = {}
    for node in NODES:
        home = demo.base / "nodes" / node
        home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(demo.fleet / "trust" / "roots" / "1.json", home / "root.json")
        config_path = home / "agent.yaml"
        config_path.write_text(
            yaml.safe_dump(
                {
                    "node": node,
                    "repo": str(demo.origin),
                    "trustRoot": "root.json",
                    "stateDir": "state",
                    "identityKey": str(demo.keys_dir / node),
                }
            )
        )
        config = load_config(config_path)
        log_file = home / "agent.log"

        def once(config: Any = config, log_file: Path = log_file, node: str = node) -> Any:
            with log_file.open("a") as stream:
                return Agent(config, configure(node, "json", stream)).once()

        runners[node] = once
    return runners


def _report(runners: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    outcomes = {}
    for node, once in runners.items():
        outcome = once()
        journal = outcome.journal
        parts = ", ".join(
            f"{name} {rec.banks[rec.current].artifact.split('@')[1]} (bank {rec.current})"
            for name, rec in sorted(journal.components.items())
            if rec.current
        )
        code, state = outcome.exit_code, journal.state
        _say(f"    {node:<12} exit {code:<3} {state:<12} release {journal.release}  {parts}")
        if outcome.exit_code != 0 and journal.last_error:
            _say(f"    {'':<12} why: {journal.last_error['reason']}")
        patches = journal.transfer.get("patches") if outcome.staged else None
        for name, used in (patches or {}).items():
            full = used["fullBytes"]
            _say(
                f"    {'':<12} {name} arrived as a {used['format']} of {used['bytes']:,} bytes"
                f" instead of {full:,} ({100 * used['bytes'] / full:.1f}% of the full file)"
            )
        outcomes[node] = outcome
    return outcomes


def run_demo(base: Path) -> int:
    demo = Demo(base)
    _say(f"EdgeFleet demo in {base}")
    builder = load_example_builder()
    keys = _make_keys(demo)
    demo.step(
        "made ed25519 keys (OpenSSH format): root1, root2, release1, release2, and one per node"
    )

    shutil.copytree(EXAMPLE, demo.fleet, ignore=shutil.ignore_patterns(".store", "__pycache__"))
    build = builder.build_all()
    for artifact in build.artifacts:
        demo.store(artifact.data)
    _localize(demo.fleet, demo.artifacts)
    for node in NODES:
        path = demo.fleet / "nodes" / f"{node}.yaml"
        doc = yaml.safe_load(path.read_text())
        doc["spec"]["identity"] = keys[node].public.openssh()
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    signed = build_root(
        fleet="retail-eu",
        version=1,
        expires=format_timestamp(now().replace(year=now().year + 1)),
        root_keys=[keys["root1"].public, keys["root2"].public],
        root_threshold=2,
        release_keys=[keys["release1"].public, keys["release2"].public],
        release_threshold=2,
    )
    import json

    from reconciler.trust_root import parse_root

    root = (
        json.dumps(sign_envelope(signed, [keys["root1"], keys["root2"]]), indent=2) + "\n"
    ).encode()
    (demo.fleet / "trust" / "roots").mkdir(parents=True, exist_ok=True)
    (demo.fleet / "trust" / "root.json").write_bytes(root)
    (demo.fleet / "trust" / "roots" / "1.json").write_bytes(root)
    write_signers(demo.fleet, parse_root(root))
    demo.step(
        f"fleet repository {demo.fleet.name}/: the example fleet retail-eu, {len(build.artifacts)}"
        " artifacts built into artifacts/sha256/, hooks and checks made runnable here, trust"
        " root v1 (2 of 2 root keys, 2 of 2 release keys)"
    )
    git.Repo.init(demo.fleet, initial_branch="main")
    demo.commit("retail-eu fleet, runnable on this machine")
    subprocess.run(
        ["git", "init", "-q", "--bare", str(demo.origin)], check=True, capture_output=True
    )
    demo.git("remote", "add", "origin", str(demo.origin))
    release_keys = [demo.keys_dir / "release1", demo.keys_dir / "release2"]

    demo.step("release 1: the fleet as it is")
    demo.release(release_keys)
    runners = _agents(demo)
    demo.step(f"agents on {', '.join(f'{n} ({d})' for n, d in NODES.items())}: first cycle")
    first = _report(runners)

    demo.step(
        f"release 2: {MODEL}@1.5.0 for every node (the canary ring's release candidate"
        " retired), a bad export whose scores drift from the golden data, offered as a binary"
        " patch from 1.3.0; rolled out to the canary wave first"
    )
    running = builder.build_model("1.3.0")
    demo.add_model(
        "1.5.0",
        _variant_model(builder, "1.5.0", broken=True),
        "Re-export (bad: scaled layer).",
        running,
    )
    canary_group = demo.fleet / "groups" / "canary.yaml"
    group = yaml.safe_load(canary_group.read_text())
    group["spec"]["components"].pop(MODEL, None)
    canary_group.write_text(yaml.safe_dump(group, sort_keys=False))
    demo.commit(f"{MODEL} 1.5.0 for every node")
    demo.release(release_keys, wave="canary")
    second = _report(runners)
    fetched = {n: o.journal.transfer.get("bytes", 0) for n, o in second.items() if o.staged}
    demo.step(
        "outside the canary wave, nothing was downloaded: "
        + ", ".join(f"{n} {fetched.get(n, 0):,} bytes" for n in NODES if n != CANARY)
    )

    demo.step("edgefleet rollout status: the canary wave, from the nodes' signed status")
    for line in demo.rollout("status", release_keys).splitlines():
        _say(f"    {line}")
    demo.step("edgefleet rollout advance --auto (a scheduled CI job): the gate halts the rollout")
    for line in demo.rollout("advance", release_keys, auto=True).splitlines():
        _say(f"    {line}")
    third = _report(runners)

    demo.step(
        f"release 4: {MODEL}@1.5.1, the same model exported correctly, offered as a patch from"
        " 1.3.0, to every node"
    )
    demo.add_model(
        "1.5.1", _variant_model(builder, "1.5.1", broken=False), "Re-export, fixed.", running
    )
    demo.commit(f"{MODEL} 1.5.1: fix the export")
    demo.release(release_keys)
    fourth = _report(runners)

    rolled_back = [n for n, o in second.items() if o.exit_code == 1]
    converged = all(o.exit_code == 0 and o.journal.release == 4 for o in fourth.values())
    halted = all(o.exit_code == 0 and o.journal.release == 3 for o in third.values())
    ok = (
        all(o.exit_code == 0 for o in first.values())
        and rolled_back == [CANARY]
        and not any(fetched.get(n) for n in NODES if n != CANARY)
        and halted
        and converged
    )
    demo.step(
        f"{'every node converged on release 4' if converged else 'NOT converged'};"
        f" rolled back on release 2: {', '.join(rolled_back) or 'none'}"
    )
    healthy, verified = _status_and_audit(demo)
    ok = ok and healthy and verified
    _say()
    _say("Look around:")
    agent = Path(sys.executable).with_name("edgefleet-agent")
    _say(
        f"  {agent if agent.exists() else 'edgefleet-agent'} status --config"
        f" {base}/nodes/store-0101/agent.yaml"
    )
    _say(f"  git -C {demo.fleet} log --oneline --decorate")
    _say(f"  git -C {demo.fleet} log --first-parent audit   (one commit per fold)")
    _say(
        f"  git -C {demo.fleet} -c gpg.ssh.allowedSignersFile=trust/allowed_signers"
        " log --show-signature origin/status/store-0101"
    )
    _say(f"  edgefleet status --repo {demo.fleet} --format html --out status.html")
    _say(f"  cat {base}/nodes/store-0101/agent.log | head   (JSON lines, one per step)")
    _say(f"  cat {base}/nodes/store-0101/state/metrics.prom")
    return 0 if ok else 1


def _status_and_audit(demo: Demo) -> tuple[bool, bool]:
    """What an operator and an auditor see afterwards, read from the signed status branches
    the agents pushed: the fleet table, and the timeline with every signature checked."""
    from reconciler.audit_trail import render_text
    from reconciler.commands.audit import collect
    from reconciler.commands.status import fleet_report
    from reconciler.fleet_status import render_table
    from reconciler.status_fold import fold
    from reconciler.status_source import fleet_identity, open_status_repo

    repo = open_status_repo(str(demo.fleet))
    fleet, _, _ = fleet_identity(repo)
    commit, nodes = fold(repo, fleet, None, now())
    repo.git("push", "--quiet", "origin", "refs/heads/audit:refs/heads/audit")
    demo.step(
        f"edgefleet status: each node's signed status branch (status/<node>), folded into the"
        f" branch audit at {(commit or '')[:12]}; the demo runs {len(nodes)} of the fleet's nodes,"
        " the others have never reported"
    )
    report = fleet_report(repo, str(demo.fleet))
    rows = report.statuses()
    for line in render_table(rows, report.head["summary"]).splitlines():
        _say(f"    {line}")
    demo.step("edgefleet audit: changes, releases and what each node did, signatures checked")
    events = collect(open_status_repo(str(demo.fleet), fetch=False), None)
    for line in render_text(events).splitlines():
        _say(f"    {line}")
    healthy = all(r.healthy for r in rows if r.node in NODES)
    return healthy, not any(e.problem for e in events)


@contextlib.contextmanager
def _workdir(path: str | None) -> Iterator[Path]:
    if path is None:
        yield Path(tempfile.mkdtemp(prefix="edgefleet-demo-"))
        return
    base = Path(path).resolve()
    if base.exists() and any(base.iterdir()):
        raise UsageError(f"--dir {path}: got a folder that is not empty, expected a new one")
    base.mkdir(parents=True, exist_ok=True)
    yield base


def cmd_demo(args: argparse.Namespace) -> int:
    with _workdir(args.dir) as base:
        return run_demo(base)


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="the whole story on this machine: release, apply, a failing model, rollback",
    )
    demo.add_argument("--dir", help="where to put everything (default: a new temporary folder)")
    demo.set_defaults(func=cmd_demo)
