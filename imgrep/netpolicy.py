"""Which addresses imgrep refuses to connect to (server-side request forgery).

Anyone who may create a Pod chooses the registry hosts imgrep contacts from inside
the cluster. Link-local ranges hold cloud metadata services (instance credentials),
so a registry, token realm or redirect that resolves there is refused. Only a cloud
credential provider's own transport may reach its provider's fixed endpoint
(imgrep.providers): the guard itself has no exceptions.
"""

from __future__ import annotations

import ipaddress

__all__ = ["refusal"]

_REFUSED = (
    (ipaddress.ip_network("169.254.0.0/16"), "a link-local address (cloud metadata)"),
    (ipaddress.ip_network("fe80::/10"), "an IPv6 link-local address"),
    (ipaddress.ip_network("fd00:ec2::254/128"), "the EC2 IPv6 metadata address"),
    (ipaddress.ip_network("fd00:ec2::23/128"), "the EKS Pod Identity agent's IPv6 address"),
)


def refusal(address: str) -> str | None:
    """Why ``address`` (an IP literal) may not be contacted, or None when it may."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    for network, reason in _REFUSED:
        if ip in network:
            return reason
    return None
