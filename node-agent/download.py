"""Artifact downloads: content-addressed, resumable, cut off at the catalog's size, verified.

The catalog (inside a signed release) names every artifact by SHA-256 and size; nothing a
source sends is believed beyond that. A file gets its final name `<cache>/<sha256>` only
after its digest matched, so the presence of that name is the proof of a complete download.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING

from node_agent.errors import ArtifactUnavailable

from reconciler.atomic import write_atomic

if TYPE_CHECKING:
    from _hashlib import HASH

    import httpx

LogFn = Callable[..., None]

_DIGEST = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
# Enough for a CDN's usual hop or two; a loop or a chain longer than this is a broken source.
_MAX_REDIRECTS = 5
_USER_AGENT = "edgefleet-agent"
# Not a source that can recover: a bad blob in a bundle stays bad, so it is never backed off.
_BUNDLE_KEY = "bundle:"


@dataclass(frozen=True)
class DownloadLimits:
    connect_timeout_s: float = 10.0
    # No byte for this long: give up on this attempt.
    read_timeout_s: float = 30.0
    # A link slower than this over a whole window is cut, so that a trickle cannot hold the
    # agent's cycle hostage while the read timeout never fires.
    min_bytes_per_second: float = 1024.0
    watchdog_window_s: float = 30.0
    # A failing source is skipped for base * 2^(n-1), jittered, so a fleet does not hammer it.
    backoff_base_s: float = 30.0
    backoff_max_s: float = 3600.0
    chunk_bytes: int = 64 * 1024


DEFAULT_DOWNLOAD_LIMITS = DownloadLimits()


@dataclass(frozen=True)
class Fetched:
    path: Path  # <cache>/<sha256>, complete and verified
    sha256: str
    bytes_transferred: int  # bytes read from the network or a file by this call
    source: str | None  # the URL that delivered it; None if it was already cached
    resumed_from: int  # offset the delivering download resumed at (0 if none)


class _SourceFailed(Exception):
    """This source cannot deliver the artifact now; the reason is one line for a person."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Restart(Exception):
    """The part on disk does not fit what the source has: start again from byte 0."""


def _short(digest: str) -> str:
    return digest[:12] + "..."


