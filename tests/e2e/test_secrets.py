"""No secret leaves the process: not in logs, metrics or admission answers, whatever happens."""

from __future__ import annotations

import base64
import json
import uuid

from tests.helpers.images import make_image, push_image
from tests.helpers.registry import RegistryServer
from tests.helpers.reviews import pod, review
from tests.helpers.tokenserver import TokenServer


def test_secrets_appear_nowhere_in_output_metrics_or_answers(start_webhook, registry_basic):
    with TokenServer() as tokens, RegistryServer(auth="token", token_server=tokens) as bearer:
        user, password = tokens.credentials
        basic_user, basic_password = registry_basic.credentials
        push_image(bearer, "team/app", "v1", make_image(seed="secrets"))
        push_image(registry_basic, "team/app", "v1", make_image(seed="secrets-basic"))
        wrong_auth = base64.b64encode(f"{user}:wrong-{password}".encode()).decode()
        identity = "refresh-" + uuid.uuid4().hex
        docker_config = {"auths": {
            bearer.host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()},
            "127.0.0.1:2": {"identitytoken": identity},
            "127.0.0.1:3": {"auth": wrong_auth},
        }}
        secrets = {password, basic_password, identity, wrong_auth,
                   base64.b64encode(f"{user}:{password}".encode()).decode(),
                   base64.b64encode(f"{basic_user}:{basic_password}".encode()).decode()}
        webhook = start_webhook(DOCKER_CONFIG_JSON=json.dumps(docker_config), DEBUG="true",
                                INSECURE_REGISTRIES=f"{bearer.host},{registry_basic.host}",
                                REGISTRY_REFUSED_URL="127.0.0.1:4", REGISTRY_REFUSED_USERNAME="u",
                                REGISTRY_REFUSED_PASSWORD=basic_password)
        answers = [
            webhook.admit(review(pod(f"{bearer.host}/team/app:v1", f"{registry_basic.host}/team/app:v1"))),
            webhook.admit(review(pod(f"{bearer.host}/team/missing:v1", f"{registry_basic.host}/team/app:nope"))),
            webhook.admit(review(pod("127.0.0.1:2/x:1", "127.0.0.1:3/y:2", "127.0.0.1:4/z:3"))),
            webhook.admit(review(pod(f"{bearer.host}/team/app:v1", namespace="kube-system"))),
        ]
        assert answers[0]["response"]["allowed"] is True  # the credentials really were used
        metrics = webhook.health("/metrics")[2].decode()
        webhook.stop()
        output = webhook.output()

    everything = output + metrics + json.dumps(answers)
    leaked = [s for s in secrets if s in everything]
    assert not leaked, f"{len(leaked)} secret(s) leaked"
    assert "started" in output and "admission" in output  # the output really was captured
