"""The token exchange as data: which request a challenge leads to, and what a token answer means."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs, parse_qsl, urlsplit

import pytest

from imgrep.errors import RegistryProtocolError
from imgrep.oci.auth import (
    DEFAULT_TOKEN_LIFETIME,
    Token,
    TokenCache,
    basic_header,
    parse_token_response,
    pull_scope,
    push_scope,
    token_request,
)
from imgrep.oci.credentials import Credential
from imgrep.oci.protocol import Challenge

REALM = "https://auth.example.com/token"
CHALLENGE = Challenge("bearer", {"realm": REALM, "service": "registry.example.com"})
PULL = (pull_scope("team/app"),)


def test_scopes():
    assert pull_scope("team/app") == "repository:team/app:pull"
    assert push_scope("team/app") == "repository:team/app:pull,push"


def test_basic_header_is_base64_of_user_colon_password():
    header = basic_header("_json_key", '{"k": "v:w"}')
    assert header.startswith("Basic ")
    assert base64.b64decode(header[len("Basic "):]).decode() == '_json_key:{"k": "v:w"}'


def query_of(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query)


def test_anonymous_token_request_is_a_get_without_authorization():
    request = token_request(CHALLENGE, PULL, None)
    assert request.method == "GET"
    assert request.url.split("?")[0] == REALM
    assert query_of(request.url) == [("service", "registry.example.com"), ("scope", "repository:team/app:pull")]
    assert "Authorization" not in request.headers
    assert request.body is None


def test_basic_credentials_ride_on_the_token_get():
    request = token_request(CHALLENGE, PULL, Credential("alice", "pw"))
    assert request.method == "GET"
    assert request.headers["Authorization"] == basic_header("alice", "pw")


def test_every_scope_is_its_own_query_parameter():
    scopes = (push_scope("team/app"), pull_scope("library/base"))
    request = token_request(CHALLENGE, scopes, None)
    assert [value for key, value in query_of(request.url) if key == "scope"] == list(scopes)


def test_realm_that_already_has_a_query_is_extended():
    challenge = Challenge("bearer", {"realm": REALM + "?tenant=1"})
    request = token_request(challenge, PULL, None)
    assert query_of(request.url) == [("tenant", "1"), ("scope", "repository:team/app:pull")]


def test_identity_token_is_an_oauth2_refresh_token_post():
    request = token_request(CHALLENGE, PULL, Credential("<token>", identity_token="refresh-xyz"))
    assert (request.method, request.url) == ("POST", REALM)
    assert request.headers == {"Content-Type": "application/x-www-form-urlencoded"}
    assert "Authorization" not in request.headers
    assert parse_qs(request.body.decode()) == {
        "grant_type": ["refresh_token"],
        "refresh_token": ["refresh-xyz"],
        "client_id": ["imgrep"],
        "service": ["registry.example.com"],
        "scope": ["repository:team/app:pull"],
    }


def test_token_request_repr_hides_credentials():
    for credential in (Credential("alice", "pw-secret"), Credential("<token>", identity_token="refresh-secret")):
        text = repr(token_request(CHALLENGE, PULL, credential))
        assert "pw-secret" not in text and "refresh-secret" not in text
        assert basic_header("alice", "pw-secret")[6:] not in text


@pytest.mark.parametrize("realm", ["", "ftp://auth.example.com/token", "/token", "auth.example.com/token"])
def test_challenge_without_a_usable_realm_is_a_protocol_error(realm):
    with pytest.raises(RegistryProtocolError):
        token_request(Challenge("bearer", {"realm": realm, "service": "reg"}), PULL, None)


NOW = 1000.0


@pytest.mark.parametrize(
    ("answer", "value", "expires_at"),
    [
        ({"token": "t1", "expires_in": 300}, "t1", NOW + 290),  # refreshed 10 s early
        ({"access_token": "a1", "expires_in": 300}, "a1", NOW + 290),
        ({"token": "t1", "access_token": "a1", "expires_in": 300}, "t1", NOW + 290),
        ({"token": "t1", "expires_in": 20}, "t1", NOW + 18),  # a tenth of a short lifetime
        ({"token": "t1"}, "t1", NOW + DEFAULT_TOKEN_LIFETIME - 6),
        ({"token": "t1", "expires_in": 0}, "t1", NOW + 54),
        ({"token": "t1", "expires_in": -5}, "t1", NOW + 54),
        ({"token": "t1", "expires_in": "300"}, "t1", NOW + 54),
        ({"token": "t1", "expires_in": True}, "t1", NOW + 54),
        ({"token": "", "access_token": "a1"}, "a1", NOW + 54),
    ],
)
def test_token_response(answer, value, expires_at):
    token = parse_token_response(json.dumps(answer).encode(), NOW, "registry.example.com")
    assert (token.value, token.expires_at) == (value, pytest.approx(expires_at))


@pytest.mark.parametrize(
    "body",
    [b"<html>oops</html>", b"", b"\xff\xfe", b"[]", b'"token"', b"{}", b'{"token": 42}', b'{"token": ""}'],
)
def test_bad_token_response_is_a_protocol_error_naming_the_registry(body):
    with pytest.raises(RegistryProtocolError) as caught:
        parse_token_response(body, NOW, "registry.example.com")
    assert caught.value.registry == "registry.example.com"


def test_token_repr_hides_its_value():
    assert "s3cret-jwt" not in repr(Token("s3cret-jwt", NOW))


def test_token_cache_serves_a_token_until_it_expires():
    cache = TokenCache()
    cache.put("reg", PULL, Token("t", expires_at=NOW + 60), NOW)
    assert cache.get("reg", PULL, NOW).value == "t"
    assert cache.get("reg", PULL, NOW + 59.9).value == "t"
    assert cache.get("reg", PULL, NOW + 60) is None


def test_token_cache_keys_on_registry_and_scopes():
    cache = TokenCache()
    cache.put("reg", PULL, Token("t", expires_at=NOW + 60), NOW)
    assert cache.get("other-reg", PULL, NOW) is None
    assert cache.get("reg", (push_scope("team/app"),), NOW) is None


def test_full_token_cache_drops_expired_tokens_first():
    cache = TokenCache(max_entries=2)
    cache.put("reg", ("a",), Token("old", expires_at=NOW + 1), NOW)
    cache.put("reg", ("b",), Token("fresh", expires_at=NOW + 100), NOW)
    cache.put("reg", ("c",), Token("new", expires_at=NOW + 100), NOW + 50)
    assert cache.get("reg", ("b",), NOW + 50).value == "fresh"
    assert cache.get("reg", ("c",), NOW + 50).value == "new"


def test_full_token_cache_of_live_tokens_stays_bounded():
    cache = TokenCache(max_entries=2)
    for name in "abcd":
        cache.put("reg", (name,), Token(name, expires_at=NOW + 100), NOW)
    live = [name for name in "abcd" if cache.get("reg", (name,), NOW) is not None]
    assert len(live) == 2 and "d" in live
