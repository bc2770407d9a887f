"""Loopback ports for servers the tests start and for addresses where nobody may listen.

A port probed with ``bind(0)`` and closed again is only a guess: until the server binds
it, any process on the machine (another test run, an outgoing connection's source port)
may take it. So a server that must be told its port is started with ``free_port()`` and
started again on a fresh one when it says the port was taken; in-process servers bind
port 0 themselves and read the port back. An address that must refuse connections is a
``refusing_port()``, held for as long as the test needs it.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

__all__ = ["free_port", "refusing_port"]


def free_port() -> int:
    """A port that was free a moment ago; only for a server started again when it is taken."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port that refuses connections while the block runs.

    The port is bound but never listened on: the kernel answers a connection attempt with
    a reset, and no other process can bind the port and start answering meanwhile.
    """
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]
