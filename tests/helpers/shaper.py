"""A WAN in front of a loopback server: one-way delay, a shared bandwidth cap, TCP-like windows.

Kernel ``netem`` is not available on the development machine, so this proxy plays
the link in user space. Every byte that crosses it, in either direction, is

* **serialised** on that direction's wire: one scheduler for the whole link, shared
  by all connections (a token bucket whose burst is one read), so four parallel
  downloads split the bandwidth instead of each getting all of it;
* **delayed** by half the round-trip time before it is delivered;
* **window-limited** per connection and direction, like TCP: a sender may have at
  most ``window`` bytes not yet acknowledged, an acknowledgement comes back one
  one-way delay after delivery, and the window starts at ten segments and grows by
  what was acknowledged (slow start) up to ``max_window``. A new connection's first
  request waits one round trip for the handshake.

What it leaves out: loss, congestion control after slow start, the cost of
acknowledgements on the reverse wire and the slow-start restart after idle periods.
Buffers stay bounded: each direction of a connection holds at most its window.

It also notes the start of every HTTP request a client sends (method, path, time),
so a benchmark or a test can count the round trips a copier walks before its first blob.

    python -m tests.helpers.shaper 127.0.0.1:5000 --rtt-ms 50 --mbit 100 --seconds 600
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass

__all__ = ["Shaper", "Wire", "RequestStart"]

#: bytes read from a socket at once: 2.6 ms on a 100 Mbit/s wire, fine enough for fair sharing
READ_SIZE = 32 * 1024
#: Linux's initial congestion window: ten segments of 1460 bytes (RFC 6928)
INITIAL_WINDOW = 10 * 1460
#: where slow start stops: above the bandwidth-delay product of 100 Mbit/s × 150 ms (1.9 MB),
#: about what Linux receive-buffer autotuning reaches
MAX_WINDOW = 4 * 1024 * 1024
#: request heads longer than this stop the request log for that connection
MAX_HEAD = 64 * 1024
#: seconds a thread waits before it looks at the stop flag again
POLL = 0.5


@dataclass(frozen=True)
class RequestStart:
    """A request as the client sent it: when its first bytes reached the link."""

    at: float  # time.monotonic()
    method: str
    path: str
    connection: int


class Wire:
    """One direction of the link: a byte takes ``1/rate`` seconds, one after the other."""

    def __init__(self, rate: float):
        self.rate = rate
        self._free_at = 0.0
        self._lock = threading.Lock()

    def send(self, size: int) -> float:
        """Book ``size`` bytes on the wire; the time their last byte has left."""
        with self._lock:
            start = max(time.monotonic(), self._free_at)
            self._free_at = start + size / self.rate
            return self._free_at


def _sleep_until(moment: float) -> None:
    remaining = moment - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


class _Segment:
    __slots__ = ("data", "deliver_at", "acknowledged_at")

    def __init__(self, data: bytes, deliver_at: float):
        self.data = data
        self.deliver_at = deliver_at
        self.acknowledged_at: float | None = None  # set once delivered


class _Direction:
    """Bytes from ``source`` to ``sink`` over ``wire``: a reader that books the wire, a writer
    that delivers after the delay, and a window between them."""

    def __init__(self, shaper: Shaper, wire: Wire, source: socket.socket, sink: socket.socket,
                 opens_at: float, on_data=None, on_done=None):
        self.shaper = shaper
        self.wire = wire
        self.source = source
        self.sink = sink
        self.opens_at = opens_at
        self.on_data = on_data
        self.on_done = on_done or (lambda: None)
        self.window = INITIAL_WINDOW
        self.in_flight = 0
        self.queue: deque[_Segment | None] = deque()  # None: the sender closed
        self.unacknowledged: deque[_Segment] = deque()
        self.changed = threading.Condition()

    def start(self, name: str) -> list[threading.Thread]:
        threads = [threading.Thread(target=self._read, name=f"{name}-read", daemon=True),
                   threading.Thread(target=self._write, name=f"{name}-write", daemon=True)]
        for thread in threads:
            thread.start()
        return threads

    def _room(self) -> int:
        """Bytes the sender may put on the wire now; waits for acknowledgements if none."""
        with self.changed:
            while not self.shaper.stopping.is_set():
                now = time.monotonic()
                while self.unacknowledged and (self.unacknowledged[0].acknowledged_at or now + 1) <= now:
                    size = len(self.unacknowledged.popleft().data)
                    self.in_flight -= size
                    self.window = min(self.shaper.max_window, self.window + size)
                if self.in_flight < self.window:
                    return self.window - self.in_flight
                acknowledged_at = self.unacknowledged[0].acknowledged_at
                self.changed.wait(min(POLL, acknowledged_at - now) if acknowledged_at else POLL)
        return 0

    def _read(self) -> None:
        _sleep_until(self.opens_at)
        try:
            while room := self._room():
                data = self.source.recv(min(READ_SIZE, room))
                if not data:
                    break
                if self.on_data:
                    self.on_data(data)
                sent = self.wire.send(len(data))
                _sleep_until(sent)
                segment = _Segment(data, sent + self.shaper.one_way)
                with self.changed:
                    self.in_flight += len(data)
                    self.unacknowledged.append(segment)
                    self.queue.append(segment)
                    self.changed.notify_all()
        except OSError:
            pass
        with self.changed:
            self.queue.append(None)
            self.changed.notify_all()

    def _write(self) -> None:
        try:
            self._deliver()
        finally:
            self.on_done()

    def _deliver(self) -> None:
        try:
            while True:
                with self.changed:
                    while not self.queue and not self.shaper.stopping.is_set():
                        self.changed.wait(POLL)
                    if not self.queue:
                        return
                    segment = self.queue.popleft()
                if segment is None:
                    # the FIN travels like data: after the last byte, one delay later
                    _sleep_until(time.monotonic() + self.shaper.one_way)
                    self.sink.shutdown(socket.SHUT_WR)
                    return
                _sleep_until(segment.deliver_at)
                self.sink.sendall(segment.data)
                with self.changed:
                    segment.acknowledged_at = time.monotonic() + self.shaper.one_way
                    self.changed.notify_all()
        except OSError:
            # the receiver is gone: stop the sender too
            for sock in (self.source, self.sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class _RequestLog:
    """Finds request heads in one connection's client bytes (bodies skipped by Content-Length)."""

    def __init__(self, shaper: Shaper, connection: int):
        self.shaper = shaper
        self.connection = connection
        self.buffer = b""
        self.skip = 0
        self.lost = False

    def feed(self, data: bytes) -> None:
        now = time.monotonic()
        while data and not self.lost:
            if self.skip:
                taken = min(self.skip, len(data))
                self.skip -= taken
                data = data[taken:]
                continue
            self.buffer += data
            data = b""
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                self.lost = len(self.buffer) > MAX_HEAD
                return
            head, data = self.buffer[:end].decode("latin-1"), self.buffer[end + 4:]
            self.buffer = b""
            lines = head.split("\r\n")
            method, path, *_ = lines[0].split(" ") + ["", ""]
            self.shaper.record(RequestStart(now, method, path, self.connection))
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length" and value.strip().isdigit():
                    self.skip = int(value.strip())
                elif name == "transfer-encoding":
                    self.lost = True  # chunked bodies are not followed


