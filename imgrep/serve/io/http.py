"""The webhook (TLS) and health (plain HTTP) servers.

``ThreadingHTTPServer`` with the pitfalls of its defaults fixed: the TLS handshake runs
in the connection's thread (a stalled client cannot block ``accept``), every response
goes out in one write with ``TCP_NODELAY`` (no 40 ms delayed-ACK stall on keep-alive),
connections are capped and time out, and shutdown drains in-flight requests.

Connections that deliver no request cannot starve the ones that do. Each connection
holds one of ``max_connections`` slots and is tracked in a :class:`Phase`:

* ``NEW`` from the moment it gets its slot (normally: accept) until its first request
  head is in. The TLS handshake counts: both are due within ``Timeouts.head``. The API
  server writes a request head in one burst right after the handshake, so only a client
  that is stalled, trickling or not a client at all takes longer.
* ``IDLE`` once answered: a kept-alive connection may wait ``Timeouts.idle`` for its
  next request. The first byte of that request (seen with a ``peek`` of the buffer the
  request line is read from anyway) turns it ``HEAD``: the rest of the head is due
  within ``Timeouts.head`` of that byte. A client trickling the request line itself
  stays ``IDLE``: the idle timeout and eviction bound it.
* ``BODY`` while a POST body is read (``Timeouts.body``: up to 3 MiB may cross a slow link).
* ``BUSY`` from the whole request until its answer is written: never closed by the
  reaper or evicted; shutdown waits for it.

A reaper thread closes connections past their phase's deadline. It sleeps until the
earliest deadline plus ``REAP_SLACK`` (never longer than ``Timeouts.head``, the
shortest deadline a connection arriving meanwhile can get), so deadlines are kept
within ``REAP_SLACK`` while an idle or warm server is woken rarely: each wake-up takes
the GIL from requests in flight.

When every slot is taken, a newcomer does not wait: the accept loop evicts the
connection least likely to be a client about to be served (see
:func:`eviction_victim`) and the newcomer takes its slot. Only when every connection is
``BUSY`` does the newcomer wait, in a listen backlog sized for a burst of hundreds.
"""

from __future__ import annotations

import enum
import math
import os
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar

from imgrep.observe.io.logs import Logger
from imgrep.serve.routes import Request, Router, error_reply

__all__ = ["HttpServer", "CertificateReloader", "Lifecycle", "Phase", "Tracked", "Timeouts", "eviction_victim",
           "overdue", "reap_wait"]

#: seconds any one read or write may block once a request has started (a second line
#: behind the reaper's deadlines, which are what bound slow clients)
SOCKET_TIMEOUT = 30.0
#: seconds a new connection gets for its TLS handshake and whole first request head, and
#: a kept-alive one for the rest of a head after its first byte. The API server sends a
#: head in one burst after a handshake of two round trips, milliseconds even across
#: zones; 3 s is a hundred slow round trips on a loaded node, and under a third of the
#: webhook's timeoutSeconds (10), so a head later than that could rarely be answered in time
HEAD_TIMEOUT = 3.0
#: seconds to read a POST body after its head: 3 MiB over a slow link
BODY_TIMEOUT = 30.0
#: seconds a kept-alive connection may wait for its next request after an answer
IDLE_TIMEOUT = 30.0
#: certificate files are checked for renewal at most this often
CERT_CHECK_INTERVAL = 1.0
#: seconds between the accept loop's checks for shutdown: each wake-up takes the GIL
#: from requests in flight, so they are rare
POLL_INTERVAL = 0.5
#: the reaper acts this long after the earliest deadline at the latest, collecting the
#: deadlines that fall due meanwhile into one wake-up (at most 1/REAP_SLACK a second)
REAP_SLACK = 0.5
#: while every connection is busy, the accept loop looks again for one to evict (or for
#: shutdown) this often
EVICTION_WAIT = 0.2
#: connections the kernel holds before accept: a burst of hundreds (a crowd of stalled
#: clients, API servers reconnecting after a restart) waits instead of being refused.
#: Linux caps it at net.core.somaxconn (4096 since 5.4)
LISTEN_BACKLOG = 1024
#: http.server's own limits: bytes in one request or header line, header lines
MAX_LINE = 65536
MAX_HEADERS = 100
#: an oversized body up to this size is read and dropped so its sender sees the 413;
#: beyond it the connection is closed at once
MAX_DISCARD_BYTES = 16 * 1024 * 1024



class Phase(enum.Enum):
    """What a connection is doing, as the reaper and eviction see it (module docstring)."""

    NEW = "new"
    IDLE = "idle"
    HEAD = "head"
    BODY = "body"
    BUSY = "busy"
    #: shut down by the reaper or an eviction; its thread is on its way out
    CLOSING = "closing"


