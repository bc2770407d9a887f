"""A fake GKE metadata server: the token endpoint as Google documents it, on loopback.

``GET /computeMetadata/v1/instance/service-accounts/default/token`` answers
``{"access_token", "expires_in", "token_type": "Bearer"}`` with the response header
``Metadata-Flavor: Google``. Like the real one it refuses a request without
``Metadata-Flavor: Google`` (403) and one carrying ``X-Forwarded-For`` (403, it came
through a proxy), and answers unknown paths with 404 in plain text. Tokens rotate:
each call may hand out the next one in ``tokens``. ``fail(status, body)`` makes the
next answers errors, as when Workload Identity is not set up for the pod.
"""

from __future__ import annotations

from tests.helpers.fakeserver import FakeServer

__all__ = ["MetadataServer", "TOKEN_PATH"]

TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"


class MetadataServer(FakeServer):
    def __init__(self, tokens: tuple[str, ...] = ("ya29.gke-token-1",), expires_in: int = 3599, *,
                 flavor: bool = True) -> None:
        """``flavor=False`` plays something else on the address: the same answers without ``Metadata-Flavor``."""
        super().__init__()
        self.flavor = flavor
        self.tokens = list(tokens)
        self.expires_in = expires_in
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.failure: tuple[int, bytes] | None = None
        self.redirect_to: str | None = None
        self._served = 0

    def handle(self, handler) -> None:
        with self.lock:
            self.requests.append((handler.command, handler.path, dict(handler.headers.items())))
        status, content_type, body, headers = self._answer(handler.path, handler.headers)
        self.reply(handler, status, content_type, body, headers)

    def _answer(self, path: str, headers) -> tuple[int, str, bytes, list[tuple[str, str]]]:
        flavor = [("Metadata-Flavor", "Google")] if self.flavor else []
        if headers.get("X-Forwarded-For"):
            return 403, "text/html", b"Your client does not have permission to get URL. " \
                                     b"Request had an X-Forwarded-For header.", flavor
        if headers.get("Metadata-Flavor") != "Google":
            return 403, "text/html", b"Your client does not have permission to get URL " \
                                     b"from this server. Missing Metadata-Flavor:Google header.", flavor
        if self.redirect_to:
            return 302, "text/html", b"", flavor + [("Location", self.redirect_to)]
        if path.split("?")[0] != TOKEN_PATH:
            return 404, "text/html", b"Not Found", flavor
        with self.lock:
            if self.failure:
                status, body = self.failure
                return status, "text/plain", body, flavor
            token = self.tokens[min(self._served, len(self.tokens) - 1)]
            self._served += 1
        body = ('{"access_token":"%s","expires_in":%d,"token_type":"Bearer"}' % (token, self.expires_in)).encode()
        return 200, "application/json", body, flavor

    def fail(self, status: int, body: bytes) -> None:
        with self.lock:
            self.failure = (status, body)

    def token_requests(self) -> int:
        with self.lock:
            return sum(1 for _, path, _ in self.requests if path.startswith(TOKEN_PATH))
