"""Addresses refused as registry, token realm or redirect targets (SSRF)."""

import pytest

from imgrep.netpolicy import refusal


@pytest.mark.parametrize("address", [
    "169.254.169.254", "169.254.0.1", "fe80::1", "fe80::1%eth0", "fd00:ec2::254", "::ffff:169.254.169.254",
    "169.254.170.23", "fd00:ec2::23",
])
def test_metadata_and_link_local_addresses_are_refused(address):
    assert refusal(address)


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.5", "192.168.1.1", "8.8.8.8", "::1", "fd00:ec2::253"])
def test_other_addresses_are_allowed(address):
    assert refusal(address) is None
