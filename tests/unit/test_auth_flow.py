"""The 401 dance as a pure flow: what it asks to send, for every answer a registry can give.

``auth_flow`` yields requests and is sent answers; these tests play the registry and
the token server with plain data, so every turn (first contact, known scheme, stale or
refused token, foreign challenge, several challenges, no credentials) runs without a socket.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest

from imgrep.errors import RegistryProtocolError, RegistryUnavailable, Unauthorized
from imgrep.oci.auth import (
    Asker,
    ChallengeCache,
    Token,
    TokenCache,
    TokenFetch,
    auth_flow,
    basic_header,
    prefetch_flow,
    pull_scope,
    token_from_answer,
)
from imgrep.oci.credentials import Credential
from imgrep.oci.protocol import Answer, Challenge, Request

REGISTRY = "registry.example"
URL = f"https://{REGISTRY}/v2/team/app/manifests/v1"
REALM = "https://auth.example/token"
BEARER = f'Bearer realm="{REALM}",service="registry.example",scope="repository:team/app:pull"'
BASIC = 'Basic realm="registry"'
SCOPES = (pull_scope("team/app"),)
ALICE = Credential("alice", "pw-alice")
NOW = 1000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def challenged(*values: str, url: str = URL) -> Answer:
    return Answer(401, tuple(("WWW-Authenticate", value) for value in values), url)


def ok(url: str = URL) -> Answer:
    return Answer(200, (("Docker-Content-Digest", "sha256:" + "a" * 64),), url)


def token_answer(value: str, expires_in: int = 300) -> Answer:
    return Answer(200, (), REALM, json.dumps({"token": value, "expires_in": expires_in}).encode())


class Registry:
    """One registry's caches and a way to run a flow against scripted answers."""

    def __init__(self, credential: Credential | None = ALICE, *, http_realm_allowed: bool = False):
        self.credential = credential
        self.challenges = ChallengeCache()
        self.tokens = TokenCache()
        self.clock = Clock()
        self.http_realm_allowed = http_realm_allowed

    def asker(self) -> Asker:
        return Asker(REGISTRY, "team/app", SCOPES, self.credential, self.tokens, self.clock, self.http_realm_allowed)

    def run(self, *answers: Answer | Token, request: Request | None = None):
        """(steps the flow yielded, the Answer it returned); each step is answered in turn."""
        flow = auth_flow(request or Request("HEAD", URL), self.asker(), self.challenges)
        queue = list(answers)
        steps = []
        try:
            step = next(flow)
            while True:
                steps.append(step)
                step = flow.send(queue.pop(0))
        except StopIteration as done:
            assert queue == [], "the flow stopped before every scripted answer was used"
            return steps, done.value


def authorization(step) -> str | None:
    headers = step.request.headers if isinstance(step, TokenFetch) else step.headers
    return next((v for k, v in headers.items() if k.lower() == "authorization"), None)


# --- first contact and what is learnt ---------------------------------------------------------


def test_an_open_registry_costs_one_request_without_credentials():
    steps, answer = Registry().run(ok())
    assert [s.url for s in steps] == [URL] and authorization(steps[0]) is None
    assert answer.status == 200


def test_basic_first_contact_pays_one_401_then_sends_basic_from_the_start():
    registry = Registry()
    steps, answer = registry.run(challenged(BASIC), ok())
    assert [authorization(s) for s in steps] == [None, basic_header("alice", "pw-alice")]
    assert answer.status == 200

    steps, _ = registry.run(ok())
    assert [authorization(s) for s in steps] == [basic_header("alice", "pw-alice")]


def test_bearer_first_contact_fetches_a_token_with_the_password_on_the_token_request_only():
    registry = Registry()
    steps, answer = registry.run(challenged(BEARER), token_answer("t1"), ok())

    first, fetch, retried = steps
    assert authorization(first) is None
    assert isinstance(fetch, TokenFetch) and fetch.key == (REGISTRY, SCOPES) and fetch.rejected is None
    assert fetch.request.url.startswith(REALM + "?")
    assert parse_qs(urlsplit(fetch.request.url).query) == {"service": ["registry.example"],
                                                           "scope": ["repository:team/app:pull"]}
    assert authorization(fetch) == basic_header("alice", "pw-alice")
    assert authorization(retried) == "Bearer t1" and answer.status == 200


