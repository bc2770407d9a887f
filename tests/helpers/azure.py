"""Fake Entra ID and a fake ACR front, following each documented protocol, on loopback.

* :class:`Entra`: ``POST /{tenant}/oauth2/v2.0/token``, the client-credentials grant
  with a federated client assertion. Each form field is checked as Entra does, and
  refusals are Entra's JSON (``error``, ``error_description`` starting with the
  AADSTS code, ``error_codes``). Tokens live ``expires_in`` seconds.
* :class:`Acr`: in front of a real docker-registry in token-auth mode, it serves ACR's
  ``POST /oauth2/exchange`` (grant_type=access_token, service, tenant, access_token →
  ``{"refresh_token"}``, a JWT with ``exp``) and ``POST /oauth2/token``
  (grant_type=refresh_token → ``{"access_token"}``, signed for the registry), and
  passes everything else through to the registry. ``GET /oauth2/token`` with Basic
  credentials also works, for the harness's own pushes.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from urllib.parse import urlsplit

from tests.helpers.fakeserver import FakeServer
from tests.helpers.forwarding import forward
from tests.helpers.tokenserver import TokenServer

__all__ = ["Entra", "Acr", "ASSERTION_TYPE", "ACR_SCOPE"]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ACR_SCOPE = "https://containerregistry.azure.net/.default"


def _jwt(claims: dict) -> str:
    encode = lambda data: base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")  # noqa: E731
    return f"{encode({'alg': 'RS256', 'typ': 'JWT'})}.{encode(claims)}.{encode({'sig': secrets.token_hex(8)})}"


class Entra(FakeServer):
    """The Microsoft identity platform's token endpoint for one app registration's federated credential."""

    def __init__(self, tenant: str, client_id: str, assertion: str, expires_in: int = 3599) -> None:
        super().__init__()
        self.tenant, self.client_id, self.assertion, self.expires_in = tenant, client_id, assertion, expires_in
        self.issued: set[str] = set()
        self.requests: list[dict[str, str]] = []

    def _refuse(self, handler, status: int, error: str, code: int, description: str) -> None:
        self.reply_json(handler, status, {"error": error, "error_description": f"AADSTS{code}: {description}\r\n"
                                     f"Trace ID: {secrets.token_hex(8)}\r\nTimestamp: 2026-12-01 09:00:00Z",
                                     "error_codes": [code], "timestamp": "2026-12-01 09:00:00Z"})

    def handle(self, handler) -> None:
        path = urlsplit(handler.path).path
        if handler.command != "POST" or path != f"/{self.tenant}/oauth2/v2.0/token":
            return self._refuse(handler, 404, "invalid_request", 90002, f"Tenant or path '{path}' not found.")
        form = self.form(handler)
        with self.lock:
            self.requests.append(form)
        if form.get("grant_type") != "client_credentials":
            return self._refuse(handler, 400, "unsupported_grant_type", 70003, "The app requested an unsupported "
                                "grant type.")
        if form.get("client_id") != self.client_id:
            return self._refuse(handler, 400, "unauthorized_client", 700016, f"Application with identifier "
                                f"'{form.get('client_id')}' was not found in the directory.")
        if form.get("client_assertion_type") != ASSERTION_TYPE or form.get("client_assertion") != self.assertion:
            return self._refuse(handler, 401, "invalid_client", 70021, "No matching federated identity record "
                                "found for presented assertion.")
        if form.get("scope") != ACR_SCOPE:
            return self._refuse(handler, 400, "invalid_scope", 1002012, "The provided value for scope is not valid.")
        token = _jwt({"aud": "https://containerregistry.azure.net", "tid": self.tenant, "appid": self.client_id,
                      "exp": int(time.time()) + self.expires_in})
        with self.lock:
            self.issued.add(token)
        self.reply_json(handler, 200, {"token_type": "Bearer", "expires_in": self.expires_in,
                                  "ext_expires_in": self.expires_in, "access_token": token})


class _AcrTokens(TokenServer):
    """The TokenServer's keys and minting, with the registry's realm at the ACR front."""

    realm_url = ""

    @property
    def realm(self) -> str:
        return self.realm_url


class Acr(FakeServer):
    """An ACR registry: ``/oauth2/exchange`` and ``/oauth2/token`` here, ``/v2/`` from a docker-registry behind."""

    def __init__(self, entra: Entra, refresh_lifetime: int = 3 * 3600) -> None:
        super().__init__()
        self.entra = entra
        self.refresh_lifetime = refresh_lifetime
        self.tokens = _AcrTokens(service=self.host)
        self.tokens.realm_url = f"{self.url}/oauth2/token"
        self.upstream = ""
        self.refresh_tokens: set[str] = set()
        self.exchanges: list[dict[str, str]] = []
        self.token_requests: list[dict[str, str]] = []

    def __enter__(self) -> Acr:
        self.tokens.start()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.tokens.stop()

    def handle(self, handler) -> None:
        parts = urlsplit(handler.path)
        if parts.path == "/oauth2/exchange" and handler.command == "POST":
            return self._exchange(handler)
        if parts.path == "/oauth2/token" and handler.command == "POST":
            return self._token(handler)
        if parts.path == "/oauth2/token":  # the harness's Basic pushes: the token server proper
            query = f"?{parts.query}" if parts.query else ""
            return forward(handler, urlsplit(self.tokens.url).netloc, "/token" + query, timeout=30)
        return forward(handler, self.upstream, timeout=30)

    def _errors(self, handler, status: int, code: str, message: str) -> None:
        self.reply_json(handler, status, {"errors": [{"code": code, "message": message}]})

    def _exchange(self, handler) -> None:
        form = self.form(handler)
        with self.lock:
            self.exchanges.append(form)
        if form.get("grant_type") != "access_token":
            return self._errors(handler, 400, "UNSUPPORTED", "grant_type must be access_token")
        if form.get("service") != self.host:
            return self._errors(handler, 400, "INVALID_SERVICE", f"service {form.get('service')!r} is not this registry")
        if form.get("tenant") != self.entra.tenant or form.get("access_token") not in self.entra.issued:
            return self._errors(handler, 401, "UNAUTHORIZED", "invalid access token or tenant")
        refresh = _jwt({"sub": "workload", "exp": int(time.time()) + self.refresh_lifetime, "grant_type":
                        "refresh_token", "jti": secrets.token_hex(8)})
        with self.lock:
            self.refresh_tokens.add(refresh)
        self.reply_json(handler, 200, {"refresh_token": refresh})

    def _token(self, handler) -> None:
        form = self.form(handler)
        with self.lock:
            self.token_requests.append(form)
            known = form.get("refresh_token") in self.refresh_tokens
        if form.get("grant_type") != "refresh_token" or not known:
            return self._errors(handler, 401, "UNAUTHORIZED", "invalid refresh token")
        scopes = tuple(form.get("scope", "").split())
        access = self.tokens._grant(self.tokens.credentials[0], scopes)
        self.reply_json(handler, 200, {"access_token": self.tokens.mint("workload", access)})
