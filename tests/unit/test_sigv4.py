"""imgrep's SigV4 signer gives the very Authorization header botocore's SigV4Auth gives.

Every combination below is signed twice, by ``imgrep.cloud.sigv4.sign`` and by botocore
(the reference implementation AWS ships), with the same credentials, headers, body
and time; the headers must be equal character for character.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import random
from urllib.parse import quote, urlencode

import pytest

from imgrep.cloud.sigv4 import AwsCredentials, canonical_request, sign
from tests.helpers.binaries import require_module

LONG_TERM = AwsCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
TEMPORARY = AwsCredentials("ASIAEXAMPLE", "k3y/with+odd=chars", session_token="FQoGZXIvYXdzEBYaD/+token==")

METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD")
ENDPOINTS = (
    "https://api.ecr.eu-west-1.amazonaws.com/",
    "https://sts.us-east-1.amazonaws.com",
    "http://127.0.0.1:4566/",
    "https://example.amazonaws.com:8443/a/b/../c//d/./e",
    "https://example.amazonaws.com/path%20with%20space/%E2%82%AC/~tilde",
    "https://[::1]:9000/v1/credentials",
)
QUERIES = (
    [],
    [("Action", "GetCallerIdentity"), ("Version", "2011-06-15")],
    [("b", "2"), ("a", "1"), ("a", "0")],  # repeated keys sort by value too
    [("space", "a b"), ("plus", "a+b"), ("slash", "a/b"), ("tilde", "~x"), ("star", "*")],
    [("unicode", "€ü"), ("empty", ""), ("eq", "a=b"), ("amp", "a&b")],
    [("Z", "upper"), ("z", "lower"), ("_", "under"), ("-", "dash")],
)
BODIES = (b"", b"{}", b'{"repositoryName":"team/app","imageTagMutability":"MUTABLE"}',
          "Action=AssumeRole&RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fx".encode(), bytes(range(256)))
HEADER_SETS = (
    {},
    {"Content-Type": "application/x-amz-json-1.1",
     "X-Amz-Target": "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"},
    {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8", "X-Custom": "  spaced    out  value  ",
     "User-Agent": "imgrep/test", "Accept": "application/json"},
)
TIMES = (datetime.datetime(2026, 12, 1, 9, 44, 26), datetime.datetime(2015, 8, 30, 23, 59, 59))


def botocore_authorization(monkeypatch, method, url, params, headers, body, credentials, region, service, when):
    require_module("botocore", "botocore")
    import botocore.auth
    import botocore.credentials
    from botocore.awsrequest import AWSRequest

    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *args, **kwargs: when)
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers), params=params)
    reference = botocore.credentials.Credentials(credentials.access_key_id, credentials.secret_access_key,
                                                 credentials.session_token or None)
    botocore.auth.SigV4Auth(reference, service, region).add_auth(request)
    return {name: value for name, value in request.headers.items()}


def with_query(endpoint: str, query: list[tuple[str, str]]) -> str:
    return endpoint + ("?" + urlencode(query, quote_via=quote) if query else "")


def epoch(when: datetime.datetime) -> float:
    return when.replace(tzinfo=datetime.timezone.utc).timestamp()


CASES = list(itertools.product(METHODS, ENDPOINTS, QUERIES, BODIES[:3], HEADER_SETS[:2], (LONG_TERM, TEMPORARY)))
#: plus a seeded sample over everything, so odd bodies and header sets meet every endpoint
CASES += random.Random(13).sample(list(itertools.product(METHODS, ENDPOINTS, QUERIES, BODIES, HEADER_SETS,
                                                         (LONG_TERM, TEMPORARY))), 300)


def test_the_matrix_is_large():
    assert len(CASES) >= 1000


@pytest.mark.parametrize("index", range(0, len(CASES), 25))
def test_authorization_equals_botocore_sigv4auth(monkeypatch, index):
    for number, (method, endpoint, query, body, headers, credentials) in enumerate(CASES[index:index + 25]):
        when = TIMES[(index + number) % len(TIMES)]
        region, service = ("eu-west-1", "ecr") if number % 2 else ("us-east-1", "sts")
        expected = botocore_authorization(monkeypatch, method, endpoint, query, headers, body, credentials,
                                          region, service, when)

        ours = sign(method, with_query(endpoint, query), headers, body, credentials, region=region,
                    service=service, now=epoch(when))

        assert ours["Authorization"] == expected["Authorization"], (method, endpoint, query, headers)
        assert ours["X-Amz-Date"] == expected["X-Amz-Date"]
        assert ours.get("X-Amz-Security-Token") == expected.get("X-Amz-Security-Token")


def test_a_session_token_is_sent_and_signed():
    headers = sign("POST", "https://api.ecr.eu-west-1.amazonaws.com/", {}, b"{}", TEMPORARY, region="eu-west-1",
                   service="ecr", now=0)
    assert headers["X-Amz-Security-Token"] == TEMPORARY.session_token
    assert "x-amz-security-token" in headers["Authorization"].split("SignedHeaders=")[1]


def test_a_stale_authorization_or_date_is_replaced_not_signed():
    first = sign("GET", "https://sts.amazonaws.com/", {"Authorization": "old", "X-Amz-Date": "19700101T000000Z"},
                 b"", LONG_TERM, region="us-east-1", service="sts", now=86_400)
    assert first["X-Amz-Date"] == "19700102T000000Z"
    assert first["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/19700102/us-east-1/sts/")
    assert "authorization" not in first["Authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")


def test_canonical_request_of_the_aws_documentation_example():
    """The GetSessionToken example of the SigV4 documentation, step by step."""
    request, signed = canonical_request(
        "GET", "https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08",
        {"Host": "iam.amazonaws.com", "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
         "X-Amz-Date": "20150830T123600Z"},
        hashlib.sha256(b"").hexdigest())
    assert signed == "content-type;host;x-amz-date"
    assert hashlib.sha256(request.encode()).hexdigest() == \
        "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"


def test_the_documented_signature():
    headers = sign("GET", "https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08",
                   {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}, b"",
                   AwsCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
                   region="us-east-1", service="iam", now=epoch(datetime.datetime(2015, 8, 30, 12, 36)))
    assert headers["Authorization"].endswith(
        "Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7")


def test_credentials_never_show_their_secrets():
    assert TEMPORARY.secret_access_key not in repr(TEMPORARY)
    assert TEMPORARY.session_token not in repr(TEMPORARY)
