"""node_agent.download against a real HTTP server and real files: resume, cut-offs, backoff."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from node_agent.download import DownloadLimits, Fetched, Fetcher
from node_agent.errors import ArtifactUnavailable

from tests.artifact_server import ArtifactServer, unused_port_url

SIZE = 300_000
# Small backoff and timeouts, so that no test waits for long.
FAST = DownloadLimits(connect_timeout_s=2.0, read_timeout_s=2.0, backoff_base_s=30.0)


def blob(seed: int, size: int = SIZE) -> bytes:
    """Bytes that differ from seed to seed, and are not all alike inside."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, object]]] = []

    def __call__(self, event: str, **fields: object) -> None:
        self.seen.append((event, fields))

    def named(self, event: str) -> list[dict[str, object]]:
        return [fields for name, fields in self.seen if name == event]


@pytest.fixture
def server() -> Iterator[ArtifactServer]:
    with ArtifactServer() as running:
        yield running


def publish(server: ArtifactServer, data: bytes, prefix: str = "") -> tuple[str, str]:
    """Store `data` under `<prefix>sha256/<hex>`; return (relative url, digest)."""
    sha = digest(data)
    server.add(f"{prefix}sha256/{sha}", data)
    return f"sha256/{sha}", sha


def cache_names(cache: Path) -> set[str]:
    return {path.name for path in cache.iterdir()} if cache.exists() else set()


def test_full_download_is_verified_and_cached(server: ArtifactServer, tmp_path: Path) -> None:
    data = blob(1)
    url, sha = publish(server, data)
    events = Events()
    fetcher = Fetcher(tmp_path / "cache", [server.url], limits=FAST, log=events)

    got = fetcher.fetch(url, sha, len(data))

    assert got == Fetched(tmp_path / "cache" / sha, sha, len(data), server.url + url, 0)
    assert got.path.read_bytes() == data
    assert cache_names(tmp_path / "cache") == {sha}
    assert fetcher.cached(sha) == got.path
    assert [name for name, _ in events.seen] == ["download.start", "download.done"]
    again = fetcher.fetch(url, sha, len(data))
    assert (again.bytes_transferred, again.source, again.path) == (0, None, got.path)
    assert len(server.requests) == 1


def test_corrupt_cached_file_is_fetched_again(server: ArtifactServer, tmp_path: Path) -> None:
    data = blob(2)
    url, sha = publish(server, data)
    fetcher = Fetcher(tmp_path, [server.url], limits=FAST)
    path = fetcher.fetch(url, sha, len(data)).path
    path.write_bytes(b"rotten" + data[6:])

    again = fetcher.fetch(url, sha, len(data))

    assert again.bytes_transferred == len(data)
    assert path.read_bytes() == data


def test_dropped_download_resumes_with_range_on_next_fetch(
    server: ArtifactServer, tmp_path: Path
) -> None:
    data = blob(3)
    url, sha = publish(server, data)
    server.drop(url, after=100_000)
    events = Events()
    fetcher = Fetcher(tmp_path, [server.url], limits=FAST, log=events)

    with pytest.raises(ArtifactUnavailable, match="100000 of 300000 bytes"):
        fetcher.fetch(url, sha, len(data))
    assert (tmp_path / f"{sha}.part").stat().st_size == 100_000
    assert not (tmp_path / sha).exists()

    # The only source is backing off now, and is tried anyway: a node must not lock itself out.
    got = fetcher.fetch(url, sha, len(data))

    assert [r.range for r in server.requests] == [None, "bytes=100000-"]
    assert got.resumed_from == 100_000
    assert got.bytes_transferred == len(data) - 100_000 < len(data)
    assert got.path.read_bytes() == data
    assert events.named("download.resumed") == [{"source": server.url + url, "offset": 100_000}]
    assert not (tmp_path / f"{sha}.part").exists()


def test_next_source_resumes_where_a_dropped_one_stopped(
    server: ArtifactServer, tmp_path: Path
) -> None:
    data = blob(4)
    url, sha = publish(server, data, "a/")
    publish(server, data, "b/")
    server.drop("a/" + url, after=123_456)
    fetcher = Fetcher(tmp_path, [server.url + "a/", server.url + "b/"], limits=FAST)

    got = fetcher.fetch(url, sha, len(data))

    assert server.requests_for("b/" + url)[0].range == "bytes=123456-"
    assert (got.source, got.resumed_from) == (server.url + "b/" + url, 123_456)
    # Nothing was downloaded twice.
    assert got.bytes_transferred == len(data)
    assert got.path.read_bytes() == data


