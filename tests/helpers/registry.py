"""A real registry (Debian's ``docker-registry``, CNCF distribution 2.8) on loopback for one test run.

Integration tests talk to the real server rather than a fake so that protocol
details (challenges, upload sessions, digests, media types) are the registry's,
not our guess of them. The registry's access log is parsed so tests can count
exactly which requests a client made between two points.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tests.helpers.binaries import require_binary
from tests.helpers.ports import free_port
from tests.helpers.tokenserver import TokenServer

__all__ = ["AccessEntry", "RegistryServer", "parse_access_line"]

#: How long a starting registry may take to answer GET /v2/.
STARTUP_TIMEOUT_SECONDS = 10.0
#: How long stop() waits after SIGTERM before SIGKILL.
STOP_TIMEOUT_SECONDS = 5.0
#: How long a log sync waits for the registry to write its access line.
SYNC_TIMEOUT_SECONDS = 5.0
#: Another process may take a just-probed free port; that many fresh ports are tried.
PORT_ATTEMPTS = 3
#: restart() keeps its port; while another socket holds it (an outgoing connection's source
#: port, for one), it tries again this often, this long apart
RESTART_ATTEMPTS = 10
RESTART_PAUSE_SECONDS = 0.5

#: Query marker of the harness's own probes, left out of requests().
_PROBE_MARKER = "imgrep-harness-probe="

#: Apache combined log format, as distribution writes it through gorilla/handlers:
#: 127.0.0.1 - - [23/Nov/2026:23:28:03 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"
_ACCESS_LINE = re.compile(
    r'^(?P<remote>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] '
    r'"(?P<method>[A-Z]+) (?P<uri>\S+) [^"]*" (?P<status>\d{3}) (?P<size>\d+|-) '
    r'"(?P<referer>[^"]*)" "(?P<agent>[^"]*)"$'
)


@dataclass(frozen=True)
class AccessEntry:
    """One request as the registry logged it."""

    method: str
    uri: str  # as requested, with the query string
    status: int
    size: int  # response body bytes
    user_agent: str

    @property
    def path(self) -> str:
        return urlsplit(self.uri).path


def parse_access_line(line: str) -> AccessEntry | None:
    """The request of a combined-format access line; None for the registry's other log lines."""
    match = _ACCESS_LINE.match(line)
    if match is None:
        return None
    size = match["size"]
    return AccessEntry(
        method=match["method"],
        uri=match["uri"],
        status=int(match["status"]),
        size=0 if size == "-" else int(size),
        user_agent=match["agent"],
    )


def _registry_environment() -> dict[str, str]:
    """The environment without REGISTRY_* variables: the registry reads them as config overrides,
    and imgrep's own REGISTRY_<NAME>_URL settings would otherwise break it."""
    return {name: value for name, value in os.environ.items() if not name.startswith("REGISTRY_")}


