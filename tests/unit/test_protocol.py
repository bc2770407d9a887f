"""Registry v2 protocol pieces from plain strings: challenges, Retry-After, error bodies, URLs."""

from __future__ import annotations

import json
from email.utils import format_datetime
from datetime import datetime, timezone

import pytest

from imgrep.protocol import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    MANIFEST_ACCEPT,
    MAX_ERROR_BODY,
    OCI_INDEX,
    OCI_MANIFEST,
    Challenge,
    blob_path,
    error_summary,
    manifest_path,
    parse_challenge,
    parse_retry_after,
    redact_url,
)

CHALLENGES = [
    (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/nginx:pull"',
        Challenge("bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                             "scope": "repository:library/nginx:pull"}),
    ),
    # a comma inside a quoted value belongs to the value
    (
        'Bearer realm="https://ghcr.io/token",scope="repository:org/app:pull,push"',
        Challenge("bearer", {"realm": "https://ghcr.io/token", "scope": "repository:org/app:pull,push"}),
    ),
    # escaped quotes and backslashes inside quoted strings
    ('Bearer realm="https://a/t",error="say \\"hi\\" \\\\ bye"',
     Challenge("bearer", {"realm": "https://a/t", "error": 'say "hi" \\ bye'})),
    # scheme and parameter names are case-insensitive; spaces around "=" and "," are allowed
    ('BEARER Realm = "https://a/t" , Service=reg', Challenge("bearer", {"realm": "https://a/t", "service": "reg"})),
    ('Basic realm="Registry Realm"', Challenge("basic", {"realm": "Registry Realm"})),
    ("Basic", Challenge("basic", {})),
    ("Bearer realm=https://a/t,service=reg", Challenge("bearer", {"realm": "https://a/t", "service": "reg"})),
    ('Bearer realm="https://a/t",', Challenge("bearer", {"realm": "https://a/t"})),
]


@pytest.mark.parametrize(("header", "challenge"), CHALLENGES)
def test_www_authenticate_is_parsed(header, challenge):
    assert parse_challenge(header) == challenge


def test_challenge_exposes_realm_and_service():
    challenge = parse_challenge('Bearer realm="https://a/t",service="reg"')
    assert (challenge.realm, challenge.service) == ("https://a/t", "reg")
    assert (Challenge("basic").realm, Challenge("basic").service) == ("", "")


@pytest.mark.parametrize(
    "header",
    ["", None, "   ", "!!!", "=realm", 'Bearer realm', 'Bearer realm="unterminated', 'Bearer "realm"="x"',
     'Bearer realm="a" service="b"', "{json: 1}"],
)
def test_garbage_challenge_is_none(header):
    assert parse_challenge(header) is None


NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        (format_datetime(datetime.fromtimestamp(NOW + 30, timezone.utc), usegmt=True), 30.0),
        (format_datetime(datetime.fromtimestamp(NOW - 30, timezone.utc), usegmt=True), 0.0),  # already past
        (None, None),
        ("", None),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
    ],
)
def test_retry_after_seconds_or_http_date(value, seconds):
    assert parse_retry_after(value, NOW) == seconds


def registry_errors(*errors: dict) -> bytes:
    return json.dumps({"errors": list(errors)}).encode()


@pytest.mark.parametrize(
    ("body", "summary"),
    [
        (registry_errors({"code": "MANIFEST_UNKNOWN", "message": "manifest unknown", "detail": {"Tag": "v9"}}),
         "MANIFEST_UNKNOWN: manifest unknown"),
        (registry_errors({"code": "DENIED", "message": "a"}, {"code": "UNAUTHORIZED", "message": "b"}), "DENIED: a"),
        (registry_errors({"code": "TOOMANYREQUESTS"}), "TOOMANYREQUESTS"),
        (registry_errors({"message": "only a message"}), "only a message"),
        # one line, whatever the registry sent
        (registry_errors({"code": "X", "message": "line one\n\tline  two"}), "X: line one line two"),
        (b"<html>502 Bad Gateway</html>", ""),
        (b"", ""),
        (b'{"errors": []}', ""),
        (b'{"errors": ["text"]}', ""),
        (b'{"errors": {"code": "X"}}', ""),
        (b"\xff\xfe", ""),
    ],
)
def test_error_summary(body, summary):
    assert error_summary(body) == summary


def test_error_summary_is_capped_at_200_characters():
    assert error_summary(registry_errors({"code": "DENIED", "message": "x" * 5000})) == "DENIED: " + "x" * 192


def test_error_body_past_the_read_cap_is_not_parsed():
    padding = " " * MAX_ERROR_BODY
    assert error_summary(registry_errors({"code": "DENIED", "message": "m"})) == "DENIED: m"
    assert error_summary(padding.encode() + registry_errors({"code": "DENIED", "message": "m"})) == ""


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:pass@registry.example.com/v2/app/blobs/sha256:ab",
         "https://registry.example.com/v2/app/blobs/sha256:ab"),
        ("https://cdn.example.com/blob?X-Amz-Signature=secret&X-Amz-Credential=key#frag",
         "https://cdn.example.com/blob?..."),
        ("http://127.0.0.1:5000/v2/", "http://127.0.0.1:5000/v2/"),
        ("http://[::1]:5000/v2/?token=t", "http://[::1]:5000/v2/?..."),
        ("https://Registry.Example.COM:443/v2/", "https://registry.example.com:443/v2/"),
        ("http://host:notaport/x", "http://host:notaport/x"),
    ],
)
def test_redact_url_drops_user_info_and_query(url, shown):
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    ("repository", "reference", "path"),
    [
        ("library/nginx", "latest", "/v2/library/nginx/manifests/latest"),
        ("team/app", "sha256:" + "a" * 64, "/v2/team/app/manifests/sha256:" + "a" * 64),
    ],
)
def test_manifest_path(repository, reference, path):
    assert manifest_path(repository, reference) == path


def test_blob_path():
    assert blob_path("team/app", "sha256:" + "b" * 64) == "/v2/team/app/blobs/sha256:" + "b" * 64


def test_manifest_accept_offers_index_and_image_manifests_of_both_formats_but_not_schema_1():
    assert MANIFEST_ACCEPT.split(", ") == [OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST]
