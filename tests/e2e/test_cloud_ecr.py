"""With only a projected service-account token, ``imgrep.pyz copy`` and the webhook replicate into ECR.

moto plays STS and ECR in the test process; a docker-registry whose htpasswd holds
what ECR hands out plays the registry. imgrep's environment names IRSA's variables
(as EKS injects them), the endpoint overrides and the registry as an ECR host,
and holds no password at all.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from tests.e2e.reviews import decide
from tests.helpers.aws import ECR_CREDENTIALS, Aws, web_identity_token
from tests.helpers.engine import unique
from tests.helpers.images import make_image, push_image
from tests.helpers.registry import RegistryServer
from tests.helpers.reviews import pod, review
from tests.helpers.skopeo import inspect_raw

#: admissions retried while the copy runs in the background ("replicating, retry shortly")
ADMISSION_ATTEMPTS = 40


def irsa_environment(aws: Aws, tmp_path, source: RegistryServer, target: RegistryServer) -> dict[str, str]:
    return {**aws.environment(web_identity_token(tmp_path / "token"), target.host),
            "INSECURE_REGISTRIES": f"{source.host},{target.host}"}


def test_copy_command_replicates_into_a_repository_ecr_did_not_have(zipapp, aws, tmp_path, registry_noauth,
                                                                     ecr_registry):
    aws.reset()
    repository = unique("e2e-ecr/app")
    digest = push_image(registry_noauth, repository, "v1", make_image(seed=repository))
    env = {"PATH": "/usr/bin:/bin", **irsa_environment(aws, tmp_path, registry_noauth, ecr_registry)}

    done = subprocess.run([sys.executable, str(zipapp), "copy", f"{registry_noauth.host}/{repository}:v1",
                           f"{ecr_registry.host}/mirror/{repository}"], env=env, capture_output=True, text=True,
                          timeout=120, check=False)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == digest
    assert aws.calls("CreateRepository") == 1 and aws.calls("AssumeRoleWithWebIdentity") == 1
    assert f"mirror/{repository}" in {r["repositoryName"] for r in
                                      aws.client("ecr").describe_repositories()["repositories"]}
    assert inspect_raw(f"docker://{ecr_registry.host}/mirror/{repository}:v1", creds=ECR_CREDENTIALS)
    assert ECR_CREDENTIALS[1] not in done.stdout + done.stderr


def test_the_webhook_replicates_into_ecr_and_says_which_provider_it_uses(start_webhook, aws, tmp_path,
                                                                          registry_noauth, ecr_registry):
    aws.reset()
    repository = unique("e2e-ecr/web")
    push_image(registry_noauth, repository, "v1", make_image(seed=repository))
    webhook = start_webhook(**irsa_environment(aws, tmp_path, registry_noauth, ecr_registry),
                            TARGET_REGISTRY=f"{ecr_registry.host}/mirror")
    image = f"{registry_noauth.host}/{repository}:v1"

    for _attempt in range(ADMISSION_ATTEMPTS):
        response = decide(webhook, review(pod(image)))
        if response["allowed"]:
            break
        assert "replicating, retry shortly" in response["status"]["message"], response
        time.sleep(0.25)

    assert response["allowed"], response
    assert aws.calls("CreateRepository") == 1
    assert inspect_raw(f"docker://{ecr_registry.host}/mirror/{repository}:v1", creds=ECR_CREDENTIALS)
    started = next(r for r in webhook.log_records() if r.get("event") == "started")
    assert started["config"]["cloud"]["registries"] == {ecr_registry.host: "ecr (eu-west-1)"}
    assert any(r.get("event") == "credentials_renewed" and r.get("provider") == "ecr" for r in webhook.log_records())
    output = webhook.output()
    assert ECR_CREDENTIALS[1] not in output and "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ" not in output
    assert json.dumps(response).count(ECR_CREDENTIALS[1]) == 0