class RegistryServer:
    """``docker-registry serve`` on 127.0.0.1; a context manager (or start()/stop()).

    ``auth`` is "none", "basic" (a bcrypt htpasswd file for ``username``/``password``)
    or "token" (trusting ``token_server``; ``username``/``password`` default to that
    server's pushing user). ``credentials`` is what test helpers push with.
    """

    def __init__(
        self,
        auth: str = "none",
        *,
        token_server: TokenServer | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        if auth not in ("none", "basic", "token"):
            raise ValueError(f"unknown auth mode {auth!r}")
        if (auth == "token") != (token_server is not None):
            raise ValueError("a token_server is needed exactly when auth='token'")
        if auth == "token" and username is None:
            username, password = token_server.credentials
        elif auth == "basic":
            username = username or "tester"
            password = password or f"pw-{secrets.token_hex(8)}"
        self.auth = auth
        self.token_server = token_server
        self.username = username
        self.password = password
        self.port = 0
        self.directory: Path | None = None
        self.log_path: Path | None = None
        self._process: subprocess.Popen | None = None
        self._log_offset = 0
        self._log_partial = b""
        self._entries: list[AccessEntry] = []
        self._probe_numbers = itertools.count()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def credentials(self) -> tuple[str, str] | None:
        return None if self.auth == "none" else (self.username, self.password)

    # lifecycle ------------------------------------------------------------------

    def start(self) -> RegistryServer:
        binary = require_binary("docker-registry")
        self.directory = Path(tempfile.mkdtemp(prefix="registry-"))
        self.log_path = self.directory / "registry.log"
        try:
            auth_config = self._auth_config()
            for _attempt in range(PORT_ATTEMPTS):
                self.port = free_port()
                self._write_config(auth_config)
                if self._launch(binary):
                    return self
            raise RuntimeError(f"docker-registry found no free port in {PORT_ATTEMPTS} attempts")
        except BaseException:
            self.stop()
            raise

    def restart(self) -> None:
        """Stop the process and start it again on the same port with the same storage (fault tests)."""
        self._terminate()
        for _attempt in range(RESTART_ATTEMPTS):
            if self._launch(require_binary("docker-registry")):
                return
            time.sleep(RESTART_PAUSE_SECONDS)
        raise RuntimeError(f"port {self.port} stayed taken while the registry restarted")

    def kill(self) -> None:
        """SIGKILL the process mid-whatever, keeping storage and port; restart() brings it back."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=STOP_TIMEOUT_SECONDS)
            self._process = None

    def stop(self) -> None:
        self._terminate()
        if self.directory is not None:
            shutil.rmtree(self.directory)
            self.directory = None

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _auth_config(self) -> dict:
        if self.auth == "basic":
            htpasswd = require_binary("htpasswd")
            done = subprocess.run(
                [htpasswd, "-Bbn", self.username, self.password], capture_output=True, timeout=30, check=True
            )
            (self.directory / "htpasswd").write_bytes(done.stdout)
            return {"htpasswd": {"realm": "imgrep-test", "path": str(self.directory / "htpasswd")}}
        if self.auth == "token":
            return {"token": self.token_server.registry_auth_config()}
        return {}

    def _write_config(self, auth: dict) -> None:
        config = {
            "version": "0.1",
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.directory / "storage")},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": self.host, "secret": secrets.token_hex(16)},
        }
        if auth:
            config["auth"] = auth
        # YAML is a superset of JSON, so the standard library can write the config.
        (self.directory / "config.yml").write_text(json.dumps(config, indent=2))

    def _launch(self, binary: str) -> bool:
        """Start the process and wait for GET /v2/; False when its port was taken by someone else."""
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [binary, "serve", str(self.directory / "config.yml")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_registry_environment(),
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                with open(self.log_path, "rb") as log:
                    log.seek(log_start)
                    output = log.read().decode(errors="replace")
                if "address already in use" in output:
                    return False
                raise RuntimeError(f"docker-registry exited at start:\n{output[-4000:]}")
            # Our own log line proves it was this process that answered, not a stranger on the port.
            if self._sync(timeout=1.0):
                return True
            time.sleep(0.05)
        self._terminate()
        raise TimeoutError(f"docker-registry did not answer GET /v2/ within {STARTUP_TIMEOUT_SECONDS} s")

    def _probe(self) -> str | None:
        """GET /v2/ with a marker the access-log reader skips; the marker, or None if nothing answered."""
        marker = f"{_PROBE_MARKER}{next(self._probe_numbers)}"
        connection = http.client.HTTPConnection(self.host, timeout=2)
        try:
            connection.request("GET", f"/v2/?{marker}")
            connection.getresponse().read()
        except OSError:
            return None
        finally:
            connection.close()
        return marker

    def _terminate(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=STOP_TIMEOUT_SECONDS)
        self._process = None

    # access log -------------------------------------------------------------------

    def requests(self) -> list[AccessEntry]:
        """Every request the registry has answered so far (the harness's own probes left out)."""
        self._require_sync()
        return list(self._entries)

    def mark(self) -> int:
        """A point in the access log; pass it to requests_since()."""
        self._require_sync()
        return len(self._entries)

    def requests_since(self, mark: int) -> list[AccessEntry]:
        """The requests answered after mark() returned ``mark``."""
        return self.requests()[mark:]

    def _require_sync(self) -> None:
        if not self._sync(timeout=SYNC_TIMEOUT_SECONDS):
            raise RuntimeError(f"registry at {self.host} did not answer and log a probe in {SYNC_TIMEOUT_SECONDS} s")

    def _sync(self, *, timeout: float) -> bool:
        """Probe, and read the log up to the probe's line; False if that does not happen in time.

        The registry writes an access line after it has sent the response, so a client
        may see an answer before its line exists; a probe answered later than every
        earlier request makes the log complete up to that point.
        """
        marker = self._probe()
        if marker is None:
            return False
        deadline = time.monotonic() + timeout
        while not self._read_log_until(marker):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def _read_log_until(self, marker: str) -> bool:
        """Parse new complete log lines; True once the line of probe ``marker`` was among them."""
        with open(self.log_path, "rb") as log:
            log.seek(self._log_offset)
            data = log.read()
        self._log_offset += len(data)
        *lines, self._log_partial = (self._log_partial + data).split(b"\n")
        seen = False
        for line in lines:
            entry = parse_access_line(line.decode("utf-8", errors="replace"))
            if entry is None:
                continue
            if _PROBE_MARKER in entry.uri:
                seen = seen or marker in urlsplit(entry.uri).query.split("&")
                continue
            self._entries.append(entry)
        return seen
