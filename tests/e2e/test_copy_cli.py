"""``imgrep.pyz copy``: the webhook's engine from the command line, checked with skopeo."""

from __future__ import annotations

import hashlib
import subprocess
import sys

from tests.helpers.images import make_index, push_image
from tests.helpers.skopeo import inspect_raw


def test_copy_command_replicates_every_platform_and_prints_the_digest(zipapp, registry_token, registry_basic):
    index = make_index(layers=1, layer_size=1_500_000, seed="copy-cli")
    digest = push_image(registry_token, "cli/app", "v3", index)
    (source_user, source_password), (target_user, target_password) = (registry_token.credentials,
                                                                      registry_basic.credentials)
    env = {"PATH": "/usr/bin:/bin", "INSECURE_REGISTRIES": f"{registry_token.host},{registry_basic.host}",
           "REGISTRY_SRC_URL": registry_token.host, "REGISTRY_SRC_USERNAME": source_user,
           "REGISTRY_SRC_PASSWORD": source_password, "REGISTRY_DST_URL": registry_basic.host,
           "REGISTRY_DST_USERNAME": target_user, "REGISTRY_DST_PASSWORD": target_password}

    done = subprocess.run([sys.executable, str(zipapp), "copy", f"docker://{registry_token.host}/cli/app:v3",
                           f"{registry_basic.host}/mirror/cli/app", "--progress"],
                          env=env, capture_output=True, text=True, timeout=60, check=False)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == digest
    assert "copied" in done.stderr and "MiB" in done.stderr
    target = f"docker://{registry_basic.host}/mirror/cli/app"
    assert "sha256:" + hashlib.sha256(inspect_raw(f"{target}:v3", creds=registry_basic.credentials)).hexdigest() \
        == digest
    for child in index.children:
        raw = inspect_raw(f"{target}@{child.digest}", creds=registry_basic.credentials)
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == child.digest
    assert source_password not in done.stderr + done.stdout and target_password not in done.stderr + done.stdout
