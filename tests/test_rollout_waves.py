"""Wave membership: selectors, percentages that nest, the same place on every poll, a new
draw for a new rollout, and unknown waves reaching no one."""

from __future__ import annotations

import itertools

from reconciler.rollout import bucket, in_wave, wave_of

SPEC = {
    "rollout": {
        "waves": [
            {"name": "canary", "selector": {"matchLabels": {"ring": "canary"}}},
            {"name": "early", "percent": 20},
            {"name": "all", "percent": 100},
        ]
    }
}
KEY = "a" * 40
NODES = [f"store-{i:04d}" for i in range(2000)]


def test_no_wave_reaches_every_node() -> None:
    assert in_wave(SPEC, "f", None, "n1", {}, KEY)


def test_a_selector_wave_reaches_exactly_the_nodes_it_selects() -> None:
    assert in_wave(SPEC, "f", "canary", "n1", {"ring": "canary"}, KEY)
    assert not in_wave(SPEC, "f", "canary", "n1", {"ring": "stable"}, KEY)
    assert wave_of(SPEC, "f", "n1", {"ring": "canary"}, KEY) == "canary"
    # Whatever its hash, a node that no selector picks is never in a selector wave.
    assert not any(in_wave(SPEC, "f", "canary", n, {}, KEY) for n in NODES)


def test_percent_waves_nest_and_the_last_reaches_everyone() -> None:
    early = [n for n in NODES if in_wave(SPEC, "f", "early", n, {}, KEY)]
    assert 0.15 < len(early) / len(NODES) < 0.25
    assert all(bucket("f", n, KEY) < 20 for n in early)
    assert all(in_wave(SPEC, "f", "all", n, {}, KEY) for n in NODES)
    # Waves are cumulative: a canary node is in every later wave too.
    assert in_wave(SPEC, "f", "early", "x", {"ring": "canary"}, KEY)


def test_a_growing_percentage_only_adds_nodes() -> None:
    members = [
        {
            n
            for n in NODES
            if in_wave({"rollout": {"waves": [{"name": "w", "percent": p}]}}, "f", "w", n, {}, KEY)
        }
        for p in (1, 5, 10, 20, 50, 99, 100)
    ]
    for smaller, larger in itertools.pairwise(members):
        assert smaller <= larger
    assert len(members[0]) < len(members[2]) < len(members[-1]) == len(NODES)


def test_a_node_keeps_its_place_between_polls_and_the_releases_of_one_rollout() -> None:
    first = [wave_of(SPEC, "f", n, {}, KEY) for n in NODES]
    assert [wave_of(SPEC, "f", n, {}, KEY) for n in NODES] == first
    assert bucket("f", "n1", KEY) == bucket("f", "n1", KEY)


def test_another_rollout_or_fleet_draws_its_canaries_anew() -> None:
    other = "b" * 40
    early = {n for n in NODES if in_wave(SPEC, "f", "early", n, {}, KEY)}
    again = {n for n in NODES if in_wave(SPEC, "f", "early", n, {}, other)}
    assert early != again and early & again
    assert bucket("f", "n1", KEY) != bucket("g", "n1", KEY)


def test_an_undeclared_wave_reaches_no_one() -> None:
    assert not in_wave(SPEC, "f", "typo", "n1", {"ring": "canary"}, KEY)
