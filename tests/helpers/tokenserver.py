"""A tiny Docker token-auth server: the realm a registry in ``auth: token`` mode sends clients to.

It speaks the two token endpoints of the distribution token spec over plain HTTP
on loopback: ``GET /token`` (Basic credentials, or anonymous pull when enabled) and
the OAuth2 form ``POST /token`` (grant_type=password | refresh_token). Tokens are
RS256 JWTs signed by ``openssl dgst`` and named by the libtrust key id, which is
how the registry finds the key in its ``rootcertbundle``. Every request is
recorded so tests can assert how often a client asked for a token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import http.server
import json
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from tests.helpers.certs import make_self_signed, run_openssl

__all__ = [
    "PUSHER",
    "READER",
    "SigningKey",
    "TokenRequest",
    "TokenServer",
    "libtrust_key_id",
    "read_jwt",
]

#: (username, password) of the default user allowed to pull, push and delete.
PUSHER = ("pusher", "pusher-secret")
#: (username, password) of the default user allowed only to pull.
READER = ("reader", "reader-secret")

_DEFAULT_USERS = {
    PUSHER[0]: (PUSHER[1], ("pull", "push", "delete")),
    READER[0]: (READER[1], ("pull",)),
}
#: Token requests are tiny; a larger form body is a client bug, not data.
_MAX_FORM_BYTES = 64 * 1024
#: Idle keep-alive connections must not hold a handler thread for ever.
_SOCKET_TIMEOUT_SECONDS = 10


def libtrust_key_id(spki_der: bytes) -> str:
    """The key id the registry looks up: base32 of sha256(SPKI)[:30], groups of 4 joined by ':'."""
    encoded = base64.b32encode(hashlib.sha256(spki_der).digest()[:30]).decode("ascii").rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def read_jwt(token: str) -> tuple[dict, dict]:
    """(header, claims) of a JWT, without checking the signature: for assertions on what was granted."""
    header, claims, _signature = token.split(".")
    return json.loads(_b64url_decode(header)), json.loads(_b64url_decode(claims))


class SigningKey:
    """An RSA key with a self-signed certificate; that certificate alone is the registry's rootcertbundle."""

    def __init__(self, directory: Path, name: str = "token-signer") -> None:
        self.cert_path, self.key_path = make_self_signed(Path(directory), name, common_name=name)
        self.kid = libtrust_key_id(run_openssl("pkey", "-in", self.key_path, "-pubout", "-outform", "DER"))

    def sign(self, data: bytes) -> bytes:
        """RSASSA-PKCS1-v1_5 over SHA-256: the RS256 signature."""
        return run_openssl("dgst", "-sha256", "-sign", self.key_path, stdin=data)