def test_server_ignoring_range_restarts_from_zero(server: ArtifactServer, tmp_path: Path) -> None:
    data = blob(5)
    url, sha = publish(server, data)
    server.drop(url, after=50_000)
    fetcher = Fetcher(tmp_path, [server.url], limits=FAST)
    with pytest.raises(ArtifactUnavailable):
        fetcher.fetch(url, sha, len(data))
    server.ignore_range.add(url)

    got = fetcher.fetch(url, sha, len(data))

    assert server.requests[-1].range == "bytes=50000-"
    assert (got.resumed_from, got.bytes_transferred) == (0, len(data))
    assert got.path.read_bytes() == data


def test_416_restarts_a_part_longer_than_the_source_has(
    server: ArtifactServer, tmp_path: Path
) -> None:
    data = blob(6)
    url, sha = publish(server, data)
    (tmp_path / f"{sha}.part").write_bytes(b"x" * 1000)
    server.add(url, data[:500])  # a mirror with a truncated copy: 416 for bytes=1000-
    publish(server, data, "good/")
    fetcher = Fetcher(tmp_path, [server.url, server.url + "good/"], limits=FAST)

    got = fetcher.fetch(url, sha, len(data))

    assert [r.range for r in server.requests_for(url)] == ["bytes=1000-", None]
    assert got.source == server.url + "good/" + url
    assert got.path.read_bytes() == data


def test_404_at_first_source_then_second(server: ArtifactServer, tmp_path: Path) -> None:
    data = blob(7)
    url, sha = publish(server, data, "second/")
    events = Events()
    fetcher = Fetcher(
        tmp_path, [server.url + "first/", server.url + "second/"], limits=FAST, log=events
    )

    got = fetcher.fetch(url, sha, len(data))

    assert got.source == server.url + "second/" + url
    assert events.named("download.source_failed") == [
        {"source": server.url + "first/" + url, "reason": "got HTTP 404"}
    ]


def test_wrong_digest_at_first_source_then_right_one(
    server: ArtifactServer, tmp_path: Path
) -> None:
    data = blob(8)
    url, sha = publish(server, data, "good/")
    server.add("bad/" + url, blob(9))
    events = Events()
    seen_parts: list[bool] = []

    def spy(event: str, **fields: object) -> None:
        events(event, **fields)
        if event == "download.source_failed":
            seen_parts.append((tmp_path / f"{sha}.part").exists())

    fetcher = Fetcher(tmp_path, [server.url + "bad/", server.url + "good/"], limits=FAST, log=spy)

    got = fetcher.fetch(url, sha, len(data))

    (failed,) = events.named("download.source_failed")
    assert failed["reason"] == f"got sha256 {digest(blob(9))[:12]}..., expected {sha[:12]}..."
    # The bad source's bytes were thrown away before the next source was asked.
    assert seen_parts == [False]
    assert server.requests_for("good/" + url)[0].range is None
    assert got.path.read_bytes() == data
    assert cache_names(tmp_path) == {sha}


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "no-length"])
def test_endless_data_is_cut_at_size(
    server: ArtifactServer, tmp_path: Path, declared: bool
) -> None:
    data = blob(10)
    url, sha = publish(server, data, "endless/")
    publish(server, data, "good/")
    server.extra_bytes["endless/" + url] = 5_000_000
    if not declared:
        server.no_length.add("endless/" + url)
    events = Events()
    part_sizes: list[int] = []

    def spy(event: str, **fields: object) -> None:
        events(event, **fields)
        if event == "download.source_failed":
            part = tmp_path / f"{sha}.part"
            part_sizes.append(part.stat().st_size if part.exists() else 0)

    fetcher = Fetcher(
        tmp_path, [server.url + "endless/", server.url + "good/"], limits=FAST, log=spy
    )

    got = fetcher.fetch(url, sha, len(data))

    (failed,) = events.named("download.source_failed")
    if declared:
        # Refused on the header alone, before a byte of the body was read.
        expected = f"endless data: got Content-Length {SIZE + 5_000_000}, more than the {SIZE}"
    else:
        expected = f"endless data: got more than {SIZE} bytes"
    assert str(failed["reason"]).startswith(expected)
    # Nothing the endless source sent was kept.
    assert part_sizes == [0]
    assert got.source == server.url + "good/" + url
    assert got.path.stat().st_size == len(data)
    assert got.path.read_bytes() == data
    # Never more than `size` (plus one network read) came in from the endless source.
    assert got.bytes_transferred < 2 * len(data) + 70_000


