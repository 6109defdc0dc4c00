"""Untrusted bytes over HTTP, within limits: the one bounded GET (``http_body``) behind every download
of an SRPM or a package and every read of repo metadata.

- bytes capped (the declared Content-Length first, then what arrives);
- a deadline for the whole request besides the per-read timeout: a watchdog shuts the socket down
  when it passes, so a server dripping bytes into the headers or the body cannot hold Kiln;
- redirects followed here, at most ``limits.MAX_REDIRECTS``, their bodies never read, a login sent
  only to the origin it was given for;
- every refusal a ``RemoteDataError`` (exit 4) naming the URL asked for and what was wrong; an HTTP
  error status is on it as ``http_status`` (callers tell "not there" from "broken" by it, never by
  the message).

The caller gives the URL without userinfo and the login apart (``auth``), so that no message, log or
error holds a password. What the bytes mean is the caller's business (builder/rpm/).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import urljoin, urlsplit

from ..errors import InvalidInput, Problem, RemoteDataError
from ..limits import MAX_REDIRECTS

READ_BYTES = 256 << 10  # bytes asked of the socket at once
_DEFAULT_PORTS = {"http": 80, "https": 443}
Auth = tuple[str, str]  # (user, password), sent as HTTP basic auth


@dataclass(frozen=True)
class Deadline:
    seconds: float
    at: float  # time.monotonic()
    changed_by: str = ""  # how a user gives another deadline, named when it passes

    @classmethod
    def start(cls, seconds: float, changed_by: str = "") -> Deadline:
        return cls(seconds, time.monotonic() + seconds, changed_by)

    def left(self) -> float:
        return self.at - time.monotonic()

    def check(self) -> None:
        if self.left() <= 0:
            raise self.error()

    def error(self) -> RemoteDataError:
        how = f"; {self.changed_by}" if self.changed_by else ""
        return RemoteDataError(
            f"not read within {self.seconds:g} s (the deadline for the whole download{how})"
        )


class _Watchdog:
    """Shuts the sockets of one fetch down when its deadline passes, so that a read blocked on a server
    that drips bytes (into the headers or the body) fails then, not when the drip ends: the per-read
    timeout never fires on a drip, and the loop's own check runs only between reads."""

    def __init__(self, deadline: Deadline):
        self.fired = False
        self._lock = threading.Lock()
        self._sockets: list[Any] = []
        self._timer = threading.Timer(max(0.0, deadline.left()), self._fire)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._timer.cancel()

    def watch(self, sock: Any) -> None:
        with self._lock:
            self._sockets.append(sock)
            fired = self.fired
        if fired:
            _shutdown(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)


def _shutdown(sock: Any) -> None:
    with contextlib.suppress(OSError):  # closed already
        sock.shutdown(socket.SHUT_RDWR)


_WATCHDOG: ContextVar[_Watchdog | None] = ContextVar("kiln_fetch_watchdog", default=None)

# requests and urllib3 are imported when a fetch starts, not at Kiln's start (start-up time: ~70 ms,
# and every command imports this module through the rpm kind's registry entry).