@dataclass(frozen=True)
class TokenRequest:
    """One request the token server answered, as a test wants to count it."""

    method: str
    grant: str  # "basic", "anonymous", "password", "refresh_token", or "" when refused early
    user: str | None
    service: str | None
    scopes: tuple[str, ...]
    status: int


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class TokenServer:
    """Issues registry tokens to configured users; use as a context manager (or start()/stop()).

    ``users`` maps username -> (password, actions the user may be granted on any
    repository). A token grants the intersection of what was asked and what the
    user may do; anonymous requests get ``pull`` only, and only with ``anonymous_pull``.
    """

    def __init__(
        self,
        users: Mapping[str, tuple[str, Iterable[str]]] | None = None,
        *,
        anonymous_pull: bool = False,
        expires_in: int = 300,
        service: str = "imgrep-test-registry",
        issuer: str = "imgrep-test-token-issuer",
    ) -> None:
        users = _DEFAULT_USERS if users is None else users
        self.users = {name: (password, frozenset(actions)) for name, (password, actions) in users.items()}
        self.anonymous_pull = anonymous_pull
        self.expires_in = expires_in
        self.service = service
        self.issuer = issuer
        self.key: SigningKey | None = None
        self.url = ""
        self._directory: Path | None = None
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._requests: list[TokenRequest] = []
        self._refresh_tokens: dict[str, str] = {}

    # lifecycle -------------------------------------------------------------

    def start(self) -> TokenServer:
        self._directory = Path(tempfile.mkdtemp(prefix="token-server-"))
        try:
            self.key = SigningKey(self._directory)
            self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        except BaseException:
            shutil.rmtree(self._directory)
            raise
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None
        if self._directory is not None:
            shutil.rmtree(self._directory)
            self._directory = None

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # what tests and the registry need ----------------------------------------

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    @property
    def credentials(self) -> tuple[str, str]:
        """(username, password) of the first user allowed to push: what the harness pushes with."""
        for name, (password, actions) in self.users.items():
            if "push" in actions:
                return name, password
        raise LookupError("no configured user may push")

    @property
    def requests(self) -> list[TokenRequest]:
        """A snapshot of every request answered so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def registry_auth_config(self) -> dict:
        """The registry config's ``auth.token`` section that trusts this server."""
        return {
            "realm": self.realm,
            "service": self.service,
            "issuer": self.issuer,
            "rootcertbundle": str(self.key.cert_path),
        }

    def mint(
        self,
        subject: str,
        access: list[dict],
        *,
        key: SigningKey | None = None,
        kid: str | None = None,
        expires_in: int | None = None,
    ) -> str:
        """A signed JWT for ``access`` ([{type, name, actions}]).

        ``key``/``kid`` let a test sign with a foreign key while naming the trusted
        one, to prove the registry checks signatures and not just key ids.
        """
        key = key or self.key
        now = int(time.time())
        lifetime = self.expires_in if expires_in is None else expires_in
        header = {"typ": "JWT", "alg": "RS256", "kid": kid or key.kid}
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + lifetime,
            "nbf": now - 1,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        signing_input = f"{_b64url(_compact_json(header))}.{_b64url(_compact_json(claims))}"
        return f"{signing_input}.{_b64url(key.sign(signing_input.encode('ascii')))}"

    # request handling (called from handler threads) -----------------------------

    def _record(self, entry: TokenRequest) -> None:
        with self._lock:
            self._requests.append(entry)

    def _grant(self, user: str | None, scopes: Iterable[str]) -> list[dict]:
        allowed = self.users[user][1] if user is not None else frozenset({"pull"})
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name:
                continue
            granted = [action for action in actions.split(",") if action in allowed]
            if granted:
                access.append({"type": "repository", "name": name, "actions": granted})
        return access

    def _check_password(self, user: str, password: str) -> str:
        entry = self.users.get(user)
        if entry is None or not secrets.compare_digest(entry[0].encode(), password.encode()):
            raise _Refused(401, "invalid username or password")
        return user

    def _issue(self, user: str | None, scopes: tuple[str, ...], *, offline: bool) -> dict:
        token = self.mint(user or "", self._grant(user, scopes))
        body = {
            "token": token,
            "access_token": token,
            "expires_in": self.expires_in,
            "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "scope": " ".join(scopes),
        }
        if offline and user is not None:
            refresh_token = secrets.token_urlsafe(24)
            with self._lock:
                self._refresh_tokens[refresh_token] = user
            body["refresh_token"] = refresh_token
        return body

    def _answer_get(self, query: dict[str, list[str]], authorization: str | None) -> tuple[str, str | None, dict]:
        scopes = _scopes(query.get("scope", []))
        offline = query.get("offline_token", [""])[0] == "true"
        if authorization is None:
            if not self.anonymous_pull:
                raise _Refused(401, "authentication required")
            return "anonymous", None, self._issue(None, scopes, offline=False)
        user, password = _basic_credentials(authorization)
        return "basic", user, self._issue(self._check_password(user, password), scopes, offline=offline)

    def _answer_post(self, form: dict[str, list[str]]) -> tuple[str, str | None, dict]:
        def field(name: str) -> str:
            return form.get(name, [""])[0]

        grant = field("grant_type")
        if not field("client_id"):
            raise _Refused(400, "client_id is required")
        scopes = _scopes(form.get("scope", []))
        if grant == "password":
            user = self._check_password(field("username"), field("password"))
            return grant, user, self._issue(user, scopes, offline=field("access_type") == "offline")
        if grant == "refresh_token":
            refresh_token = field("refresh_token")
            with self._lock:
                user = self._refresh_tokens.get(refresh_token)
            if user is None:
                raise _Refused(401, "unknown refresh token")
            body = self._issue(user, scopes, offline=False)
            body["refresh_token"] = refresh_token
            return grant, user, body
        raise _Refused(400, f"unsupported grant_type {grant!r}")


def _compact_json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _scopes(values: list[str]) -> tuple[str, ...]:
    """Scopes may come as repeated parameters or space-separated in one (OAuth2 form)."""
    return tuple(scope for value in values for scope in value.split() if scope)


def _basic_credentials(authorization: str) -> tuple[str, str]:
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        raise _Refused(401, f"unsupported authorization scheme {scheme!r}")
    try:
        user, separator, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise _Refused(400, "malformed Basic credentials") from None
    if not separator:
        raise _Refused(400, "malformed Basic credentials")
    return user, password


def _handler_for(server: TokenServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = _SOCKET_TIMEOUT_SECONDS
        # Headers and body leave in one send: no Nagle + delayed-ACK stall per request.
        disable_nagle_algorithm = True
        wbufsize = -1

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query, keep_blank_values=True)
            self._serve(url.path, query, lambda: server._answer_get(query, self.headers.get("Authorization")))

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            if length > _MAX_FORM_BYTES:
                self.close_connection = True
                self._send(413, {"errors": [{"code": "TOO_LARGE", "message": "form too large"}]})
                return
            form = parse_qs(self.rfile.read(length).decode("utf-8", errors="replace"), keep_blank_values=True)
            self._serve(url.path, form, lambda: server._answer_post(form))

        def _serve(self, path: str, params: dict[str, list[str]], answer: Callable[[], tuple]) -> None:
            grant, user = "", None
            try:
                if path != "/token":
                    raise _Refused(404, "not found")
                if params.get("service", [server.service])[0] != server.service:
                    raise _Refused(400, "unknown service")
                grant, user, body = answer()
                status = 200
            except _Refused as refused:
                status = refused.status
                body = {"errors": [{"code": "DENIED" if status != 401 else "UNAUTHORIZED", "message": str(refused)}]}
            server._record(
                TokenRequest(
                    method=self.command,
                    grant=grant,
                    user=user,
                    service=params.get("service", [None])[0],
                    scopes=_scopes(params.get("scope", [])),
                    status=status,
                )
            )
            self._send(status, body)

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="imgrep test token server"')
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: tests read self.requests instead of stderr noise."""

    return Handler
