"""Addresses refused as registry, token realm or redirect targets (SSRF)."""

import pytest

from imgrep.oci.netpolicy import REFUSED, refusal


@pytest.mark.parametrize("address", [
    "169.254.169.254", "169.254.0.1", "169.254.170.2", "169.254.0.23", "fe80::1", "fe80::1%eth0",
    "fe80::a9fe:a9fe", "fd00:ec2::254", "fd20:ce::254", "100.100.100.200", "192.0.0.192", "168.63.129.16",
    "169.254.170.23", "fd00:ec2::23",
])
def test_metadata_and_link_local_addresses_are_refused(address):
    assert refusal(address)


@pytest.mark.parametrize("address", [
    "::ffff:169.254.169.254",  # IPv4-mapped
    "::ffff:100.100.100.200",
    "64:ff9b::a9fe:a9fe",  # NAT64 well-known prefix
    "64:ff9b::6464:64c8",
    "2002:a9fe:a9fe::1",  # 6to4
    "2002:c000:00c0::",
])
def test_an_ipv4_metadata_address_is_refused_inside_ipv6_too(address):
    assert refusal(address)


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.0.0.5", "192.168.1.1", "8.8.8.8", "::1", "fd00:ec2::253", "100.100.100.201",
    "192.0.0.193", "100.64.0.1", "64:ff9b::808:808", "2002:808:808::1",
])
def test_other_addresses_are_allowed(address):
    assert refusal(address) is None


def test_every_refusal_says_why():
    assert all(reason.startswith(("a ", "an ", "the ")) for _, reason in REFUSED)
