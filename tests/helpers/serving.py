"""``imgrep serve`` as a child process on fresh loopback ports, ready when start_serving returns."""

from __future__ import annotations

import http.client
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.ports import free_port

__all__ = ["Serving", "start_serving", "stop_process"]

#: a port can be taken between probing and binding; start again on fresh ones
START_ATTEMPTS = 3
#: a webhook that is not ready by then will not be
READY_TIMEOUT_SECONDS = 15.0
#: SIGTERM → exit, including SHUTDOWN_DELAY_SECONDS
STOP_TIMEOUT_SECONDS = 10.0

#: the line imgrep logs once both listeners are bound, in text and in JSON format
_STARTED = re.compile(r'^\S+ INFO started( |$)|"event":"started"', re.MULTILINE)


@dataclass(frozen=True)
class Serving:
    process: subprocess.Popen
    port: int
    health_port: int


def start_serving(command: list[str], env: dict[str, str], *, cwd: Path, output: Path,
                  ready_timeout: float = READY_TIMEOUT_SECONDS) -> Serving:
    """Run ``command`` with PORT and HEALTH_PORT set to fresh ports, its output in ``output``.

    Ready means the process itself logged ``started`` and /readyz answers 200: an answer
    alone could come from a stranger that took the health port first. A port taken between
    probing and binding makes imgrep exit saying "cannot listen"; it is then started again
    on fresh ports, with ``output`` started afresh too.
    """
    said = ""
    for _attempt in range(START_ATTEMPTS):
        port, health_port = free_port(), free_port()
        with open(output, "wb") as sink:
            process = subprocess.Popen(command, cwd=cwd, env={**env, "PORT": str(port), "HEALTH_PORT": str(health_port)},
                                       stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + ready_timeout
        while True:
            exited = process.poll() is not None
            said = output.read_text(errors="replace")
            if exited and "cannot listen" in said:
                break
            if exited:
                raise RuntimeError(f"imgrep exited {process.returncode} at start:\n{said[-4000:]}")
            if _STARTED.search(said) and _ready(health_port):
                return Serving(process, port, health_port)
            if time.monotonic() >= deadline:
                stop_process(process)
                raise TimeoutError(f"imgrep was not ready in {ready_timeout} s:\n{said[-4000:]}")
            time.sleep(0.05)
    raise RuntimeError(f"imgrep found no free ports in {START_ATTEMPTS} attempts:\n{said[-2000:]}")


def _ready(health_port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", health_port, timeout=5)
    try:
        connection.request("GET", "/readyz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def stop_process(process: subprocess.Popen, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    """SIGTERM, and SIGKILL if it has not exited after ``timeout``."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)