def _check_digest(sha256: str) -> str:
    digest = sha256.lower()
    if not _DIGEST.fullmatch(digest):
        # It becomes a file name in the cache: anything else could name a path elsewhere.
        raise ValueError(f"got sha256 {sha256!r}, expected 64 hexadecimal digits")
    return digest


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Part:
    """`<sha256>.part` and the running hash of exactly the bytes it holds.

    The file exists only while it holds bytes: discarded bytes leave no file behind."""

    def __init__(self, path: Path, chunk_bytes: int) -> None:
        self.path = path
        self.hasher = hashlib.sha256()
        self.length = 0
        self._file: IO[bytes] | None = None
        with contextlib.suppress(FileNotFoundError):
            self._file = open(path, "r+b")  # noqa: SIM115 - open until finish() or close()
            # A part left by an earlier run is hashed again: its bytes count towards the digest.
            while block := self._file.read(chunk_bytes):
                self.hasher.update(block)
                self.length += len(block)

    def _opened(self) -> IO[bytes]:
        if self._file is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            self._file = os.fdopen(fd, "r+b")
        return self._file

    def write(self, data: bytes) -> None:
        self._opened().write(data)
        self.hasher.update(data)
        self.length += len(data)

    def mark(self) -> tuple[int, HASH]:
        if self._file is not None:
            self._file.flush()
        return self.length, self.hasher.copy()

    def rollback(self, mark: tuple[int, HASH]) -> None:
        length, hasher = mark
        self.length = length
        self.hasher = hasher.copy()
        if length == 0:
            self.close()
            return
        file = self._opened()
        file.flush()
        file.truncate(length)
        file.seek(length)

    def reset(self) -> None:
        self.rollback((0, hashlib.sha256()))

    def hexdigest(self) -> str:
        return self.hasher.hexdigest()

    def finish(self, final: Path) -> None:
        file = self._opened()
        file.flush()
        os.fsync(file.fileno())
        file.close()
        self._file = None
        self.path.replace(final)
        _fsync_folder(final.parent)

    def close(self) -> None:
        """Keep the bytes for a later resume; an empty part is only clutter."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.length == 0:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


class _Attempt:
    """Bytes counted over one fetch, across sources and restarts."""

    def __init__(self) -> None:
        self.bytes = 0
        self.resumed_from = 0


class Fetcher:
    """Fetches artifacts into a content-addressed cache from sources tried in order."""

    def __init__(
        self,
        cache_dir: Path,
        sources: Sequence[str],
        *,
        limits: DownloadLimits = DEFAULT_DOWNLOAD_LIMITS,
        backoff_file: Path | None = None,
        log: LogFn | None = None,
        clock: Callable[[], float] = time.time,
        local_blobs: Path | None = None,
    ) -> None:
        self.cache_dir = cache_dir
        self.sources = tuple(sources)
        # An unpacked offline bundle's blobs/<sha256>: tried before any source, whatever the
        # catalog's URL, and read through the same size cut-off and digest check.
        self.local_blobs = local_blobs
        self.limits = limits
        self.backoff_file = backoff_file
        self._log = log
        self._clock = clock
        self._backoff: dict[str, dict[str, float]] = {}
        self._backoff_changed = False
        self._random = random.Random()

    # -- the cache -------------------------------------------------------------------------

    def cached(self, sha256: str) -> Path | None:
        """The complete file in the cache, or None.

        Only a verified file is ever given its final name, so its existence is enough here;
        `fetch` re-hashes it before handing it out."""
        path = self.cache_dir / _check_digest(sha256)
        return path if path.is_file() else None

    def _verified(self, path: Path, sha256: str, size: int) -> bool:
        try:
            if path.stat().st_size != size:
                return False
            hasher = hashlib.sha256()
            with open(path, "rb") as source:
                while block := source.read(self.limits.chunk_bytes):
                    hasher.update(block)
        except OSError:
            return False
        return hasher.hexdigest() == sha256

    # -- fetching --------------------------------------------------------------------------

    def fetch(self, url: str, sha256: str, size: int) -> Fetched:
        """The artifact's verified file, from the cache or the first source that delivers it.

        Raises ArtifactUnavailable, naming every source and why it failed, when none did."""
        sha256 = _check_digest(sha256)
        if size < 0:
            raise ValueError(f"got size {size}, expected a size of 0 or more bytes")
        final = self.cache_dir / sha256
        if final.exists():
            if self._verified(final, sha256, size):
                return Fetched(final, sha256, 0, None, 0)
            # Bit rot or a hand-edited cache: the name no longer proves anything.
            self._emit("download.cache_corrupt", sha256=sha256, path=str(final))
            final.unlink()

        self.cache_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self._emit("download.start", sha256=sha256, size=size, url=url)
        part = _Part(self.cache_dir / f"{sha256}.part", self.limits.chunk_bytes)
        try:
            if part.length > size:
                part.reset()
            elif part.length == size:
                # A previous run got every byte but stopped before the rename.
                if part.hexdigest() == sha256:
                    part.finish(final)
                    return Fetched(final, sha256, 0, None, 0)
                part.reset()
            return self._from_sources(url, sha256, size, part, final, started)
        finally:
            part.close()

    def _candidates(self, url: str, sha256: str) -> list[tuple[str, str]]:
        """(backoff key, URL to get) in the order to try them."""
        first: list[tuple[str, str]] = []
        if self.local_blobs is not None and (self.local_blobs / sha256).is_file():
            first = [(_BUNDLE_KEY, (self.local_blobs / sha256).as_uri())]
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme:
            # An absolute URL names its own host; its backoff is kept per scheme and host.
            return [*first, (f"{parsed.scheme}://{parsed.netloc}/", url)]
        return [
            *first,
            *((source, source.rstrip("/") + "/" + url.lstrip("/")) for source in self.sources),
        ]

    def _from_sources(
        self, url: str, sha256: str, size: int, part: _Part, final: Path, started: float
    ) -> Fetched:
        candidates = self._candidates(url, sha256)
        self._load_backoff()
        now = self._clock()
        waiting: dict[str, float] = {}
        for key, _ in candidates:
            until = self._waiting(key, now)
            if until is not None:
                waiting[key] = until
        # A node whose every source is backing off tries them anyway rather than stall forever.
        if len(waiting) == len(candidates):
            waiting = {}
        reasons: dict[str, str] = {}
        attempt = _Attempt()
        client: list[httpx.Client] = []
        try:
            for key, target in candidates:
                if key in waiting:
                    failures = int(self._backoff[key]["failures"])
                    reasons[target] = (
                        f"backing off until {_iso(waiting[key])} after {failures} failure(s)"
                    )
                    self._emit("download.source_skipped", source=target, reason=reasons[target])
                    continue
                try:
                    self._from_source(target, sha256, size, part, attempt, client)
                except _SourceFailed as exc:
                    reasons[target] = exc.reason
                    self._failed(key)
                    self._emit("download.source_failed", source=target, reason=exc.reason)
                    continue
                except OSError as exc:
                    # The cache itself (a full disk, a read-only mount): no source can help.
                    raise ArtifactUnavailable(
                        f"artifact sha256:{sha256} cannot be written to {part.path}: "
                        f"{exc.strerror or exc}; the node keeps running what it runs",
                        reasons,
                    ) from None
                self._succeeded(key)
                part.finish(final)
                seconds = round(time.monotonic() - started, 3)
                self._emit(
                    "download.done",
                    sha256=sha256,
                    bytes=attempt.bytes,
                    source=target,
                    seconds=seconds,
                )
                return Fetched(final, sha256, attempt.bytes, target, attempt.resumed_from)
        finally:
            for each in client:
                each.close()
            self._save_backoff()
        if not candidates:
            reasons_text = "no artifact source is configured"
        else:
            reasons_text = "; ".join(f"{target}: {reason}" for target, reason in reasons.items())
        raise ArtifactUnavailable(
            f"artifact sha256:{sha256} ({size} bytes) is unavailable: {reasons_text}; "
            "the node keeps running what it runs and tries again later",
            reasons,
        )

    def _from_source(
        self,
        target: str,
        sha256: str,
        size: int,
        part: _Part,
        attempt: _Attempt,
        client: list[httpx.Client],
    ) -> None:
        """Fill the part from one source and check its digest, or raise _SourceFailed."""
        scheme = urllib.parse.urlsplit(target).scheme.lower()
        if scheme not in ("http", "https", "file"):
            raise _SourceFailed(f"got scheme {scheme or 'none'!r}, expected http, https or file")
        restarted = False
        while True:
            try:
                if scheme == "file":
                    self._read_file(target, size, part, attempt)
                else:
                    if not client:
                        client.append(self._client())
                    self._read_http(client[0], target, size, part, attempt)
            except _Restart as exc:
                if restarted:
                    raise _SourceFailed(f"{exc} again after starting from byte 0") from None
                restarted = True
                part.reset()
                continue
            got = part.hexdigest()
            if got == sha256:
                return
            part.reset()
            if attempt.resumed_from and not restarted:
                # The earlier bytes may be what was wrong (another source, a power cut):
                # this source is blamed only for a digest of bytes it sent all by itself.
                restarted = True
                continue
            raise _SourceFailed(f"got sha256 {_short(got)}, expected {_short(sha256)}")

    # -- transports ------------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        # Imported here: an idle agent never loads the HTTP stack.
        import httpx

        limits = self.limits
        return httpx.Client(
            timeout=httpx.Timeout(limits.read_timeout_s, connect=limits.connect_timeout_s),
            follow_redirects=True,
            max_redirects=_MAX_REDIRECTS,
            headers={"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"},
        )

    def _read_http(
        self, client: httpx.Client, url: str, size: int, part: _Part, attempt: _Attempt
    ) -> None:
        import httpx

        offset = part.length
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            with client.stream("GET", url, headers=headers) as response:
                status = response.status_code
                if status == 416 and offset:
                    raise _Restart(f"got HTTP 416 for bytes {offset}- of {size}")
                if status == 206:
                    self._check_content_range(response.headers.get("content-range"), offset, size)
                elif status != 200:
                    raise _SourceFailed(f"got HTTP {status}")
                declared = response.headers.get("content-length")
                expected = size - (offset if status == 206 else 0)
                if declared is not None and declared.isdigit():
                    if int(declared) > expected:
                        raise _SourceFailed(
                            f"endless data: got Content-Length {declared}, "
                            f"more than the {expected} bytes expected"
                        )
                    if int(declared) < expected:
                        raise _SourceFailed(
                            f"got Content-Length {declared}, expected {expected} bytes"
                        )
                if status == 200 and offset:
                    # The server ignored the range and sends the whole file.
                    part.reset()
                self._receive(url, response.iter_raw(), size, part, attempt)
        except httpx.InvalidURL as exc:
            raise _SourceFailed(f"got an invalid URL: {exc}") from None
        except httpx.TooManyRedirects:
            raise _SourceFailed(f"got more than {_MAX_REDIRECTS} redirects") from None
        except httpx.ConnectTimeout:
            raise _SourceFailed(
                f"got no connection within {self.limits.connect_timeout_s:g} s"
            ) from None
        except httpx.ReadTimeout:
            if part.length == size:
                return  # every byte is here; the digest decides
            raise _SourceFailed(
                f"got no byte for {self.limits.read_timeout_s:g} s after "
                f"{part.length} of {size} bytes (read timeout)"
            ) from None
        except httpx.ConnectError as exc:
            text = str(exc)
            reason = (
                "connection refused" if "refused" in text.lower() else f"cannot connect: {text}"
            )
            raise _SourceFailed(reason) from None
        except httpx.HTTPError as exc:
            if part.length == size:
                return
            raise _SourceFailed(
                f"connection broken after {part.length} of {size} bytes: {exc}"
            ) from None

    @staticmethod
    def _check_content_range(header: str | None, offset: int, size: int) -> None:
        match = _CONTENT_RANGE.fullmatch((header or "").strip())
        if match is None or int(match[1]) != offset or (match[3] != "*" and int(match[3]) != size):
            raise _SourceFailed(
                f"got HTTP 206 with Content-Range {header!r}, expected bytes {offset}-.../{size}"
            )

    def _read_file(self, url: str, size: int, part: _Part, attempt: _Attempt) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.netloc not in ("", "localhost"):
            raise _SourceFailed(f"got file URL host {parsed.netloc!r}, expected none")
        path = Path(urllib.request.url2pathname(parsed.path))
        with contextlib.ExitStack() as stack:
            try:
                source = stack.enter_context(open(path, "rb"))
            except FileNotFoundError:
                raise _SourceFailed(f"got no file {path} (like HTTP 404)") from None
            except OSError as exc:
                raise _SourceFailed(f"cannot read {path}: {exc.strerror or exc}") from None
            try:
                if part.length:
                    source.seek(part.length)
            except OSError:
                part.reset()  # a pipe or a device: read it from its start
            chunk = self.limits.chunk_bytes

            def blocks() -> Iterator[bytes]:
                try:
                    while block := source.read(chunk):
                        yield block
                except OSError as exc:
                    raise _SourceFailed(f"cannot read {path}: {exc.strerror or exc}") from None

            self._receive(url, blocks(), size, part, attempt)

    def _receive(
        self, source: str, chunks: Iterator[bytes], size: int, part: _Part, attempt: _Attempt
    ) -> None:
        """Write what arrives into the part: never past `size`, never slower than the watchdog."""
        limits = self.limits
        mark = part.mark()
        attempt.resumed_from = part.length
        if part.length:
            self._emit("download.resumed", source=source, offset=part.length)
        floor = limits.min_bytes_per_second
        window_start = time.monotonic()
        window_bytes = 0
        for data in chunks:
            if not data:
                continue
            attempt.bytes += len(data)
            if part.length + len(data) > size:
                # Nothing this source sent is kept: its bytes are suspect as a whole.
                part.rollback(mark)
                raise _SourceFailed(f"endless data: got more than {size} bytes")
            part.write(data)
            window_bytes += len(data)
            elapsed = time.monotonic() - window_start
            if elapsed >= limits.watchdog_window_s:
                if window_bytes < floor * elapsed:
                    part.mark()  # flushed: the next attempt resumes from here
                    raise _SourceFailed(
                        f"too slow: got {window_bytes} bytes in {elapsed:.1f} s, expected at "
                        f"least {floor:g} bytes/s (after {part.length} of {size} bytes)"
                    )
                window_start, window_bytes = time.monotonic(), 0
        part.mark()
        if part.length < size:
            raise _SourceFailed(f"ended short: got {part.length} of {size} bytes")

    # -- backoff ---------------------------------------------------------------------------

    def _load_backoff(self) -> None:
        if self.backoff_file is None:
            return
        try:
            loaded = json.loads(self.backoff_file.read_bytes())
        except (OSError, ValueError):
            # Missing or damaged: forgetting backoff costs a few retries, never correctness.
            loaded = {}
        state: dict[str, dict[str, float]] = {}
        if isinstance(loaded, dict):
            for key, entry in loaded.items():
                if isinstance(entry, dict):
                    with contextlib.suppress(KeyError, TypeError, ValueError):
                        state[str(key)] = {
                            "failures": int(entry["failures"]),
                            "next_try_at": float(entry["next_try_at"]),
                        }
        self._backoff = state

    def _save_backoff(self) -> None:
        if self.backoff_file is None or not self._backoff_changed:
            return
        data = json.dumps(self._backoff, indent=2, sort_keys=True) + "\n"
        # Best effort, like the loading: a full disk must not turn a download into a failure.
        with contextlib.suppress(OSError):
            write_atomic(self.backoff_file, data.encode())
            self._backoff_changed = False

    def _waiting(self, key: str, now: float) -> float | None:
        """When a backing-off source may be tried again, or None if it may be tried now."""
        entry = self._backoff.get(key)
        if entry is None or entry["next_try_at"] <= now:
            return None
        # Further ahead than any delay we set: the clock was set back since; try it now.
        if entry["next_try_at"] - now > self.limits.backoff_max_s:
            return None
        return entry["next_try_at"]

    def _failed(self, key: str) -> None:
        if key == _BUNDLE_KEY:
            return
        limits = self.limits
        failures = int(self._backoff.get(key, {}).get("failures", 0)) + 1
        # Capped: the delay reaches backoff_max long before, and 2**n would overflow a float.
        delay = min(limits.backoff_max_s, limits.backoff_base_s * 2 ** min(failures - 1, 32))
        delay *= self._random.uniform(0.5, 1.0)
        self._backoff[key] = {"failures": failures, "next_try_at": self._clock() + delay}
        self._backoff_changed = True

    def _succeeded(self, key: str) -> None:
        if self._backoff.pop(key, None) is not None:
            self._backoff_changed = True

    def _emit(self, event: str, **fields: object) -> None:
        if self._log is not None:
            self._log(event, **fields)
