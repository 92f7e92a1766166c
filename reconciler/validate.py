"""Validation of a whole fleet repository: every schema problem and every problem of meaning."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import UsageError, ValidationFailed
from reconciler.fleet_repo import FleetRepo, load_fleet_repo
from reconciler.limits import DEFAULT_LIMITS, Limits
from reconciler.problems import Problem, errors
from reconciler.repo_files import DirectoryFiles, RepoFiles
from reconciler.semantic_checks import (
    ALL_CHECKS,
    artifact_references,
    fleet_names,
    group_conflicts,
    health_check_files,
    node_file_names,
    rendered_components,
    run_checks,
)

NODE_ID = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")

# What rendering one node depends on, when only that node's file is read.
NODE_CHECKS = (
    fleet_names,
    artifact_references,
    health_check_files,
    node_file_names,
    group_conflicts,
    rendered_components,
)


@dataclass(frozen=True)
class Report:
    repo: FleetRepo
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not errors(self.problems)

    def summary(self) -> str:
        n_errors = len(errors(self.problems))
        n_warnings = len(self.problems) - n_errors
        counts = (
            f"{len(self.repo.groups)} groups, {len(self.repo.nodes)} nodes,"
            f" {len(self.repo.artifacts)} artifacts"
        )
        verdict = "valid" if self.ok else f"invalid: {n_errors} error{'s' * (n_errors != 1)}"
        return f"{verdict}, {n_warnings} warning{'s' * (n_warnings != 1)} ({counts})"


def validate(files: RepoFiles, limits: Limits = DEFAULT_LIMITS) -> Report:
    repo, problems = load_fleet_repo(files, limits)
    problems.extend(run_checks(repo, ALL_CHECKS))
    return Report(repo, sorted(set(problems)))


def open_directory(path: Path) -> DirectoryFiles:
    if not path.is_dir():
        raise UsageError(f"{path}: not a folder, expected a fleet repository checkout")
    return DirectoryFiles(path)


def validate_directory(path: Path, limits: Limits = DEFAULT_LIMITS) -> Report:
    return validate(open_directory(path), limits)


def load_for_node(files: RepoFiles, node_id: str, limits: Limits = DEFAULT_LIMITS) -> FleetRepo:
    """The repository as one node renders it, or `ValidationFailed` with everything wrong.

    Only the node's own file is read among nodes/, so the cost does not grow with the fleet.
    """
    if not NODE_ID.fullmatch(node_id):
        raise UsageError(
            f"node id: got {node_id!r}, expected a DNS label like store-0042 (the name of a file"
            " nodes/<id>.yaml)"
        )
    repo, problems = load_fleet_repo(files, limits, only_node=node_id)
    problems.extend(run_checks(repo, NODE_CHECKS))
    found = errors(problems)
    if found:
        raise ValidationFailed(
            sorted(set(found)),
            f"cannot render {node_id}: the repository has {len(found)} problem"
            f"{'s' * (len(found) != 1)} (run `edgefleet validate`)",
        )
    return repo
