"""Which addresses imgrep refuses to connect to (server-side request forgery).

Anyone who may create a Pod chooses the registry hosts imgrep contacts from inside
the cluster. Cloud metadata services hand out instance credentials to whoever asks
from the instance, so a registry, token realm or redirect that resolves to one is
refused (SECURITY.md "What it reaches"). Most live in the link-local ranges; the
others are listed one by one. An IPv4 address is also recognised inside the IPv6
forms that reach it: IPv4-mapped, NAT64 (RFC 6052 well-known prefix) and 6to4.
Only a cloud credential provider's own transport may reach its provider's fixed
endpoint (imgrep.cloud.io.providers): the guard itself has no exceptions.
"""

from __future__ import annotations

import ipaddress

__all__ = ["refusal", "REFUSED"]

#: (network, why), as SECURITY.md lists them
REFUSED = (
    (ipaddress.ip_network("169.254.0.0/16"), "a link-local address (cloud metadata: AWS, GCP, Azure, "
                                             "OpenStack, DigitalOcean, Tencent, EKS Pod Identity and others)"),
    (ipaddress.ip_network("fe80::/10"), "an IPv6 link-local address"),
    (ipaddress.ip_network("fd00:ec2::254/128"), "the EC2 IPv6 metadata address"),
    (ipaddress.ip_network("fd00:ec2::23/128"), "the EKS Pod Identity agent's IPv6 address"),
    (ipaddress.ip_network("fd20:ce::254/128"), "the Google Cloud IPv6 metadata address"),
    (ipaddress.ip_network("100.100.100.200/32"), "the Alibaba Cloud metadata address"),
    (ipaddress.ip_network("192.0.0.192/32"), "the Oracle Cloud metadata address"),
    (ipaddress.ip_network("168.63.129.16/32"), "the Azure host agent (WireServer) address"),
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def refusal(address: str) -> str | None:
    """Why ``address`` (an IP literal) may not be contacted, or None when it may."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    candidates = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            candidates.append(ip.ipv4_mapped)
        if ip.sixtofour:
            candidates.append(ip.sixtofour)
        if ip in _NAT64:
            candidates.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    for candidate in candidates:
        for network, reason in REFUSED:
            if candidate.version == network.version and candidate in network:
                return reason
    return None