def test_a_known_scheme_and_a_cached_token_cost_one_request():
    registry = Registry()
    registry.run(challenged(BEARER), token_answer("t1"), ok())
    steps, _ = registry.run(ok())
    assert [authorization(s) for s in steps] == ["Bearer t1"]


def test_an_expired_token_is_fetched_again_before_it_is_refused():
    registry = Registry()
    registry.run(challenged(BEARER), token_answer("t1", expires_in=60), ok())
    registry.clock.now += 60

    steps, _ = registry.run(token_answer("t2"), ok())

    assert isinstance(steps[0], TokenFetch) and [authorization(s) for s in steps[1:]] == ["Bearer t2"]


def test_a_token_the_registry_stopped_accepting_is_replaced_once():
    registry = Registry()
    registry.run(challenged(BEARER), token_answer("t1"), ok())

    steps, answer = registry.run(challenged(BEARER), token_answer("t2"), ok())

    assert [type(s).__name__ for s in steps] == ["Request", "TokenFetch", "Request"]
    assert steps[1].rejected == "t1" and authorization(steps[2]) == "Bearer t2"
    assert answer.status == 200


def test_a_token_just_obtained_and_refused_is_not_fetched_again():
    registry = Registry()
    steps, answer = registry.run(challenged(BEARER), token_answer("t1"), challenged(BEARER))
    assert len(steps) == 3 and answer.status == 401  # the caller maps it to Unauthorized


def test_a_token_another_request_fetched_meanwhile_is_used_as_it_is():
    registry = Registry()
    steps, _ = registry.run(challenged(BEARER), Token("from-elsewhere", NOW + 100), ok())
    assert authorization(steps[-1]) == "Bearer from-elsewhere"


# --- several challenges ------------------------------------------------------------------------


@pytest.mark.parametrize("answer", [
    challenged(f"{BASIC}, {BEARER}"),
    challenged("Negotiate", BASIC, BEARER),
    challenged(BEARER, BASIC),
], ids=["one-header", "several-headers", "bearer-first"])
def test_bearer_is_chosen_among_several_challenges(answer):
    steps, _ = Registry().run(answer, token_answer("t1"), ok())
    assert isinstance(steps[1], TokenFetch) and steps[1].request.url.startswith(REALM)


def test_basic_is_chosen_when_no_bearer_is_offered():
    steps, _ = Registry().run(challenged("Negotiate", BASIC), ok())
    assert authorization(steps[-1]) == basic_header("alice", "pw-alice")


def test_only_schemes_imgrep_does_not_speak_is_unauthorized_saying_so():
    with pytest.raises(Unauthorized, match="scheme imgrep does not speak"):
        Registry().run(challenged("Negotiate", 'Digest realm="r", nonce="n"'))


# --- where credentials may go ------------------------------------------------------------------


@pytest.mark.parametrize("elsewhere", ["https://cdn.example/blobs/abc?sig=1", "http://registry.example/v2/",
                                       "https://registry.example:8443/v2/"])
def test_a_401_from_where_the_registry_redirected_is_not_its_challenge(elsewhere):
    registry = Registry()
    registry.run(challenged(BASIC), ok())  # the registry's own scheme is known
    foreign = challenged('Bearer realm="https://evil.example/token",service="x"', url=elsewhere)

    with pytest.raises(Unauthorized) as refused:
        registry.run(foreign)

    assert urlsplit(elsewhere).netloc in str(refused.value) and "sig=1" not in str(refused.value)
    assert registry.challenges.get(REGISTRY).scheme == "basic"  # nothing learnt from the foreign host


def test_a_401_after_a_redirect_on_the_registrys_own_origin_is_its_challenge():
    steps, answer = Registry().run(challenged(BASIC, url=f"https://{REGISTRY}:443/v2/other/path"), ok())
    assert authorization(steps[-1]) == basic_header("alice", "pw-alice") and answer.status == 200


def test_credentials_go_only_to_the_registry_and_the_realm_its_own_challenge_names():
    registry = Registry()
    steps, _ = registry.run(challenged(BEARER), token_answer("t1"), ok())
    hosts = {urlsplit((s.request if isinstance(s, TokenFetch) else s).url).hostname
             for s in steps if authorization(s)}
    assert hosts == {"registry.example", "auth.example"}


