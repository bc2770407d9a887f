"""Certificates for tests, made by the openssl binary.

The standard library can load and verify certificates but cannot make them, so
every key and certificate here comes from ``openssl``. Leaves are issued by a
throwaway CA so a client can verify the server the way the Kubernetes API server
does: CA bundle plus the service's DNS name.
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path
from typing import NamedTuple

from tests.helpers.binaries import require_binary

__all__ = [
    "DEFAULT_DNS_NAMES",
    "CertPaths",
    "issue_cert",
    "issue_client_cert",
    "make_ca_and_cert",
    "make_self_signed",
    "run_openssl",
]

#: The names the webhook's Service answers to inside a cluster.
DEFAULT_DNS_NAMES = (
    "image-replicator",
    "image-replicator.image-replicator",
    "image-replicator.image-replicator.svc",
    "image-replicator.image-replicator.svc.cluster.local",
)

#: Short validity: these certificates live for one test run.
VALIDITY_DAYS = 2

_OPENSSL_TIMEOUT_SECONDS = 30
_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")


class CertPaths(NamedTuple):
    ca_cert: Path
    cert: Path
    key: Path


def run_openssl(*args: str | Path, stdin: bytes | None = None) -> bytes:
    """Run openssl and return its stdout; a failure raises with openssl's own message."""
    command = [require_binary("openssl"), *map(str, args)]
    done = subprocess.run(
        command, input=stdin, capture_output=True, timeout=_OPENSSL_TIMEOUT_SECONDS, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def make_self_signed(directory: Path, name: str, *, common_name: str, key_type: str = "rsa:2048") -> tuple[Path, Path]:
    """A key and a self-signed certificate for it, written as NAME.crt / NAME.key."""
    directory = Path(directory)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    run_openssl(
        "req", "-x509", "-newkey", key_type, "-nodes", "-keyout", key, "-out", cert,
        "-days", str(VALIDITY_DAYS), "-subj", f"/CN={common_name}",
    )
    return cert, key


def make_ca_and_cert(
    directory: Path,
    dns_names: tuple[str, ...] = DEFAULT_DNS_NAMES,
    ip_addresses: tuple[str, ...] = ("127.0.0.1",),
) -> CertPaths:
    """A new CA (ca.crt / ca.key) in ``directory`` and a server leaf it signed (tls.crt / tls.key)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    run_openssl(
        "req", "-x509", *_EC_KEY, "-nodes", "-keyout", directory / "ca.key", "-out", directory / "ca.crt",
        "-days", str(VALIDITY_DAYS), "-subj", "/CN=imgrep test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )
    return issue_cert(directory, "tls", dns_names=dns_names, ip_addresses=ip_addresses)


def issue_cert(
    directory: Path,
    name: str,
    *,
    dns_names: tuple[str, ...] = DEFAULT_DNS_NAMES,
    ip_addresses: tuple[str, ...] = ("127.0.0.1",),
    common_name: str = "",
    extended_key_usage: str = "serverAuth",
) -> CertPaths:
    """Another server leaf (NAME.crt / NAME.key) from the CA that make_ca_and_cert left in ``directory``.

    Renewal tests issue under a new name and then os.replace() the files over the
    served ones, so a reader never sees a half-written file.
    """
    directory = Path(directory)
    cert, key, csr = directory / f"{name}.crt", directory / f"{name}.key", directory / f"{name}.csr"
    extensions = directory / f"{name}.ext"
    alt_names = [f"DNS:{n}" for n in dns_names] + [f"IP:{a}" for a in ip_addresses]
    extensions.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        f"extendedKeyUsage={extended_key_usage}\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
        + (f"subjectAltName={','.join(alt_names)}\n" if alt_names else "")
    )
    common_name = common_name or (dns_names[0] if dns_names else "imgrep test server")
    run_openssl("req", "-new", *_EC_KEY, "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={common_name}")
    run_openssl(
        "x509", "-req", "-in", csr, "-CA", directory / "ca.crt", "-CAkey", directory / "ca.key",
        "-set_serial", f"0x{secrets.token_hex(16)}", "-days", str(VALIDITY_DAYS), "-sha256",
        "-extfile", extensions, "-out", cert,
    )
    csr.unlink()
    extensions.unlink()
    return CertPaths(ca_cert=directory / "ca.crt", cert=cert, key=key)


def issue_client_cert(directory: Path, name: str, *, common_name: str) -> CertPaths:
    """A client leaf (NAME.crt / NAME.key) from the CA in ``directory``: the Kubernetes API server
    takes its CN as the user name, as it does for kubeconfig client certificates."""
    return issue_cert(directory, name, dns_names=(), ip_addresses=(), common_name=common_name,
                      extended_key_usage="clientAuth")