def test_endless_data_from_only_source_leaves_no_final_file(
    server: ArtifactServer, tmp_path: Path
) -> None:
    data = blob(11)
    url, sha = publish(server, data)
    server.extra_bytes[url] = 1
    server.no_length.add(url)
    fetcher = Fetcher(tmp_path, [server.url], limits=FAST)

    with pytest.raises(ArtifactUnavailable, match=f"endless data: got more than {SIZE} bytes"):
        fetcher.fetch(url, sha, len(data))

    assert sha not in cache_names(tmp_path)
    assert all(path.stat().st_size <= SIZE for path in tmp_path.iterdir())


def test_all_sources_failing_names_each_source_and_reason(
    server: ArtifactServer, tmp_path: Path
) -> None:
    data = blob(12)
    url, sha = publish(server, data, "bad/")
    server.add("bad/" + url, blob(13))
    refused = unused_port_url()
    sources = [server.url + "missing/", server.url + "bad/", refused]

    with pytest.raises(ArtifactUnavailable) as caught:
        Fetcher(tmp_path / "cache", sources, limits=FAST).fetch(url, sha, len(data))

    error = caught.value
    assert error.exit_code == 75
    assert error.reasons == {
        server.url + "missing/" + url: "got HTTP 404",
        server.url + "bad/" + url: f"got sha256 {digest(blob(13))[:12]}..., expected {sha[:12]}...",
        refused + url: "connection refused",
    }
    message = str(error)
    assert sha in message
    assert "keeps running what it runs" in message
    for source, reason in error.reasons.items():
        assert f"{source}: {reason}" in message
    assert sha not in cache_names(tmp_path / "cache")


def test_backoff_skips_a_failed_source_then_retries_it(
    server: ArtifactServer, tmp_path: Path
) -> None:
    first, second, third = blob(14, 1000), blob(15, 1000), blob(16, 1000)
    url1, sha1 = publish(server, first, "b/")
    url2, sha2 = publish(server, second, "a/")
    publish(server, second, "b/")
    url3, sha3 = publish(server, third, "a/")
    clock = Clock()
    state = tmp_path / "backoff.json"
    sources = [server.url + "a/", server.url + "b/"]
    fetcher = Fetcher(tmp_path / "cache", sources, limits=FAST, backoff_file=state, clock=clock)

    assert fetcher.fetch(url1, sha1, 1000).source == server.url + "b/" + url1
    saved = json.loads(state.read_text())
    assert saved[server.url + "a/"]["failures"] == 1
    # Jittered between half and all of backoff_base (30 s).
    assert clock.now + 15 <= saved[server.url + "a/"]["next_try_at"] <= clock.now + 30

    clock.now += 10
    # A new Fetcher reads the same state: backoff survives a restart of the agent.
    events = Events()
    fetcher = Fetcher(
        tmp_path / "cache", sources, limits=FAST, backoff_file=state, clock=clock, log=events
    )
    assert fetcher.fetch(url2, sha2, 1000).source == server.url + "b/" + url2
    assert server.requests_for("a/" + url2) == []
    (skipped,) = events.named("download.source_skipped")
    assert str(skipped["reason"]).startswith("backing off until ")

    clock.now += 21
    got = fetcher.fetch(url3, sha3, 1000)
    assert got.source == server.url + "a/" + url3
    assert json.loads(state.read_text()) == {}


def test_backoff_grows_and_every_source_backing_off_is_tried_anyway(
    server: ArtifactServer, tmp_path: Path
) -> None:
    data = blob(17, 1000)
    url, sha = publish(server, data, "later/")
    clock = Clock()
    fetcher = Fetcher(tmp_path, [server.url + "empty/"], limits=FAST, clock=clock)

    for attempt in range(1, 4):
        with pytest.raises(ArtifactUnavailable, match="got HTTP 404"):
            fetcher.fetch(url, sha, 1000)
        assert len(server.requests) == attempt
    delay = fetcher._backoff[server.url + "empty/"]["next_try_at"] - clock.now
    assert 60 <= delay <= 120  # the third failure: base * 2**2, jittered

    server.add("empty/" + url, data)
    assert fetcher.fetch(url, sha, 1000).path.read_bytes() == data
    assert fetcher._backoff == {}