#: a connection's phase, since when (monotonic seconds), and whether it has had an answer:
#: a plain tuple, because one is made at every step of every request
Tracked = tuple[Phase, float, bool]


@dataclass(frozen=True)
class Timeouts:
    """Seconds each phase may last before the reaper closes the connection."""

    head: float = HEAD_TIMEOUT
    body: float = BODY_TIMEOUT
    idle: float = IDLE_TIMEOUT

    def deadline(self, entry: Tracked) -> float:
        phase, since, _answered = entry
        if phase is Phase.NEW or phase is Phase.HEAD:
            return since + self.head
        if phase is Phase.IDLE:
            return since + self.idle
        if phase is Phase.BODY:
            return since + self.body
        return math.inf  # BUSY is answered however long it takes; CLOSING is already going


Key = TypeVar("Key", bound=Hashable)


def overdue(connections: Mapping[Key, Tracked], now: float, timeouts: Timeouts) -> tuple[list[Key], float]:
    """The connections past their deadline at ``now``, and the earliest deadline of the rest
    (``math.inf`` when none has one)."""
    stale: list[Key] = []
    earliest = math.inf
    for key, entry in connections.items():
        due = timeouts.deadline(entry)
        if due < now:
            stale.append(key)
        elif due < earliest:
            earliest = due
    return stale, earliest


def reap_wait(earliest: float, now: float, timeouts: Timeouts) -> float:
    """Seconds the reaper sleeps after a round at ``now``.

    Until the earliest deadline plus REAP_SLACK, but no longer than ``timeouts.head``
    plus REAP_SLACK: a connection that arrives while the reaper sleeps gets a deadline
    at least ``timeouts.head`` away, so none is kept more than REAP_SLACK past its own.
    """
    return min(max(earliest - now, 0.0), timeouts.head) + REAP_SLACK


def eviction_victim(connections: Mapping[Key, Tracked]) -> Key | None:
    """The connection to close so that a newcomer gets a slot, or None to wait instead.

    Never one that is being answered (BUSY). First the connections that have never had
    an answer, oldest first: the ones a stalled or trickling crowd consists of, while a
    real client leaves that phase within milliseconds. Then answered ones (idle
    keep-alive, or between the first byte of a request and its end), the one longest
    in its phase first. None while an earlier victim or reaped connection is still
    closing: its slot is about to free.
    """
    best: Key | None = None
    best_rank: tuple[bool, float] | None = None
    for key, (phase, since, answered) in connections.items():
        if phase is Phase.CLOSING:
            return None
        if phase is Phase.BUSY:
            continue
        rank = (answered, since)
        if best_rank is None or rank < best_rank:
            best, best_rank = key, rank
    return best


@dataclass
class Lifecycle:
    """Ready once the webhook listens with its certificate; draining after SIGTERM."""

    ready: bool = False
    draining: bool = False