def _adapter() -> Any:
    """requests' adapter whose connections register their socket with the fetch's watchdog once
    connected (a TLS handshake in progress is bounded by the connect timeout alone)."""
    import requests.adapters  # start-up time: see above
    import urllib3.connection  # on first use, not at start-up: a heavy import
    import urllib3.connectionpool  # on first use, not at start-up: a heavy import

    def watched(base: type) -> type:
        class Watched(base):  # type: ignore[valid-type,misc]
            def connect(self) -> None:
                super().connect()
                watchdog = _WATCHDOG.get()
                if watchdog is not None and self.sock is not None:
                    watchdog.watch(self.sock)

        return Watched

    class Pool(urllib3.connectionpool.HTTPConnectionPool):
        ConnectionCls = watched(urllib3.connection.HTTPConnection)

    class TlsPool(urllib3.connectionpool.HTTPSConnectionPool):
        ConnectionCls = watched(urllib3.connection.HTTPSConnection)

    class Adapter(requests.adapters.HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": Pool, "https": TlsPool}

        def proxy_manager_for(self, *args: Any, **kwargs: Any) -> Any:
            manager = super().proxy_manager_for(*args, **kwargs)
            manager.pool_classes_by_scheme = {"http": Pool, "https": TlsPool}
            return manager

    return Adapter()


def _origin(url: str) -> tuple[str, str, int | None] | None:
    try:
        parts = urlsplit(url)
        return (
            parts.scheme.lower(),
            (parts.hostname or "").lower(),
            parts.port or _DEFAULT_PORTS.get(parts.scheme.lower()),
        )
    except ValueError:  # a port that is not a number
        return None


def _has_userinfo(url: str) -> bool:
    try:
        return "@" in urlsplit(url).netloc
    except ValueError:  # not a URL: requests refuses it below, naming it
        return False


def login_goes_to(asked: str, where: str) -> bool:
    """Whether the login given for ``asked`` may be sent to ``where`` (a redirect's target): the same
    host and port with the same scheme, or http upgraded to https on the default ports (as requests
    keeps it); never another host."""
    given, target = _origin(asked), _origin(where)
    if given is None or target is None or given[1] != target[1]:
        return False
    return given == target or (given[0], given[2], target[0], target[2]) == ("http", 80, "https", 443)


@contextmanager
def http_body(
    url: str, *, max_bytes: int, deadline: Deadline, read_timeout_s: float, auth: Auth | None = None
) -> Iterator[Iterator[bytes]]:
    """The body of ``GET url`` as chunks, as they arrive: refused (RemoteDataError naming the URL) over
    ``max_bytes``, past the deadline (however slowly bytes come), on an HTTP error (``http_status``)
    or a broken read. ``url`` carries no userinfo: ``auth`` is the login, sent to its origin only."""
    import requests  # start-up time: see _adapter
    import urllib3  # on first use, not at start-up: a heavy import

    if _has_userinfo(url):  # a Kiln bug: the password would be in every message below
        raise ValueError("http_body takes a URL without userinfo; the login goes in auth")
    broken = (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError)
    session = _session()
    adapter = _adapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    with session, _Watchdog(deadline) as watchdog:
        where = url
        for _ in range(MAX_REDIRECTS + 1):
            login = auth if auth is not None and login_goes_to(url, where) else None
            response = _get(session, where, url, login, deadline, read_timeout_s, watchdog, broken)
            if not response.is_redirect:
                break
            with response:  # closed unread
                where = urljoin(where, response.headers["Location"])
        else:
            raise RemoteDataError(f"more than {MAX_REDIRECTS} redirects", url)
        with response:
            status = response.status_code
            if status >= 400:
                raise RemoteDataError(f"HTTP {status} {_phrase(status)}", url, http_status=status)
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise RemoteDataError(f"is {int(declared):,} bytes, over the limit of {max_bytes:,}", url)
            yield _chunks(response, url, max_bytes, deadline, watchdog, broken)


def _get(
    session: Any, where: str, url: str, auth: Auth | None, deadline: Deadline, read_timeout_s: float,
    watchdog: _Watchdog, broken: tuple[type, ...],
) -> Any:  # fmt: skip
    """One GET, its headers read (the body left to stream), refusals naming ``url`` (the one asked)."""
    import requests  # start-up time: see _adapter

    token = _WATCHDOG.set(watchdog)
    try:
        deadline.check()
        timeout = (min(read_timeout_s, max(deadline.left(), 0.01)), read_timeout_s)
        return session.get(
            where,
            stream=True,
            timeout=timeout,
            allow_redirects=False,
            auth=auth,
            headers={"Accept-Encoding": "identity"},
        )
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema) as exc:  # fmt: skip
        if where == url:
            raise InvalidInput(Problem(f"{url}: not an http(s) URL Kiln can read ({exc})")) from None
        raise RemoteDataError(f"redirected to a URL Kiln cannot read ({exc})", url) from None
    except RemoteDataError as exc:
        raise exc.at(url) from None
    except broken as exc:
        raise (deadline.error() if watchdog.fired else RemoteDataError(f"cannot read it ({exc})")).at(
            url
        ) from None
    finally:
        _WATCHDOG.reset(token)


def _session() -> Any:
    """A requests session that leaves redirects alone: even with ``allow_redirects=False`` requests reads
    a redirect's whole body (to prepare ``Response.next``), which a hostile server makes endless."""
    import requests  # start-up time: see _adapter

    class NoRedirects(requests.Session):
        def resolve_redirects(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
            return iter(())

    return NoRedirects()


def _phrase(status: int) -> str:
    """The standard phrase of a status (never the server's own text: a name someone else chose)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _chunks(
    response: Any, url: str, max_bytes: int, deadline: Deadline, watchdog: _Watchdog, broken: tuple[type, ...]
) -> Iterator[bytes]:
    total = 0
    while True:
        if watchdog.fired or deadline.left() <= 0:  # also counts the time the consumer spent
            raise deadline.error().at(url)
        try:
            chunk = response.raw.read1(READ_BYTES, decode_content=False)
        except broken as exc:
            raise (deadline.error() if watchdog.fired else RemoteDataError(f"read failed ({exc})")).at(
                url
            ) from None
        if watchdog.fired or deadline.left() <= 0:  # a shut-down socket reads as the end: not an end
            raise deadline.error().at(url)
        if not chunk:
            return
        total += len(chunk)
        if total > max_bytes:
            raise RemoteDataError(f"is more than {max_bytes:,} bytes (the limit)", url)
        yield chunk


def read_all(
    url: str, *, max_bytes: int, deadline: Deadline, read_timeout_s: float, auth: Auth | None = None
) -> bytes:
    with http_body(
        url, max_bytes=max_bytes, deadline=deadline, read_timeout_s=read_timeout_s, auth=auth
    ) as chunks:
        return b"".join(chunks)