def test_watchdog_cuts_a_too_slow_source_and_keeps_the_part(
    server: ArtifactServer, tmp_path: Path
) -> None:
    data = blob(18)
    url, sha = publish(server, data)
    server.slow[url] = 5_000
    limits = DownloadLimits(read_timeout_s=2.0, min_bytes_per_second=50_000, watchdog_window_s=0.5)

    with pytest.raises(ArtifactUnavailable, match="too slow: got") as caught:
        Fetcher(tmp_path, [server.url], limits=limits).fetch(url, sha, len(data))

    assert "expected at least 50000 bytes/s" in str(caught.value)
    part = tmp_path / f"{sha}.part"
    assert 0 < part.stat().st_size < len(data)
    assert not (tmp_path / sha).exists()

    kept = part.stat().st_size
    del server.slow[url]
    got = Fetcher(tmp_path, [server.url], limits=limits).fetch(url, sha, len(data))
    assert (got.resumed_from, server.requests[-1].range) == (kept, f"bytes={kept}-")
    assert got.path.read_bytes() == data


def test_read_timeout_on_a_stalled_server(server: ArtifactServer, tmp_path: Path) -> None:
    data = blob(19)
    url, sha = publish(server, data)
    server.stall[url] = 20_000
    limits = DownloadLimits(read_timeout_s=0.3)

    with pytest.raises(ArtifactUnavailable, match="read timeout") as caught:
        Fetcher(tmp_path, [server.url], limits=limits).fetch(url, sha, len(data))

    assert "after 20000 of 300000 bytes" in str(caught.value)
    assert (tmp_path / f"{sha}.part").stat().st_size == 20_000


def test_file_sources(tmp_path: Path) -> None:
    data = blob(20)
    sha = digest(data)
    usb = tmp_path / "usb stick"
    (usb / "sha256").mkdir(parents=True)
    (usb / "sha256" / sha).write_bytes(data)
    empty = tmp_path / "empty"
    empty.mkdir()
    cache = tmp_path / "cache"
    sources = [empty.as_uri() + "/", usb.as_uri() + "/"]
    events = Events()
    fetcher = Fetcher(cache, sources, limits=FAST, log=events)

    # A part left by an interrupted copy is resumed from the file as from a server.
    cache.mkdir()
    (cache / f"{sha}.part").write_bytes(data[:1234])
    got = fetcher.fetch(f"sha256/{sha}", sha, len(data))

    assert got.source == usb.as_uri() + "/sha256/" + sha
    assert (got.resumed_from, got.bytes_transferred) == (1234, len(data) - 1234)
    assert got.path.read_bytes() == data
    (failed,) = events.named("download.source_failed")
    assert str(failed["reason"]).startswith("got no file ")


def test_file_url_absolute_and_size_cutoff(tmp_path: Path) -> None:
    data = blob(21)
    sha = digest(data)
    longer = tmp_path / "longer.bin"
    longer.write_bytes(data + b"more")

    with pytest.raises(ArtifactUnavailable) as caught:
        Fetcher(tmp_path / "cache", [], limits=FAST).fetch(longer.as_uri(), sha, len(data))

    assert caught.value.reasons == {
        longer.as_uri(): f"endless data: got more than {len(data)} bytes"
    }
    assert cache_names(tmp_path / "cache") == set()

    exact = tmp_path / "exact.bin"
    exact.write_bytes(data)
    got = Fetcher(tmp_path / "cache", [], limits=FAST).fetch(exact.as_uri(), sha, len(data))
    assert got.path.read_bytes() == data


def test_complete_part_from_an_interrupted_run_is_finished_without_network(
    tmp_path: Path,
) -> None:
    data = blob(22, 5000)
    sha = digest(data)
    (tmp_path / f"{sha}.part").write_bytes(data)

    got = Fetcher(tmp_path, [unused_port_url()], limits=FAST).fetch(f"sha256/{sha}", sha, 5000)

    assert (got.bytes_transferred, got.source) == (0, None)
    assert cache_names(tmp_path) == {sha}


def test_bad_digest_argument_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected 64 hexadecimal digits"):
        Fetcher(tmp_path, []).fetch("sha256/x", "../../etc/passwd", 1)
    assert list(tmp_path.iterdir()) == []
