"""What a check (and a replication) found out about one image: plain data.

Shared by the checker, the replicator and the admission policy, so the policy needs
no I/O module; statuses are the words operators see in ``check`` output and logs.
"""

from __future__ import annotations

from dataclasses import dataclass

from imgrep.errors import ImgrepError, InvalidReference, NotFound, RegistryError
from imgrep.oci.reference import Reference

__all__ = ["CheckResult", "result_from_error", "EXISTS", "MISSING", "ERROR", "REPLICATED"]

EXISTS, MISSING, ERROR, REPLICATED = "exists", "missing", "error", "replicated"


@dataclass(frozen=True)
class CheckResult:
    image: str  # as written in the object
    status: str  # exists | missing | error | replicated
    reference: Reference | None = None
    digest: str | None = None
    reason: str = ""  # the short phrase admission denials use
    detail: str = ""  # one line for operators
    cached: bool = False
    temporary: bool = False
    #: the image exists in its source and its copy to the target is still running: a
    #: workload is admitted meanwhile, a Pod is not (README "Replication")
    copying: bool = False

    @property
    def registry_label(self) -> str:
        """The registry as metrics name it: the canonical name (``docker.io``), not the API host
        (``registry-1.docker.io``, a Repo's), or ``invalid`` for a reference that does not parse."""
        return self.reference.registry if self.reference else "invalid"


def result_from_error(image: str, reference: Reference | None, error: ImgrepError) -> CheckResult:
    if isinstance(error, NotFound):
        status, reason = MISSING, error.reason
    elif isinstance(error, RegistryError):
        status, reason = ERROR, error.reason
    elif isinstance(error, InvalidReference):
        status, reason = ERROR, "invalid reference"
    else:
        status, reason = ERROR, "error"
    return CheckResult(image, status, reference, reason=reason, detail=str(error), temporary=error.temporary)
