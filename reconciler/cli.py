"""`edgefleet`: the fleet-side command, run by operators and by CI on pull requests."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler import __version__
from reconciler.errors import EdgeFleetError, ValidationFailed

if TYPE_CHECKING:
    from reconciler.problems import Problem

# What only some commands need (json, dataclasses, traceback, the problem renderer) is imported
# where it is used: `edgefleet status` in a loop pays for every module loaded at start-up.

Handler = Callable[[argparse.Namespace], int]
# Each command family's module, by the commands it adds. Only the family a command line names
# is imported: `edgefleet status` in a CI loop should not pay for git, sigstore or onnx.
FAMILIES = {
    "keys": "keys",
    "trust": "trust",
    "release": "release",
    "verify": "release",
    "artifacts": "artifacts",
    "status": "status",
    "audit": "audit",
    "plan": "plan",
    "hook": "hook",
    "demo": "demo",
    "rollout": "rollout",
    "bundle": "bundle",
}


def _shown_under(base: str, problems: Sequence[Problem]) -> list[Problem]:
    """Problems with paths as the user named the repository, so editors and CI can find them."""
    from dataclasses import replace

    return [replace(p, file=os.path.normpath(Path(base) / p.file)) for p in problems]


def cmd_validate(args: argparse.Namespace) -> int:
    from reconciler.problems import render_problems
    from reconciler.validate import validate_directory

    report = validate_directory(Path(args.dir))
    problems = _shown_under(args.dir, report.problems)
    text = render_problems(problems, args.format)
    if text:
        print(text)
    summary = f"{args.dir}: {report.summary()}"
    # In text form the summary is part of the report; in machine forms stdout stays parseable.
    print(summary, file=sys.stdout if args.format == "text" else sys.stderr)
    return 0 if report.ok else 1


def cmd_render(args: argparse.Namespace) -> int:
    import json

    import yaml

    from reconciler.render import render_node
    from reconciler.validate import load_for_node, open_directory

    files = open_directory(Path(args.repo))
    try:
        repo = load_for_node(files, args.node)
    except ValidationFailed as exc:
        raise ValidationFailed(_shown_under(args.repo, exc.problems), str(exc)) from None
    state = render_node(repo, args.node)
    if args.format == "json":
        print(json.dumps(state, indent=2))
    else:
        print(yaml.safe_dump(state, sort_keys=False, default_flow_style=False), end="")
    return 0


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with `argv`, only the command family it names (all when it names none)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks of errors",
    )
    parser = argparse.ArgumentParser(
        prog="edgefleet",
        description="GitOps for edge fleets: validate, render, sign and watch a fleet repository.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"edgefleet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = sub.add_parser(
        "validate",
        parents=[common],
        help="check a fleet repository: schemas and meaning, every problem as file:line",
        description="Exit 0 when valid, 1 when invalid, 2 on bad usage.",
    )
    validate.add_argument("dir", nargs="?", default=".", help="the repository (default: .)")
    validate.add_argument("--format", choices=["text", "json", "github"], default="text")
    validate.set_defaults(func=cmd_validate)

    render = sub.add_parser(
        "render",
        parents=[common],
        help="print one node's desired state after merging fleet, groups and node",
    )
    render.add_argument("node", help="the node id (nodes/<id>.yaml)")
    render.add_argument("--repo", default=".", help="the repository (default: .)")
    render.add_argument("--format", choices=["yaml", "json"], default="yaml")
    render.set_defaults(func=cmd_render)

    named = next((a for a in (argv or ()) if not a.startswith("-")), None)
    if named in ("validate", "render") or (named is None and _version_only(argv)):
        wanted = []
    elif named in FAMILIES:
        wanted = [FAMILIES[named]]
    else:
        # `--help`, a typo: every command, so that help and "invalid choice" list them all.
        wanted = list(dict.fromkeys(FAMILIES.values()))
    for name in wanted:
        importlib.import_module(f"reconciler.commands.{name}").register(sub, common)
    return parser


def _version_only(argv: Sequence[str] | None) -> bool:
    """`--version` without `--help`: no command family is needed to answer it."""
    given = set(argv or ())
    return "--version" in given and not given & {"-h", "--help"}


def run(argv: Sequence[str] | None, parser: argparse.ArgumentParser) -> int:
    """Parse, dispatch, and turn every error into one readable message and an exit code."""
    args = parser.parse_args(argv)
    verbose = getattr(args, "verbose", False)
    handler: Handler = args.func
    try:
        return handler(args)
    except ValidationFailed as exc:
        from reconciler.problems import render_problems

        text = render_problems(exc.problems, "text")
        print(f"{text}\nerror: {exc}" if text else f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except EdgeFleetError as exc:
        if verbose:
            import traceback

            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:
        if verbose:
            raise
        print(
            f"internal error: {type(exc).__name__}: {exc} (run with --verbose for the traceback"
            " and please report it)",
            file=sys.stderr,
        )
        return 70


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    return run(args, build_parser(args))


if __name__ == "__main__":
    sys.exit(main())
