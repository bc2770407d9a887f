"""Cloud credential providers: workload identities turned into registry credentials over HTTP.

Each provider does its HTTP through a :class:`Transport` of its own, never the
registries' one, with redirects off: the EKS Pod Identity agent and the GKE metadata
server live on link-local addresses that the registries' transport refuses
(SECURITY.md, "What it reaches"), and only the transport built for that one endpoint
lets its fixed address through. A redirect, an image reference or a token realm
cannot reach them, because none of those ever travels through a provider's transport.

Providers return ``(credential, seconds it lives)``; when to renew is the credential
source's decision (``imgrep.cloud.lease``). Every failure is a CredentialProviderError whose
detail names the provider and the call (``ECR: AssumeRoleWithWebIdentity:
AccessDenied: ...``); temporary ones (network, 5xx, throttling) are retried here with
jittered backoff within the deadline, at most ``RetryPolicy.attempts`` times.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from imgrep.cloud import aws, azure, gcp
from imgrep.cloud.lease import failure_backoff
from imgrep.cloud.selection import ApiRequest, AwsSettings, AzureSettings, EcrRepositorySettings, GcpSettings
from imgrep.cloud.sigv4 import AwsCredentials
from imgrep.errors import CredentialProviderError, ForbiddenRegistry, RegistryUnavailable
from imgrep.oci.credentials import Credential
from imgrep.oci.io.transport import Transport
from imgrep.oci.retry import RETRYABLE_STATUS, RetryPolicy

__all__ = ["Endpoint", "AwsIdentity", "EcrProvider", "GcpProvider", "AzureIdentity", "AcrProvider",
           "EKS_POD_IDENTITY_ADDRESSES", "GKE_METADATA_ADDRESS", "PROVIDER_TIMEOUT", "provider_transport"]

#: the fixed addresses of EKS Pod Identity's agent (IPv4, IPv6) and of the GKE metadata server, port 80
EKS_POD_IDENTITY_ADDRESSES = frozenset({("169.254.170.23", 80), ("fd00:ec2::23", 80)})
GKE_METADATA_ADDRESS = frozenset({("169.254.169.254", 80)})
#: one provider call (with its retries) never takes longer than this, whatever the caller's deadline
PROVIDER_TIMEOUT = 10.0
#: provider answers are small (an XML or JSON document); anything bigger is refused
MAX_ANSWER_BYTES = 64 * 1024
#: temporary AWS/Azure credentials are renewed this long before they expire
CREDENTIAL_MARGIN = 300.0

Answer = tuple[int, object, bytes]  # status, headers, body


def provider_transport(exempt: frozenset[tuple[str, int]] = frozenset(), ca_file: str | None = None) -> Transport:
    """A transport for one provider: per-read timeout of PROVIDER_TIMEOUT, its fixed endpoint let through."""
    return Transport(ca_file=ca_file, timeout=PROVIDER_TIMEOUT, exempt=exempt)


class Endpoint:
    """HTTP for one provider: no redirects, bounded answers, retries of what may pass."""

    def __init__(self, transport: Transport, *, retry: RetryPolicy = RetryPolicy(),
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 jitter: Callable[[], float] = random.random):
        self.transport = transport
        self.retry = retry
        self.clock = clock
        self.sleep = sleep
        self.jitter = jitter

    def call(self, request: ApiRequest, deadline: float, *, what: str,
             error_of: Callable[[int, bytes, object], tuple[str, str]]) -> Answer:
        """Send ``request`` until it succeeds (2xx), fails for good, or retries run out.

        ``what`` is ``ECR: GetAuthorizationToken``; ``error_of(status, body, headers)``
        gives the provider's (code, message) for a failed answer.
        """
        host = urlsplit(request.url).netloc
        deadline = min(deadline, self.clock() + PROVIDER_TIMEOUT)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self.transport.request(request.method, request.url, dict(request.headers), request.body,
                                                  deadline=deadline, follow_redirects=False)
                body = response.read_capped(MAX_ANSWER_BYTES)
            except ForbiddenRegistry as exc:
                raise CredentialProviderError(host, f"{what}: {exc.detail}", temporary=False) from None
            except RegistryUnavailable as exc:
                failure = CredentialProviderError(host, f"{what}: cannot reach {host}: {exc.detail}", temporary=True)
            else:
                if 200 <= response.status < 300:
                    return response.status, response.headers, body
                code, message = error_of(response.status, body, response.headers)
                temporary = response.status in RETRYABLE_STATUS or aws.is_temporary_code(code)
                if 300 <= response.status < 400:
                    message = message or f"redirect to {response.header('Location')[:200]!r} not followed"
                detail = ": ".join(part for part in (what, code, aws.one_line(message)) if part)
                failure = CredentialProviderError(host, detail, temporary=temporary, status=response.status)
                if not temporary:
                    raise failure
            wait = self.retry.delay(attempt, None, self.jitter())
            if wait is None or not self.retry.fits(wait, self.clock(), deadline):
                raise failure
            self.sleep(wait)


def _read_token_file(path: str, what: str, variable: str) -> str:
    """A projected token, read at every renewal: the kubelet rotates the file."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise CredentialProviderError(path, f"{what}: cannot read {variable} {path!r}: {reason}",
                                      temporary=False) from None
    if not token:
        raise CredentialProviderError(path, f"{what}: {variable} {path!r} is empty", temporary=False)
    return token