class _Countdown:
    def __init__(self, count: int, then):
        self.count = count
        self.then = then
        self.lock = threading.Lock()

    def tick(self) -> None:
        with self.lock:
            self.count -= 1
            last = self.count == 0
        if last:
            self.then()


class Shaper:
    """Listens on 127.0.0.1 (port 0) and forwards to ``upstream`` (``host:port``) over the emulated link.

    A context manager; ``close()`` stops the listener, cuts every connection and joins
    the threads. ``host`` is what clients use as the registry address.
    """

    def __init__(self, upstream: str, *, rtt: float, mbit: float, max_window: int = MAX_WINDOW):
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self.rtt = rtt
        self.one_way = rtt / 2
        self.max_window = max_window
        rate = mbit * 1e6 / 8
        self.down = Wire(rate)  # server → client
        self.up = Wire(rate)  # client → server
        self.stopping = threading.Event()
        self.accepted: list[float] = []
        self._requests: list[RequestStart] = []
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(POLL)
        self.port = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept, name="shaper-accept", daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Shaper:
        self._acceptor.start()
        return self

    def __enter__(self) -> Shaper:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def record(self, request: RequestStart) -> None:
        with self._lock:
            self._requests.append(request)

    def requests(self) -> list[RequestStart]:
        """Every request started so far, in the order the link saw them."""
        with self._lock:
            return sorted(self._requests, key=lambda r: r.at)

    def mark(self) -> int:
        with self._lock:
            return len(self._requests)

    def requests_since(self, mark: int) -> list[RequestStart]:
        with self._lock:
            return sorted(self._requests[mark:], key=lambda r: r.at)

    def _accept(self) -> None:
        number = 0
        while not self.stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            accepted = time.monotonic()
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            number += 1
            for sock in (client, server):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.accepted.append(accepted)
                self._sockets += [client, server]
            log = _RequestLog(self, number)
            done = _Countdown(2, lambda pair=(client, server): self._forget(pair))
            # SYN, SYN-ACK: the client's first bytes leave one round trip after connect()
            outbound = _Direction(self, self.up, client, server, accepted + self.rtt, log.feed, done.tick)
            inbound = _Direction(self, self.down, server, client, accepted, on_done=done.tick)
            threads = outbound.start(f"shaper-{number}-up") + inbound.start(f"shaper-{number}-down")
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()] + threads

    def _forget(self, pair: tuple[socket.socket, socket.socket]) -> None:
        """Both directions delivered their FIN (or failed): the connection is over."""
        with self._lock:
            self._sockets = [s for s in self._sockets if s not in pair]
        for sock in pair:
            sock.close()

    def close(self) -> None:
        self.stopping.set()
        self._listener.close()
        if self._acceptor.is_alive():
            self._acceptor.join(timeout=5)
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for thread in threads:
            thread.join(timeout=5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("upstream", help="host:port to forward to")
    parser.add_argument("--rtt-ms", type=float, default=50.0)
    parser.add_argument("--mbit", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=600.0, help="stop after this long")
    args = parser.parse_args(argv)
    with Shaper(args.upstream, rtt=args.rtt_ms / 1000, mbit=args.mbit) as shaper:
        print(f"{shaper.host} -> {args.upstream}: {args.rtt_ms:g} ms RTT, {args.mbit:g} Mbit/s, "
              f"for {args.seconds:g} s", flush=True)
        try:
            shaper.stopping.wait(args.seconds)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
