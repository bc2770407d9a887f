"""skopeo as an independent second opinion: what a registry really stores, and a reference copier.

Registries in these tests speak plain HTTP on loopback, so TLS verification is off
by default. ``--insecure-policy`` keeps the result independent of the machine's
/etc/containers/policy.json.
"""

from __future__ import annotations

import subprocess

from tests.helpers.binaries import require_binary

__all__ = ["SkopeoError", "copy_all", "inspect_raw"]

#: A copy of a benchmark-sized image over loopback fits easily; a hang does not.
TIMEOUT_SECONDS = 300


class SkopeoError(Exception):
    """skopeo exited non-zero; the message carries its stderr."""


def _docker_ref(ref: str) -> str:
    """Plain 'host/repo:tag' gets the docker:// transport; an explicit transport is kept."""
    return ref if "://" in ref or ref.startswith("oci:") else f"docker://{ref}"


def _credential_args(flag: str, credentials: tuple[str, str] | None) -> list[str]:
    """``--FLAGcreds user:pass``, or ``--FLAGno-creds`` so a login saved on the machine is never used."""
    if credentials is None:
        return [f"--{flag}no-creds"]
    return [f"--{flag}creds", f"{credentials[0]}:{credentials[1]}"]


def _run(*args: str) -> bytes:
    command = [require_binary("skopeo"), "--insecure-policy", *args]
    done = subprocess.run(command, capture_output=True, timeout=TIMEOUT_SECONDS, check=False)
    if done.returncode != 0:
        stderr = done.stderr.decode(errors="replace").strip()
        raise SkopeoError(f"skopeo {args[0]} failed ({done.returncode}): {stderr}")
    return done.stdout


def inspect_raw(ref: str, creds: tuple[str, str] | None = None, tls_verify: bool = False) -> bytes:
    """The manifest bytes exactly as the registry stores them (sha256 of them is the digest)."""
    args = ["inspect", "--raw", f"--tls-verify={str(tls_verify).lower()}", *_credential_args("", creds)]
    return _run(*args, _docker_ref(ref))


def copy_all(
    src: str,
    dst: str,
    src_creds: tuple[str, str] | None = None,
    dst_creds: tuple[str, str] | None = None,
    *,
    tls_verify: bool = False,
) -> None:
    """Copy every platform of ``src`` to ``dst`` keeping digests (skopeo refuses rather than re-encode)."""
    verify = str(tls_verify).lower()
    args = ["copy", "--all", "--preserve-digests", f"--src-tls-verify={verify}", f"--dest-tls-verify={verify}"]
    args += _credential_args("src-", src_creds) + _credential_args("dest-", dst_creds)
    _run(*args, _docker_ref(src), _docker_ref(dst))
