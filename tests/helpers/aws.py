"""AWS on loopback: moto's threaded server, seen through one fault proxy per API.

STS and ECR each get a FaultProxy in front of the same moto server, so a test can
count the calls of each API (``calls("CreateRepository")``) and make one of them fail
(``ecr.arm(Fault(...))``) while the other keeps answering. botocore clients talk to
moto directly, for what the test itself sets up or checks (IAM roles, repositories).

moto is a test-only dependency (requirements-dev.txt): without it the tests that use
this helper skip locally and fail under CI=true.
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs

from tests.helpers.binaries import require_module
from tests.helpers.fakeserver import FakeServer
from tests.helpers.faultproxy import FaultProxy

__all__ = ["ACCOUNT", "ECR_CREDENTIALS", "REGION", "ROLE_ARN", "Aws", "PodIdentityAgent", "web_identity_token", "sts_error_body",
           "ecr_error_body"]

#: moto's default account, which its ECR tokens name: ``AWS:<account>-auth-token``
ACCOUNT = "123456789012"
REGION = "eu-west-1"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/imgrep-replicator"
#: the registry user and password GetAuthorizationToken answers with in moto
ECR_CREDENTIALS = ("AWS", f"{ACCOUNT}-auth-token")


def web_identity_token(path: Path, subject: str = "system:serviceaccount:image-replicator:image-replicator") -> Path:
    """A projected service-account token as the kubelet writes it (STS in moto does not check it)."""
    header = "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ"
    claims = json.dumps({"aud": ["sts.amazonaws.com"], "sub": subject, "iss": "https://oidc.eks.test"})
    path.write_text(f"{header}.{base64.urlsafe_b64encode(claims.encode()).decode().rstrip('=')}.c2lnbmF0dXJl\n")
    return path


def sts_error_body(code: str, message: str) -> bytes:
    """An STS query-API error, as STS answers AssumeRoleWithWebIdentity with 403/400."""
    return (f'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
            f"<Code>{code}</Code><Message>{message}</Message></Error><RequestId>c6104cbe</RequestId>"
            f"</ErrorResponse>").encode()


def ecr_error_body(code: str, message: str) -> bytes:
    return json.dumps({"__type": code, "message": message}).encode()


class PodIdentityAgent(FakeServer):
    """EKS Pod Identity's agent: ``GET /v1/credentials`` with the pod's token as ``Authorization``."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token
        self.requests: list[dict[str, str]] = []

    def handle(self, handler) -> None:
        with self.lock:
            self.requests.append(dict(handler.headers.items()))
        if handler.headers.get("Authorization") != self.token:
            return self.reply_json(handler, 400, {"code": "InvalidTokenException", "message": "Invalid token"})
        self.reply_json(handler, 200, {"AccessKeyId": "ASIAPODIDENTITY", "SecretAccessKey": "pod-secret",
                                       "Token": "pod-session", "AccountId": ACCOUNT,
                                       "Expiration": "2099-01-01T00:00:00Z"})


class Aws:
    """``with Aws() as aws``: moto on 127.0.0.1:0 with an STS and an ECR proxy; all stopped afterwards."""

    def __init__(self) -> None:
        require_module("moto", "moto[server]")
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access line per call otherwise
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.sts: FaultProxy | None = None
        self.ecr: FaultProxy | None = None
        self.url = ""

    def __enter__(self) -> Aws:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        self.sts = FaultProxy(f"{host}:{port}").__enter__()
        self.ecr = FaultProxy(f"{host}:{port}").__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for proxy in (self.sts, self.ecr):
            if proxy is not None:
                proxy.__exit__(None, None, None)
        self.enforce_iam(None)
        self._server.stop()

    # what imgrep is configured with ------------------------------------------------

    @property
    def sts_url(self) -> str:
        return f"http://{self.sts.host}"

    @property
    def ecr_url(self) -> str:
        return f"http://{self.ecr.host}"

    def environment(self, token_file: Path, registry_host: str) -> dict[str, str]:
        """IRSA's variables (what EKS injects), the endpoint overrides, and ``registry_host`` as an ECR registry."""
        return {
            "AWS_ROLE_ARN": ROLE_ARN,
            "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file),
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL_STS": self.sts_url,
            "AWS_ENDPOINT_URL_ECR": self.ecr_url,
            "REGISTRY_PROVIDERS": f"{registry_host}=ecr",
        }

    # what tests check --------------------------------------------------------------

    def calls(self, action: str) -> int:
        """How many times an API action reached the proxies (X-Amz-Target or the form's Action)."""
        count = 0
        for proxy in (self.sts, self.ecr):
            with proxy._lock:
                seen = list(proxy.seen)
            for _method, _path, headers, body in seen:
                target = {k.lower(): v for k, v in headers.items()}.get("x-amz-target", "")
                form = parse_qs(body.decode("utf-8", "replace")) if not target else {}
                if target.endswith("." + action) or form.get("Action", [""])[0] == action:
                    count += 1
        return count

    def requests(self, proxy: FaultProxy) -> list[tuple[str, str, dict[str, str], bytes]]:
        with proxy._lock:
            return list(proxy.seen)

    def client(self, service: str):
        """A botocore client straight to moto, for setting up and checking."""
        import botocore.session

        return botocore.session.get_session().create_client(
            service, region_name=REGION, endpoint_url=self.url, aws_access_key_id="AKIDSETUP",
            aws_secret_access_key="setup-secret")

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"), timeout=10).read()
        for proxy in (self.sts, self.ecr):
            proxy.arm(None)
            with proxy._lock:
                proxy.seen.clear()

    def enforce_iam(self, free_actions: int | None) -> None:
        """From now on moto checks signatures and IAM policies, after ``free_actions`` unchecked ones
        (None: never checks again, moto's default)."""
        value = "inf" if free_actions is None else str(free_actions)
        if self.url:
            request = urllib.request.Request(f"{self.url}/moto-api/reset-auth", data=value.encode(), method="POST",
                                             headers={"Content-Type": "text/plain"})  # a form would hide the body
            urllib.request.urlopen(request, timeout=10).read()