def test_a_plain_http_realm_is_refused_unless_the_registry_is_insecure():
    plain = 'Bearer realm="http://auth.example/token",service="s"'
    with pytest.raises(RegistryProtocolError, match="must use HTTPS"):
        Registry().run(challenged(plain))
    steps, _ = Registry(http_realm_allowed=True).run(challenged(plain), token_answer("t1"), ok())
    assert authorization(steps[-1]) == "Bearer t1"


def test_no_credentials_for_a_basic_registry_is_unauthorized_saying_none_are_configured():
    with pytest.raises(Unauthorized, match="none are configured"):
        Registry(credential=None).run(challenged(BASIC))


def test_anonymous_bearer_asks_the_realm_without_authorization():
    steps, _ = Registry(credential=None).run(challenged(BEARER), token_answer("anon"), ok())
    assert authorization(steps[1]) is None and authorization(steps[2]) == "Bearer anon"


def test_a_static_registry_token_is_sent_without_asking_a_realm():
    steps, _ = Registry(credential=Credential(registry_token="static")).run(challenged(BEARER), ok())
    assert [authorization(s) for s in steps] == [None, "Bearer static"]


def test_an_identity_token_is_exchanged_by_post_with_no_password_header():
    credential = Credential("<token>", identity_token="refresh-xyz")
    steps, _ = Registry(credential=credential).run(challenged(BEARER), token_answer("t1"), ok())
    fetch = steps[1]
    assert fetch.request.method == "POST" and authorization(fetch) is None
    assert parse_qs(fetch.request.body.decode())["refresh_token"] == ["refresh-xyz"]


def test_a_streamed_body_is_not_sent_twice_the_401_goes_back_to_the_caller():
    request = Request("PATCH", URL, {}, iter([b"chunk"]))
    steps, answer = Registry().run(challenged(BASIC), request=request)
    assert len(steps) == 1 and answer.status == 401


# --- a token fetched ahead of the requests that need it --------------------------------------


def prefetch(registry: Registry, *answers):
    flow = prefetch_flow(registry.asker(), registry.challenges)
    steps, queue = [], list(answers)
    try:
        step = next(flow)
        while True:
            steps.append(step)
            step = flow.send(queue.pop(0))
    except StopIteration:
        return steps


def test_prefetching_does_nothing_until_the_registry_has_said_it_wants_bearer():
    registry = Registry()
    assert prefetch(registry) == []
    registry.run(challenged(BASIC), ok())
    assert prefetch(registry) == []


def test_prefetching_fetches_the_token_once_and_the_next_request_uses_it():
    registry = Registry()
    registry.run(challenged(BEARER), token_answer("t1"), ok())
    registry.tokens = TokenCache()  # e.g. another scope: nothing cached for it
    [fetch] = prefetch(registry, token_answer("t2"))
    assert isinstance(fetch, TokenFetch) and fetch.key == (REGISTRY, SCOPES)
    assert prefetch(registry) == []  # cached now
    steps, _ = registry.run(ok())
    assert [authorization(s) for s in steps] == ["Bearer t2"]


# --- what a token server's answer means --------------------------------------------------------


@pytest.mark.parametrize(("answer", "credential", "error", "words"), [
    (Answer(401), ALICE, Unauthorized, "token server refused the credentials"),
    (Answer(403), None, Unauthorized, "none are configured (anonymous token refused)"),
    (Answer(503), ALICE, RegistryUnavailable, "token server unavailable"),
    (Answer(400, body=b'{"errors":[{"code":"DENIED","message":"no"}]}'), ALICE, RegistryProtocolError, "DENIED: no"),
    (Answer(200, body=b"<html>"), ALICE, RegistryProtocolError, "not JSON"),
])
def test_token_server_answers(answer, credential, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        token_from_answer(answer, NOW, registry=REGISTRY, repository="team/app", credential=credential)


def test_a_token_server_failure_inside_the_flow_propagates():
    with pytest.raises(Unauthorized, match="refused the credentials"):
        Registry().run(challenged(BEARER), Answer(401, (), REALM, b""))


def test_the_challenge_cache_stays_bounded():
    cache = ChallengeCache(max_entries=2)
    for host in ("a", "b", "c"):
        cache.put(host, Challenge("basic"))
    assert cache.get("c") == Challenge("basic") and sum(cache.get(h) is not None for h in "abc") <= 2
