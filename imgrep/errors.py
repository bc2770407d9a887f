"""Every error imgrep raises derives from ImgrepError.

Each subclass carries what an operator needs to act on it (registry, repository,
digest, HTTP status, whether retrying may help) and renders as one line.
"""

from __future__ import annotations

__all__ = [
    "ImgrepError",
    "ConfigError",
    "InvalidReference",
    "BadAdmissionReview",
    "RegistryError",
    "NotFound",
    "Unauthorized",
    "RegistryUnavailable",
    "RegistryProtocolError",
    "DigestMismatch",
    "UnsupportedManifest",
    "ForbiddenRegistry",
    "CredentialProviderError",
]


class ImgrepError(Exception):
    """Root of every error imgrep raises; str() is one line fit for an operator."""

    #: a retry may succeed (network fault, 5xx, 429)
    temporary = False


class ConfigError(ImgrepError):
    """A bad environment value; the program exits 2 naming the variable."""

    def __init__(self, variable: str, reason: str):
        self.variable = variable
        self.reason = reason
        super().__init__(f"{variable}: {reason}")


class InvalidReference(ImgrepError):
    """An image reference that does not follow the distribution grammar."""

    def __init__(self, reference: str, reason: str):
        self.reference = reference
        self.reason = reason
        shown = reference if len(reference) <= 300 else reference[:300] + "..."
        super().__init__(f"invalid image reference {shown!r}: {reason}")


class BadAdmissionReview(ImgrepError):
    """A request body that is not an AdmissionReview we can answer (HTTP 400)."""

    def __init__(self, reason: str, status: int = 400):
        self.reason = reason
        self.status = status
        super().__init__(reason)


class RegistryError(ImgrepError):
    """A registry answered in a way that stops the operation.

    ``reason`` is the short phrase used in admission denials
    (README "What gets checked": "not found", "unauthorized", "registry unreachable", ...).
    """

    reason = "registry error"

    def __init__(
        self,
        registry: str,
        detail: str,
        *,
        repository: str = "",
        digest: str = "",
        status: int | None = None,
    ):
        self.registry = registry
        self.repository = repository
        self.digest = digest
        self.status = status
        self.detail = detail
        where = f"{registry}/{repository}" if repository else registry
        code = f" (HTTP {status})" if status else ""
        super().__init__(f"{where}: {detail}{code}")


class NotFound(RegistryError):
    """A 404: ``kind`` says what was missing (manifest, blob, upload, referrers), so a missing
    layer is never reported as a missing image."""

    reason = "not found"

    def __init__(self, registry: str, detail: str, *, kind: str = "manifest", **where):
        self.kind = kind
        super().__init__(registry, detail, **where)


class Unauthorized(RegistryError):
    reason = "unauthorized"


class RegistryUnavailable(RegistryError):
    """Connection failures, timeouts, 5xx and exhausted 429 retries."""

    reason = "registry unreachable"
    temporary = True


class RegistryProtocolError(RegistryError):
    """The registry broke the distribution protocol (bad headers, bad JSON)."""

    reason = "registry error"


class DigestMismatch(RegistryError):
    """Content whose sha256 or size differs from what was promised: never committed."""

    reason = "digest mismatch"


class UnsupportedManifest(RegistryError):
    """Schema 1 or an unknown media type."""

    reason = "unsupported manifest"


class ForbiddenRegistry(RegistryError):
    """A registry imgrep refuses to contact (allow-list, link-local or metadata address),
    or a redirect it refuses to follow (HTTPS to plain HTTP)."""

    reason = "registry not allowed"


class CredentialProviderError(RegistryError):
    """A cloud credential provider could not hand out registry credentials.

    ``detail`` starts with the provider and the call that failed, as an operator
    searches for it: ``ECR: AssumeRoleWithWebIdentity: AccessDenied: ...``. A refusal
    is ``unauthorized``; a provider that could not be reached or was throttled is
    temporary and reads ``registry unreachable``.
    """

    def __init__(self, registry: str, detail: str, *, temporary: bool, status: int | None = None):
        super().__init__(registry, detail, status=status)
        self.temporary = temporary
        self.reason = RegistryUnavailable.reason if temporary else Unauthorized.reason
