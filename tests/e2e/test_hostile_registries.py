"""One slow or hostile registry never slows anyone else (README "Deadlines and bulkheads").

Through ``dist/imgrep.pyz`` over TLS, as the API server speaks to it, with registries
that trickle their answers a byte at a time or accept connections and never answer.
"""

from __future__ import annotations

import threading
import time

from tests.e2e.reviews import absent, assert_denied, decide
from tests.helpers.engine import unique
from tests.helpers.hostile import HostileRegistry
from tests.helpers.images import make_image, push_image
from tests.helpers.reviews import pod, review

#: a short budget keeps these tests quick; the behaviour does not depend on its length
BUDGET = 2.0
#: what a loaded machine may add to an answer's time
SLACK = 2.0


def hostile_env(base_env: dict[str, str], *peers: HostileRegistry, **env: str) -> dict[str, str]:
    insecure = ",".join([base_env["INSECURE_REGISTRIES"], *(p.host for p in peers)])
    return {"INSECURE_REGISTRIES": insecure, "ADMISSION_BUDGET_SECONDS": str(BUDGET), **env}


def timed(webhook, sent: dict) -> tuple[dict, float]:
    started = time.monotonic()
    answer = decide(webhook, sent)
    return answer, time.monotonic() - started


def test_a_pod_of_trickling_images_leaves_healthy_admissions_alone(start_webhook, base_env, present):
    with HostileRegistry("trickle_headers") as trickler:
        webhook = start_webhook(**hostile_env(base_env, trickler))
        images = [f"{trickler.host}/app{i}:v1" for i in range(40)]

        denied, first = timed(webhook, review(pod(*images)))
        healthy, second = timed(webhook, review(pod(present)))

        assert first < BUDGET + SLACK
        assert_denied(denied, trickler.host, "registry unreachable")
        assert healthy["allowed"] is True, healthy
        assert second < 1.0
        # every trickling lookup was abandoned at its own deadline: nothing is left open
        assert trickler.wait_until_closed(BUDGET + SLACK) == 0


def test_a_host_that_never_answers_cannot_fill_the_check_pool(start_webhook, base_env, registry_noauth):
    with HostileRegistry("hang") as hanging:
        webhook = start_webhook(**hostile_env(base_env, hanging))
        flood = review(pod(*(f"{hanging.host}/app{i}:v1" for i in range(100))), dry_run=True)
        attacks, healthy = [], []
        for _ in range(3):  # a dry-run Pod naming the host 100 times, sent again and again
            attacker = threading.Thread(target=lambda: attacks.append(decide(webhook, flood)))
            attacker.start()
            try:
                time.sleep(0.3)  # its lookups now hold every thread they can get
                fresh = unique("fresh")
                push_image(registry_noauth, fresh, "v1", make_image(seed=fresh))
                healthy.append(timed(webhook, review(pod(f"{registry_noauth.host}/{fresh}:v1",
                                                         absent(registry_noauth)))))
            finally:
                attacker.join(BUDGET + SLACK)

        assert len(attacks) == 3
        for answer in attacks:
            assert_denied(answer, hanging.host)
        for answer, elapsed in healthy:
            assert elapsed < 1.0, elapsed
            assert_denied(answer, "not found")  # the absent image, checked cold: nothing else
            assert hanging.host not in answer["status"]["message"]
            assert "unreachable" not in answer["status"]["message"]


def test_a_hanging_source_still_lets_the_target_vouch_inside_the_budget(start_webhook, base_env, registry_noauth):
    """The most common outage (packets dropped): the source never answers, the mirror has the image."""
    with HostileRegistry("hang") as hanging:
        repository = unique("mirror")
        push_image(registry_noauth, repository, "v1", make_image(seed=repository))
        webhook = start_webhook(**hostile_env(base_env, hanging, TARGET_REGISTRY=registry_noauth.host))

        answer, elapsed = timed(webhook, review(pod(f"{hanging.host}/{repository}:v1")))

        assert elapsed < BUDGET + SLACK
        assert answer["allowed"] is True, answer
        assert any("served from target" in w for w in answer.get("warnings", [])), answer
