"""HTTP to registries: the only user of ``http.client``.

Keep-alive connections pooled per host, TLS with the system trust store plus
``REGISTRY_CA_FILE``, plain HTTP for ``INSECURE_REGISTRIES``, and redirects followed
by hand so that ``Authorization`` never reaches another host (``urllib.request``
would forward it).

Every request has an overall deadline, not only a per-read timeout: the sockets are
:class:`_DeadlineSocket` / :class:`_DeadlineSSLSocket`, which shrink their timeout
before every read and write to what is left of the request's deadline. A peer that
trickles its headers or body a byte at a time is cut off at the deadline, whatever
its pattern (README "Reliability": deadlines and bulkheads).
"""

from __future__ import annotations

import functools
import http.client
import math
import socket
import ssl
import threading
import time
from collections import OrderedDict
from typing import Callable, Iterable, Mapping
from urllib.parse import urljoin, urlsplit

from imgrep import __version__
from imgrep.errors import ForbiddenRegistry, RegistryProtocolError, RegistryUnavailable
from imgrep.oci.netpolicy import refusal
from imgrep.oci.protocol import Origin as _Origin
from imgrep.oci.protocol import origin as _origin
from imgrep.oci.protocol import redact_url
from imgrep.oci.retry import IDEMPOTENT_METHODS

__all__ = ["Transport", "Response", "Observer", "USER_AGENT"]

USER_AGENT = f"imgrep/{__version__}"
MAX_REDIRECTS = 5
#: Idle connections kept per host; enough for the copy pool plus admission checks.
MAX_IDLE_PER_HOST = 16
#: Idle connections kept in all: image references name arbitrary hosts, and a pool
#: per host without a total would let them pile up open sockets.
MAX_IDLE_TOTAL = 128
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, http.client.BadStatusLine)

#: (host, method, status code or "error", seconds) after every request
Observer = Callable[[str, str, str, float], None]


