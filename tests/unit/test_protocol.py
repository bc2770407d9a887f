"""Registry v2 protocol pieces from plain strings: challenges, Retry-After, error bodies, URLs."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from email.utils import format_datetime

import pytest

from imgrep.errors import NotFound, RegistryProtocolError, RegistryUnavailable, Unauthorized
from imgrep.oci.protocol import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    MANIFEST_ACCEPT,
    MAX_ERROR_BODY,
    OCI_INDEX,
    OCI_MANIFEST,
    Answer,
    Challenge,
    Origin,
    Request,
    blob_path,
    error_summary,
    manifest_path,
    origin,
    parse_challenges,
    parse_retry_after,
    preferred_challenge,
    redact_url,
    resource_kind,
    same_origin,
    status_error,
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
    assert parse_challenges([header]) == (challenge,)


def test_challenge_exposes_realm_and_service():
    [challenge] = parse_challenges(['Bearer realm="https://a/t",service="reg"'])
    assert (challenge.realm, challenge.service) == ("https://a/t", "reg")
    assert (Challenge("basic").realm, Challenge("basic").service) == ("", "")


@pytest.mark.parametrize(
    "header",
    ["", None, "   ", "!!!", "=realm", 'Bearer realm', 'Bearer realm="unterminated', 'Bearer "realm"="x"',
     'Bearer realm="a" service="b"', "{json: 1}"],
)
def test_garbage_challenge_is_none(header):
    assert parse_challenges([header]) == ()


BEARER = Challenge("bearer", {"realm": "https://auth.example/token", "service": "reg", "scope": "repository:a:pull"})
BASIC = Challenge("basic", {"realm": "Registry Realm"})


@pytest.mark.parametrize(("headers", "challenges"), [
    # RFC 9110 11.6.1: one header may hold several challenges, commas between them and their parameters
    (['Basic realm="Registry Realm", Bearer realm="https://auth.example/token",service="reg",'
      'scope="repository:a:pull"'], (BASIC, BEARER)),
    (['Bearer realm="https://auth.example/token",service=reg,scope="repository:a:pull", Basic realm="Registry Realm"'],
     (BEARER, BASIC)),
    (["Negotiate, Basic realm=\"Registry Realm\""], (Challenge("negotiate"), BASIC)),
    # several headers, each read
    (["Negotiate", 'Basic realm="Registry Realm"',
      'Bearer realm="https://auth.example/token",service="reg",scope="repository:a:pull"'],
     (Challenge("negotiate"), BASIC, BEARER)),
    # a broken challenge is left out; the others stand
    (['Basic realm="Registry Realm", Bearer realm', 'Bearer realm="https://auth.example/token",service="reg",'
      'scope="repository:a:pull"'], (BASIC, BEARER)),
    (['Negotiate YII4Aa==, Basic realm="Registry Realm"'], (BASIC,)),
    (['Basic realm="Registry Realm", Bearer realm="unterminated'], (BASIC,)),
    ([None, ""], ()),
])
def test_several_challenges_in_one_header_or_several(headers, challenges):
    assert parse_challenges(headers) == challenges


@pytest.mark.parametrize(("offered", "chosen"), [
    ((BASIC, BEARER), BEARER),
    ((BEARER, BASIC), BEARER),
    ((Challenge("negotiate"), BASIC), BASIC),
    ((Challenge("negotiate"),), None),
    ((), None),
])
def test_bearer_is_preferred_then_basic(offered, chosen):
    assert preferred_challenge(offered) == chosen


@pytest.mark.parametrize(("a", "b", "same"), [
    ("https://registry.example/v2/", "https://registry.example:443/v2/x", True),
    ("http://127.0.0.1/v2/x/blobs/uploads/1", "http://127.0.0.1:80", True),
    ("https://Registry.Example/v2/", "https://registry.example", True),
    ("https://[::1]:5000/v2/", "https://[::1]:5000", True),
    ("https://registry.example/v2/", "http://registry.example/v2/", False),
    ("https://registry.example:8443/", "https://registry.example/", False),
    ("https://registry.example.evil/", "https://registry.example/", False),
    ("https://registry.example@evil.example/", "https://registry.example/", False),
    ("ftp://registry.example/", "ftp://registry.example/", False),
    ("https://registry.example:99999/", "https://registry.example/", False),
])
def test_origins_are_compared_normalised_not_as_string_prefixes(a, b, same):
    assert same_origin(a, b) is same


def test_origin_makes_the_default_port_explicit():
    assert origin("https://Registry.Example/v2/") == Origin("https", "registry.example", 443)
    assert origin("http://[fd00::1]/") == Origin("http", "fd00::1", 80)
    assert origin("https://registry.example:443/").netloc == "registry.example"
    assert origin("http://registry.example:8080/").netloc == "registry.example:8080"


def test_a_request_knows_whether_its_body_can_be_sent_again():
    assert Request("GET", "https://r/v2/").replayable
    assert Request("PUT", "https://r/v2/", body=b"{}").replayable
    assert not Request("PATCH", "https://r/v2/", body=iter([b"x"])).replayable
    moved = Request("GET", "https://r/v2/", {"authorization": "Basic x", "Accept": "a"}).with_header("Authorization",
                                                                                                       None)
    assert moved.headers == {"Accept": "a"}


def test_an_answer_keeps_every_value_of_a_repeated_header():
    answer = Answer(401, (("WWW-Authenticate", "Basic"), ("www-authenticate", "Bearer realm=x")))
    assert answer.header_values("WWW-Authenticate") == ["Basic", "Bearer realm=x"]
    assert answer.header("www-authenticate") == "Basic" and answer.header("Location") == ""


@pytest.mark.parametrize(("status", "method", "kind", "temporary"), [
    (404, "GET", NotFound, False),
    (401, "GET", Unauthorized, False),
    (403, "PUT", Unauthorized, False),
    (429, "HEAD", RegistryUnavailable, True),
    (500, "GET", RegistryUnavailable, True),
    (503, "POST", RegistryUnavailable, True),
    (501, "HEAD", RegistryProtocolError, False),  # not implemented: another way, not a retry
    (505, "GET", RegistryProtocolError, False),
    (405, "PATCH", RegistryProtocolError, False),
    (400, "PUT", RegistryProtocolError, False),
    (302, "POST", RegistryProtocolError, False),
])
def test_each_status_means_one_error(status, method, kind, temporary):
    error = status_error(status, method, b"", registry="r.example", repository="team/app")
    assert type(error) is kind and error.temporary is temporary
    assert (error.status, error.registry, error.repository) == (status, "r.example", "team/app")


@pytest.mark.parametrize(("path", "kind"), [
    ("/v2/team/app/manifests/v1", "manifest"),
    ("/v2/team/app/blobs/sha256:" + "a" * 64, "blob"),
    ("/v2/team/app/blobs/uploads/5d3e", "upload"),
    ("/v2/team/app/referrers/sha256:" + "a" * 64, "referrers"),
])
def test_a_404_says_what_was_missing(path, kind):
    error = status_error(404, "HEAD", b"", registry="r.example", repository="team/app", path=path)
    assert type(error) is NotFound and error.kind == kind and error.reason == "not found"
    assert f"{kind} unknown" in str(error)
    assert resource_kind(path) == kind


def test_the_error_carries_the_registrys_own_words_except_for_head():
    body = json.dumps({"errors": [{"code": "DENIED", "message": "requested access to the resource is denied"}]})
    assert "DENIED: requested access" in str(status_error(403, "GET", body.encode(), registry="r"))
    assert "DENIED" not in str(status_error(403, "HEAD", body.encode(), registry="r"))
    assert str(status_error(501, "HEAD", b"", registry="r")) == "r: HEAD is not implemented by the registry (HTTP 501)"


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