class CertificateReloader:
    """Serves the newest certificate pair: files are checked on new connections,
    at most once per CERT_CHECK_INTERVAL, and a pair that fails to load (a renewal
    caught half-written) keeps the previous context in use."""

    def __init__(self, cert_path: str, key_path: str, logger: Logger, clock=time.monotonic):
        self.cert_path, self.key_path = cert_path, key_path
        self.logger = logger
        self.clock = clock
        self._lock = threading.Lock()
        self._stamp = self._files_stamp()
        self._checked = clock()
        self.context = self._load()  # start-up failure propagates: no certificate, no webhook

    def _files_stamp(self) -> tuple:
        stats = [os.stat(p) for p in (self.cert_path, self.key_path)]
        return tuple((s.st_mtime_ns, s.st_size, s.st_ino) for s in stats)

    def _load(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_path, self.key_path)
        context.set_alpn_protocols(["http/1.1"])
        return context

    def current(self) -> ssl.SSLContext:
        now = self.clock()
        if now - self._checked < CERT_CHECK_INTERVAL:
            return self.context
        with self._lock:
            self._checked = now
            try:
                stamp = self._files_stamp()
                if stamp != self._stamp:
                    self.context = self._load()
                    self._stamp = stamp
                    self.logger.info("certificate_reloaded", cert=self.cert_path)
            except (OSError, ssl.SSLError, ValueError) as exc:
                self.logger.warning("certificate_reload_failed", cert=self.cert_path, error=str(exc)[:200])
        return self.context


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "imgrep"
    sys_version = ""
    timeout = SOCKET_TIMEOUT
    server: "HttpServer"

    def setup(self) -> None:
        self.answered = False
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(self.server.timeouts.head)
            self.request.do_handshake()
        super().setup()

    def handle(self) -> None:
        try:
            super().handle()
        except (OSError, ssl.SSLError) as exc:  # resets, timeouts, a connection shut by the reaper
            self.server.logger.debug("connection_error", peer=self.client_address[0], error=str(exc)[:200])

    def handle_one_request(self) -> None:
        if self.server.lifecycle.draining and self.server.stopping.is_set():
            self.close_connection = True
            return
        if self.answered:
            # Kept alive: the idle wait ends with the next request's first byte (already
            # in the buffer the request line is read from, or the one read that fills it);
            # from then on the head is due within the head timeout.
            if not self.rfile.peek(1):
                self.close_connection = True
                return
            self.server.track(self.request, Phase.HEAD, True)
        super().handle_one_request()

    def parse_request(self) -> bool:
        """Request line and headers, read straight into a dict with lowercased names.

        Replaces http.server's email-parser based reading, which cost more than the
        whole admission decision on the warm path. Same limits: 64 KiB a line
        (431), MAX_HEADERS lines (431); HTTP/1.x only (400).
        """
        self.command = None
        self.request_version = self.default_request_version
        self.close_connection = True
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if len(words) != 3 or not words[2].startswith("HTTP/1."):
            self.send_error(400, "bad request line")
            return False
        self.command, self.path, self.request_version = words
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS):
            line = self.rfile.readline(MAX_LINE + 1)
            if len(line) > MAX_LINE:
                self.send_error(431, "header line too long")
                return False
            if line in (b"\r\n", b"\n", b""):
                break
            name, colon, value = line.decode("iso-8859-1").partition(":")
            if not colon or not name.strip():
                self.send_error(400, "malformed header line")
                return False
            headers[name.strip().lower()] = value.strip()
        else:
            self.send_error(431, "too many headers")
            return False
        self.headers = headers
        connection = headers.get("connection", "").lower()
        self.close_connection = connection == "close" or (
            self.request_version == "HTTP/1.0" and connection != "keep-alive")
        if headers.get("expect", "").lower() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return True

    def _serve(self) -> None:
        method = self.command
        length = self.headers.get("content-length")
        body = b""
        if method == "POST":
            self.server.track(self.request, Phase.BODY, self.answered)
            if self.headers.get("transfer-encoding") or length is None or not length.isdigit():
                return self._reply(*error_reply(411, "Content-Length required"), close=True)
            limit = self.server.max_body
            if int(length) > limit:
                self._discard(int(length))
                return self._reply(*error_reply(413, f"request body larger than {_size(limit)}"), close=True)
            body = self.rfile.read(int(length))
            if len(body) != int(length):
                self.close_connection = True
                return
        path, query = Router.split_target(self.path)
        request = Request(method, path, query, self.headers, body)
        # fully received: from here on it is answered, even while draining, and never evicted
        self.server.track(self.request, Phase.BUSY, self.answered)
        try:
            reply = self.server.router.dispatch(request)
        except Exception as exc:  # the boundary: a bug becomes a 500 line, never a traceback to the client
            self.server.logger.error("internal_error", path=path, error=f"{type(exc).__name__}: {exc}"[:300])
            reply = error_reply(500, "internal error")
        try:
            self._reply(*reply, close=self.server.lifecycle.draining)
        finally:
            self.answered = True
            self.server.track(self.request, Phase.IDLE, True)

    do_GET = do_POST = _serve

    def _discard(self, length: int) -> None:
        """Read a refused body (up to a bound) so the client, still sending, can read the 413."""
        if length > MAX_DISCARD_BYTES:
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 64 * 1024))
            if not chunk:
                return
            length -= len(chunk)

    def _reply(self, status: int, content_type: str, body: bytes, close: bool = False) -> None:
        """Status line, headers and body in a single write (see module docstring)."""
        if close:
            self.close_connection = True
        head = [
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            "Server: imgrep",
        ]
        if self.close_connection:
            head.append("Connection: close")
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (bad request line, huge headers) as one-line JSON."""
        self.close_connection = True
        self._reply(*error_reply(code, message or HTTPStatus(code).phrase), close=True)

    def log_message(self, format: str, *args) -> None:
        self.server.logger.debug("http", peer=self.client_address[0], line=format % args)


class HttpServer(ThreadingHTTPServer):
    """One listener. ``certificates`` set → TLS, handshake per connection thread."""

    #: connection threads are not joined at close: drain() waits for the busy ones
    #: only, so a client stuck in its handshake cannot hold up shutdown
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(
        self,
        address: tuple[str, int],
        router: Router,
        logger: Logger,
        lifecycle: Lifecycle,
        *,
        certificates: CertificateReloader | None = None,
        max_body: int,
        max_connections: int = 256,
        timeouts: Timeouts = Timeouts(),
    ):
        self.router = router
        self.max_body = max_body
        self.logger = logger
        self.lifecycle = lifecycle
        self.certificates = certificates
        self.timeouts = timeouts
        self.stopping = threading.Event()
        self._slots = threading.BoundedSemaphore(max_connections)
        #: socket → what it is doing since when: the reaper, eviction and drain() read it
        self._connections: dict[socket.socket, Tracked] = {}
        self._conn_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self):
        sock, address = self.socket.accept()
        if self.certificates is not None:
            sock = self.certificates.current().wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def process_request(self, request, client_address) -> None:
        """Give the connection a slot and a thread; when none is free, make one free."""
        if not self._slots.acquire(blocking=False):
            while True:
                self._evict_one()
                if self._slots.acquire(timeout=EVICTION_WAIT):
                    break
                if self.stopping.is_set():
                    self.shutdown_request(request)
                    return
        self.track(request, Phase.NEW, False)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.untrack(request)
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.untrack(request)
            self._slots.release()

    def _evict_one(self) -> None:
        """Every slot is taken: close the connection eviction_victim() names, if any.

        Chosen and shut down under the lock, so a connection cannot turn BUSY in between.
        """
        now = time.monotonic()
        with self._conn_lock:
            victim = eviction_victim(self._connections)
            if victim is None:
                return
            phase, since, answered = self._connections[victim]
            self._connections[victim] = (Phase.CLOSING, now, answered)
            _shutdown(victim, socket.SHUT_RDWR)
        self.logger.debug("connection_evicted", phase=phase.value, seconds=round(now - since, 3))

    def handle_error(self, request, client_address) -> None:
        self.logger.debug("connection_error", peer=client_address[0])

    def track(self, connection: socket.socket, phase: Phase, answered: bool) -> None:
        with self._conn_lock:
            self._connections[connection] = (phase, time.monotonic(), answered)

    def untrack(self, connection: socket.socket) -> None:
        with self._conn_lock:
            self._connections.pop(connection, None)

    def census(self) -> Counter[Phase]:
        """How many connections are in each phase now."""
        with self._conn_lock:
            return Counter(phase for phase, _since, _answered in self._connections.values())

    def drain(self, grace: float) -> None:
        """Stop accepting, close idle keep-alive connections, give busy ones ``grace`` seconds to answer."""
        self.stopping.set()
        self.shutdown()
        self.server_close()
        with self._conn_lock:
            idle = [c for c, (phase, _since, _answered) in self._connections.items() if phase is not Phase.BUSY]
        for connection in idle:
            _shutdown(connection, socket.SHUT_RD)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with self._conn_lock:
                if not any(phase is Phase.BUSY for phase, _since, _answered in self._connections.values()):
                    return
            time.sleep(0.02)
        self.logger.warning("shutdown_grace_exceeded", port=self.server_address[1])

    def reap(self, now: float) -> int:
        """Close the connections past their phase's deadline at ``now`` (see Timeouts); how many."""
        return self._reap(now)[0]

    def _reap(self, now: float) -> tuple[int, float]:
        """reap(), and the earliest deadline left. Shut down under the lock, like an eviction."""
        with self._conn_lock:
            stale, earliest = overdue(self._connections, now, self.timeouts)
            for connection in stale:
                self._connections[connection] = (Phase.CLOSING, now, self._connections[connection][2])
                _shutdown(connection, socket.SHUT_RDWR)
        if stale:
            self.logger.debug("connections_reaped", count=len(stale))
        return len(stale), earliest

    def _reap_forever(self) -> None:
        wait = reap_wait(math.inf, 0.0, self.timeouts)
        while not self.stopping.wait(wait):
            now = time.monotonic()
            _count, earliest = self._reap(now)
            wait = reap_wait(earliest, now, self.timeouts)

    def serve_in_thread(self) -> threading.Thread:
        port = self.server_address[1]
        threading.Thread(target=self._reap_forever, name=f"imgrep-reap-{port}", daemon=True).start()
        thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": POLL_INTERVAL},
                                  name=f"imgrep-listen-{port}", daemon=True)
        thread.start()
        return thread


def _shutdown(connection: socket.socket, how: int) -> None:
    """Shut the raw socket (SSLSocket.shutdown would drop the TLS layer first): the
    connection's thread, blocked in a read or write, wakes up and finishes."""
    try:
        socket.socket.shutdown(connection, how)
    except OSError:
        pass  # already closed by the peer


def _size(limit: int) -> str:
    mib = limit / (1024 * 1024)
    return f"{mib:g} MiB" if mib >= 1 else f"{limit} bytes"