class _Deadline:
    """Reads and writes that never run past ``deadline`` (monotonic seconds).

    Each call gets ``min(read_timeout, time left)`` as its socket timeout, so a slow
    but steady peer cannot stretch a request by sending just often enough.
    ``sendall`` of a plain socket already treats its timeout as a total (CPython 3.5+);
    TLS sockets send in a Python loop, so ``send`` is bounded one call at a time too.
    """

    deadline = math.inf
    read_timeout = 30.0

    def _arm(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        self.settimeout(min(self.read_timeout, left))

    def recv(self, *args):
        self._arm()
        return super().recv(*args)

    def recv_into(self, *args):
        self._arm()
        return super().recv_into(*args)

    def send(self, *args):
        self._arm()
        return super().send(*args)

    def sendall(self, *args):
        self._arm()
        return super().sendall(*args)


class _DeadlineSocket(_Deadline, socket.socket):
    """A plain registry connection's socket."""


class _DeadlineSSLSocket(_Deadline, ssl.SSLSocket):
    """What the transport's TLS context wraps sockets in (``SSLContext.sslsocket_class``)."""


class Response:
    """A response whose connection returns to the pool once the body is consumed.

    Body reads stop at the request's deadline like the headers did; a body that
    breaks off or runs past it raises RegistryUnavailable naming the host.
    """

    def __init__(self, raw: http.client.HTTPResponse, url: str, host: str, release: Callable[[bool], None]):
        self._raw = raw
        self._release = release
        self._done = False
        self.status = raw.status
        self.headers = raw.headers
        self.url = url
        self.host = host

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default) or default

    def read(self, amount: int | None = None) -> bytes:
        data = self._body(self._raw.read, amount)
        if not data or amount is None or self._raw.isclosed():
            self._finish(reusable=True)
        return data

    def read_capped(self, limit: int) -> bytes:
        """Read at most ``limit`` bytes; a longer body closes the connection."""
        data = self._body(self._raw.read, limit + 1)
        if len(data) > limit:
            self._finish(reusable=False)
            return data[:limit]
        self._finish(reusable=True)
        return data

    def _body(self, read: Callable, *args):
        try:
            return read(*args)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # ValueError: http.client's answer to a read on a connection closed under it
            self._finish(reusable=False)
            raise RegistryUnavailable(self.host, f"answer broke off: {_describe(exc)}") from None

    def close(self) -> None:
        """Give the connection back if the body is fully read, else drop it."""
        self._finish(reusable=self._raw.isclosed() or self._raw.length == 0)

    def _finish(self, reusable: bool) -> None:
        if self._done:
            return
        self._done = True
        reusable = reusable and self._raw.isclosed() and not self._raw.will_close
        if not reusable:
            self._raw.close()
        self._release(reusable)

    def __enter__(self) -> "Response":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Transport:
    def __init__(
        self,
        *,
        insecure_registries: frozenset[str] = frozenset(),
        ca_file: str | None = None,
        timeout: float = 30.0,
        observe: Observer | None = None,
        tls: ssl.SSLContext | None = None,
        exempt: frozenset[tuple[str, int]] = frozenset(),
    ):
        """``exempt``: (IP, port) pairs the address guard lets through, for a credential
        provider's own transport only (imgrep.cloud.io.providers); the registries' transport has none."""
        self.insecure = insecure_registries
        self._exempt = exempt
        self.timeout = timeout
        self._observe = observe or (lambda *args: None)
        # ``tls``: a context of the caller's (the Kubernetes client trusts the cluster CA only
        # and may present a client certificate); deadlines apply to it all the same
        self._tls = tls or ssl.create_default_context(cafile=None)
        self._tls.minimum_version = max(self._tls.minimum_version, ssl.TLSVersion.TLSv1_2)
        self._tls.sslsocket_class = _DeadlineSSLSocket
        if ca_file:
            self._tls.load_verify_locations(cafile=ca_file)
        #: least recently used origin first
        self._idle: OrderedDict[_Origin, list[http.client.HTTPConnection]] = OrderedDict()
        self._idle_count = 0
        self._lock = threading.Lock()

    def base_url(self, registry: str) -> str:
        """``https://host`` or ``http://host`` for an ``INSECURE_REGISTRIES`` entry."""
        scheme = "http" if registry in self.insecure else "https"
        return f"{scheme}://{registry}"

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | Iterable[bytes] | None = None,
        *,
        deadline: float = math.inf,
        follow_redirects: bool = True,
    ) -> Response:
        """Send one request; raise RegistryUnavailable on network failure.

        ``deadline`` (monotonic seconds) bounds the whole exchange, redirects and the
        body included; each read or write also waits at most ``timeout`` seconds.
        Redirects (GET/HEAD only) are followed up to MAX_REDIRECTS; ``Authorization``
        is dropped as soon as the origin changes, and a redirect from HTTPS to plain HTTP
        is refused (ForbiddenRegistry): it would hand the request, and what the answer
        is trusted for, to anyone on the path. The answer's ``url`` is where it came from.
        """
        headers = dict(headers or {})
        headers.setdefault("User-Agent", USER_AGENT)
        first = _origin(url)
        here = first
        for _ in range(MAX_REDIRECTS + 1):
            response = self._send(method, url, headers, body, deadline)
            location = response.header("Location")
            if not (follow_redirects and response.status in _REDIRECTS and location and method in ("GET", "HEAD")):
                return response
            response.read_capped(4096)
            url = urljoin(url, location)
            try:
                moved = _origin(url)
            except ValueError:
                raise RegistryProtocolError(first.netloc, f"redirect to an unusable URL {redact_url(url)}") from None
            if here.scheme == "https" and moved.scheme == "http":
                raise ForbiddenRegistry(first.netloc, f"refusing a redirect from HTTPS to plain HTTP "
                                                      f"({redact_url(url)})")
            here = moved
            if moved != first:
                headers.pop("Authorization", None)
        raise RegistryUnavailable(first.netloc, f"more than {MAX_REDIRECTS} redirects, last to {redact_url(url)}")

    def _send(self, method: str, url: str, headers: dict[str, str], body, deadline: float) -> Response:
        origin = _origin(url)
        parts = urlsplit(url)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        # A pooled connection the server had closed fails before an answer; the request is sent
        # once more only when that is safe: an idempotent method (the server may have acted on
        # it before closing) and a body that can be sent again.
        replayable = method in IDEMPOTENT_METHODS and (body is None or isinstance(body, (bytes, bytearray)))
        started = time.monotonic()
        for attempt in (1, 2):
            left = deadline - time.monotonic()
            if left <= 0:
                self._observe(origin.netloc, method, "error", time.monotonic() - started)
                raise RegistryUnavailable(origin.netloc, "no complete answer before the deadline")
            connection, reused = self._connection(origin, min(self.timeout, left))
            try:
                if connection.sock is None:
                    connection.connect()  # connect and TLS handshake are bounded by the timeout as a total
                connection.sock.deadline = deadline
                connection.sock.read_timeout = self.timeout
                connection.request(method, target, body=body, headers=headers)
                raw = connection.getresponse()
            except _STALE as exc:
                connection.close()
                if reused and replayable and attempt == 1:
                    continue  # a pooled connection the server had already closed
                self._observe(origin.netloc, method, "error", time.monotonic() - started)
                raise RegistryUnavailable(origin.netloc, f"connection failed: {_describe(exc)}") from None
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                self._observe(origin.netloc, method, "error", time.monotonic() - started)
                raise RegistryUnavailable(origin.netloc, f"connection failed: {_describe(exc)}") from None
            except BaseException:  # a streamed body's source failed mid-request: this connection is unusable
                connection.close()
                raise
            self._observe(origin.netloc, method, str(raw.status), time.monotonic() - started)
            response = Response(raw, url, origin.netloc, lambda reusable, c=connection: self._release(origin, c, reusable))
            if method == "HEAD":
                response.read()
            return response
        raise AssertionError("unreachable")  # the loop returns or raises

    def _connection(self, origin: _Origin, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            idle = self._idle.get(origin)
            connection = idle.pop() if idle else None
            if connection is not None:
                self._idle_count -= 1
        if connection is not None:  # its socket gets the request's deadline and read timeout in _send
            return connection, True
        if origin.scheme == "https":
            connection = http.client.HTTPSConnection(origin.host, origin.port, timeout=timeout, context=self._tls)
        else:
            connection = http.client.HTTPConnection(origin.host, origin.port, timeout=timeout)
        # every connect, redirects and token realms included
        connection._create_connection = functools.partial(_guarded_connect, exempt=self._exempt)
        return connection, False

    def _release(self, origin: _Origin, connection: http.client.HTTPConnection, reusable: bool) -> None:
        if not reusable or connection.sock is None:
            connection.close()
            return
        evicted = None
        with self._lock:
            idle = self._idle.setdefault(origin, [])
            self._idle.move_to_end(origin)
            if len(idle) >= MAX_IDLE_PER_HOST:
                evicted = connection
            else:
                idle.append(connection)
                self._idle_count += 1
                if self._idle_count > MAX_IDLE_TOTAL:
                    evicted = self._evict_oldest()
        if evicted is not None:
            evicted.close()

    def _evict_oldest(self) -> http.client.HTTPConnection:
        """Take one idle connection of the least recently used origin (lock held)."""
        origin, idle = next((o, c) for o, c in self._idle.items() if c)
        connection = idle.pop(0)
        if not idle:
            del self._idle[origin]
        self._idle_count -= 1
        return connection

    def close(self) -> None:
        with self._lock:
            pools, self._idle, self._idle_count = self._idle, OrderedDict(), 0
        for idle in pools.values():
            for connection in idle:
                connection.close()


def _guarded_connect(address: tuple[str, int], timeout: float, source_address=None, *,
                     exempt: frozenset[tuple[str, int]] = frozenset()) -> socket.socket:
    """``socket.create_connection`` that refuses netpolicy's addresses.

    The address checked is the address connected to, so a name that resolves
    differently a second time (DNS rebinding) cannot slip past.
    """
    host, port = address
    refused, last_error = "", None
    for family, kind, protocol, _, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        reason = None if (sockaddr[0].split("%", 1)[0], sockaddr[1]) in exempt else refusal(sockaddr[0])
        if reason:
            refused = reason
            continue
        sock = _DeadlineSocket(family, kind, protocol)
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            last_error = exc
    if last_error is not None:
        raise last_error
    shown = f"[{host}]" if ":" in host else host
    raise ForbiddenRegistry(shown, f"refusing to connect: it resolves to {refused or 'no address'}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({exc.verify_message})"
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:200]