def _malformed(host: str, what: str, exc: ValueError) -> CredentialProviderError:
    return CredentialProviderError(host, f"{what}: unexpected answer: {exc}", temporary=True)


class AwsIdentity:
    """AWS credentials in the SDKs' order: static keys, IRSA web identity, EKS Pod Identity.

    Temporary credentials are kept until CREDENTIAL_MARGIN before they expire and
    shared by every ECR region.
    """

    def __init__(self, settings: AwsSettings, sts: Endpoint, pod_identity: Endpoint, *,
                 wall_clock: Callable[[], float] = time.time):
        self.settings = settings
        self.sts = sts
        self.pod_identity = pod_identity
        self.wall_clock = wall_clock
        self._cached: AwsCredentials | None = None
        self._lock = threading.Lock()

    @property
    def kind(self) -> str | None:
        return self.settings.identity

    def credentials(self, deadline: float) -> AwsCredentials:
        settings = self.settings
        if settings.identity == "static":
            return AwsCredentials(settings.access_key_id, settings.secret_access_key, settings.session_token)
        with self._lock:
            cached = self._cached
            if cached is not None and (cached.expires_at is None
                                       or self.wall_clock() < cached.expires_at - CREDENTIAL_MARGIN):
                return cached
            self._cached = self._web_identity(deadline) if settings.identity == "web-identity" \
                else self._container(deadline)
            return self._cached

    def _web_identity(self, deadline: float) -> AwsCredentials:
        what = "ECR: AssumeRoleWithWebIdentity"
        settings = self.settings
        token = _read_token_file(settings.web_identity_token_file, what, "AWS_WEB_IDENTITY_TOKEN_FILE")
        request = aws.assume_role_request(aws.sts_endpoint(settings.region, settings.sts_endpoint),
                                          settings.role_arn, settings.role_session_name, token)
        _, _, body = self.sts.call(request, deadline, what=what, error_of=lambda status, body, _: aws.sts_error(body))
        try:
            return aws.parse_assume_role(body)
        except ValueError as exc:
            raise _malformed(urlsplit(request.url).netloc, what, exc) from None

    def _container(self, deadline: float) -> AwsCredentials:
        what = "ECR: EKS Pod Identity"
        settings = self.settings
        token = _read_token_file(settings.container_token_file, what, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
        request = aws.pod_identity_request(settings.container_credentials_uri, token)
        _, _, body = self.pod_identity.call(request, deadline, what=what,
                                            error_of=lambda status, body, _: aws.container_error(body))
        try:
            return aws.parse_container_credentials(body)
        except ValueError as exc:
            raise _malformed(urlsplit(request.url).netloc, what, exc) from None


class EcrProvider:
    """ECR in one region: ``GetAuthorizationToken`` → ``AWS``/password; repositories created before a push."""

    name = "ecr"
    #: repositories remembered as existing (image references can name any number)
    MAX_KNOWN_REPOSITORIES = 4096

    def __init__(self, identity: AwsIdentity, region: str, api: Endpoint, *, endpoint_override: str = "",
                 repositories: EcrRepositorySettings = EcrRepositorySettings(),
                 wall_clock: Callable[[], float] = time.time, clock: Callable[[], float] = time.monotonic,
                 jitter: Callable[[], float] = random.random):
        self.identity = identity
        self.region = region
        self.api = api
        self.endpoint = aws.ecr_endpoint(region, endpoint_override)
        self.repositories = repositories
        self.wall_clock = wall_clock
        self.clock = clock
        self.jitter = jitter
        self._known: set[tuple[str, str]] = set()
        #: (account, repository) → (retry at, the error, failures in a row)
        self._failed: dict[tuple[str, str], tuple[float, CredentialProviderError, int]] = {}
        self._lock = threading.Lock()
        self._ensure_lock = threading.Lock()

    def _call(self, operation: str, payload: dict, deadline: float) -> bytes:
        credentials = self.identity.credentials(deadline)
        request = aws.ecr_request(self.endpoint, self.region, operation, payload, credentials, self.wall_clock())
        _, _, body = self.api.call(request, deadline, what=f"ECR: {operation}",
                                   error_of=lambda status, body, headers: aws.ecr_error(
                                       body, headers.get("x-amzn-ErrorType", "") if headers else ""))
        return body

    def fetch(self, deadline: float) -> tuple[Credential, float]:
        body = self._call("GetAuthorizationToken", {}, deadline)
        try:
            username, password, lifetime = aws.parse_authorization_token(body, self.wall_clock())
        except ValueError as exc:
            raise _malformed(urlsplit(self.endpoint).netloc, "ECR: GetAuthorizationToken", exc) from None
        return Credential(username, password, source=f"ecr ({self.region})"), lifetime

    def prepare_push(self, account: str, repository: str, deadline: float) -> None:
        """Make sure ``repository`` exists before a push: ECR does not create repositories on push.

        DescribeRepositories first (so that a role without ``ecr:CreateRepository`` works
        with repositories made beforehand), then CreateRepository with the configured
        settings; "already exists" (a concurrent creator) counts as success. A failure is
        remembered for the lease backoff, so the blobs of one copy do not each ask again.
        """
        if not self.repositories.create:
            return
        key = (account, repository)
        with self._lock:
            if key in self._known:
                return
        # one creator at a time: the blobs of one copy ask at once; creating is rare
        with self._ensure_lock:
            with self._lock:
                if key in self._known:
                    return
                failed = self._failed.get(key)
            if failed is not None and self.clock() < failed[0]:
                raise failed[1]
            try:
                self._ensure(account, repository, deadline)
            except CredentialProviderError as exc:
                count = 1 if failed is None else failed[2] + 1
                with self._lock:
                    if len(self._failed) >= self.MAX_KNOWN_REPOSITORIES:
                        self._failed.clear()
                    self._failed[key] = (self.clock() + failure_backoff(count, self.jitter()), exc, count)
                raise
            with self._lock:
                self._failed.pop(key, None)
                if len(self._known) >= self.MAX_KNOWN_REPOSITORIES:
                    self._known.clear()
                self._known.add(key)

    def _ensure(self, account: str, repository: str, deadline: float) -> None:
        describe = {"repositoryNames": [repository], **({"registryId": account} if account else {})}
        try:
            self._call("DescribeRepositories", describe, deadline)
            return
        except CredentialProviderError as exc:
            if "RepositoryNotFoundException" not in exc.detail:
                raise
        payload = aws.create_repository_payload(repository, account, self.repositories)
        try:
            self._call("CreateRepository", payload, deadline)
        except CredentialProviderError as exc:
            if "RepositoryAlreadyExistsException" not in exc.detail:
                raise


class GcpProvider:
    """The GKE metadata server's access token as the password of ``oauth2accesstoken``."""

    name = "gcp"

    def __init__(self, settings: GcpSettings, metadata: Endpoint):
        self.settings = settings
        self.metadata = metadata

    def fetch(self, deadline: float) -> tuple[Credential, float]:
        what = "GCP: metadata server token"
        request = gcp.token_request(self.settings.metadata_host)
        _, headers, body = self.metadata.call(request, deadline, what=what, error_of=_text_error)
        host = urlsplit(request.url).netloc
        if not gcp.is_metadata_server(headers.get("Metadata-Flavor", "") if headers else ""):
            raise CredentialProviderError(host, f"{what}: the answer lacks Metadata-Flavor: Google "
                                                "(not a metadata server)", temporary=False)
        try:
            token, lifetime = gcp.parse_token(body)
        except ValueError as exc:
            raise _malformed(host, what, exc) from None
        return Credential(gcp.USERNAME, token, source="gcp"), lifetime


def _text_error(status: int, body: bytes, headers: object) -> tuple[str, str]:
    """The metadata server answers errors in plain text."""
    return "", body.decode("utf-8", "replace")


class AzureIdentity:
    """An Entra ID access token for ACR from the pod's federated token, kept until shortly before it expires."""

    def __init__(self, settings: AzureSettings, entra: Endpoint, *, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.entra = entra
        self.clock = clock
        self._cached: tuple[str, float] | None = None
        self._lock = threading.Lock()

    def access_token(self, deadline: float) -> str:
        with self._lock:
            if self._cached is not None and self.clock() < self._cached[1]:
                return self._cached[0]
            what = "ACR: Entra ID token"
            settings = self.settings
            assertion = _read_token_file(settings.federated_token_file, what, "AZURE_FEDERATED_TOKEN_FILE")
            request = azure.entra_token_request(settings.authority_host, settings.tenant_id, settings.client_id,
                                                assertion)
            _, _, body = self.entra.call(request, deadline, what=what,
                                         error_of=lambda status, body, _: ("", azure.entra_error(body)))
            try:
                token, lifetime = azure.parse_entra_token(body)
            except ValueError as exc:
                raise _malformed(urlsplit(request.url).netloc, what, exc) from None
            self._cached = (token, self.clock() + max(0.0, lifetime - min(CREDENTIAL_MARGIN, lifetime / 10)))
            return token


class AcrProvider:
    """One ACR registry: the Entra token exchanged for the registry's refresh token.

    The exchange goes to the registry host itself, so it travels through the
    registries' transport and its address guard, like any registry request.
    """

    name = "acr"

    def __init__(self, registry: str, identity: AzureIdentity, registry_endpoint: Endpoint, *,
                 wall_clock: Callable[[], float] = time.time):
        self.registry = registry
        self.identity = identity
        self.registry_endpoint = registry_endpoint
        self.wall_clock = wall_clock

    def fetch(self, deadline: float) -> tuple[Credential, float]:
        token = self.identity.access_token(deadline)
        what = "ACR: /oauth2/exchange"
        base = self.registry_endpoint.transport.base_url(self.registry)
        request = azure.exchange_request(base, self.registry, self.identity.settings.tenant_id, token)
        _, _, body = self.registry_endpoint.call(request, deadline, what=what,
                                                 error_of=lambda status, body, _: ("", azure.exchange_error(body)))
        try:
            refresh_token, lifetime = azure.parse_exchange(body, self.wall_clock())
        except ValueError as exc:
            raise _malformed(self.registry, what, exc) from None
        return Credential(azure.ACR_USERNAME, identity_token=refresh_token, source="acr"), lifetime
