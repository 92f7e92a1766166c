"""Wave membership: selectors, percentages that nest, and unknown waves reaching no one."""

from __future__ import annotations

from reconciler.rollout import bucket, in_wave

SPEC = {
    "rollout": {
        "waves": [
            {"name": "canary", "selector": {"matchLabels": {"ring": "canary"}}},
            {"name": "early", "percent": 20},
            {"name": "all", "percent": 100},
        ]
    }
}


def test_no_wave_reaches_every_node() -> None:
    assert in_wave(SPEC, "f", None, "n1", {})


def test_a_canary_release_reaches_only_canary_nodes() -> None:
    assert in_wave(SPEC, "f", "canary", "n1", {"ring": "canary"})
    assert not in_wave(SPEC, "f", "canary", "n1", {"ring": "stable"})


def test_percent_waves_nest_and_the_last_reaches_everyone() -> None:
    nodes = [f"store-{i:04d}" for i in range(2000)]
    early = [n for n in nodes if in_wave(SPEC, "f", "early", n, {})]
    assert 0.15 < len(early) / len(nodes) < 0.25
    assert all(bucket("f", n) < 20 for n in early)
    assert all(in_wave(SPEC, "f", "all", n, {}) for n in nodes)
    # a canary node is in every later wave too
    assert in_wave(SPEC, "f", "early", "x", {"ring": "canary"})


def test_the_bucket_is_stable_and_depends_on_the_fleet() -> None:
    assert bucket("f", "n1") == bucket("f", "n1")
    assert bucket("f", "n1") != bucket("g", "n1")


def test_an_undeclared_wave_reaches_no_one() -> None:
    assert not in_wave(SPEC, "f", "typo", "n1", {"ring": "canary"})
