"""`python -m imgrep check IMAGE...` as an operator runs it (SPEC "Build and run").

One line per image (status, image, digest, reason), exit 0 when all exist, 1 when
any is missing, 2 on any error; a bad environment value is one line on stderr that
names the variable, and no secret ever reaches the output.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.engine import unique
from tests.helpers.images import make_image, make_index, push_image
from tests.helpers.peer import Reply, ScriptedPeer, Seen
from tests.helpers.ports import refusing_port
from tests.helpers.registry import RegistryServer

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def rows(self) -> list[list[str]]:
        return [line.split("\t") for line in self.stdout.splitlines()]


def run_imgrep(*args: str, env: dict[str, str] | None = None) -> Run:
    """imgrep from the checkout, with only the environment a test gives (nothing inherited from this shell)."""
    environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", **(env or {})}
    done = subprocess.run([sys.executable, "-m", "imgrep", *args], cwd=ROOT, env=environ, capture_output=True,
                          text=True, timeout=TIMEOUT_SECONDS, check=False)
    return Run(done.returncode, done.stdout, done.stderr)


def credentials_env(registry: RegistryServer, password: str | None = None) -> dict[str, str]:
    user, real_password = registry.credentials
    return {"REGISTRY_CHECK_URL": registry.host, "REGISTRY_CHECK_USERNAME": user,
            "REGISTRY_CHECK_PASSWORD": password or real_password}


@pytest.fixture(scope="module")
def images(registry_noauth: RegistryServer, registry_basic: RegistryServer) -> dict[str, tuple[str, str]]:
    """name → (reference, digest) of images pushed for this module."""
    repository = unique("cli/image")
    image, index = make_image(seed="cli-image"), make_index(seed="cli-index")
    return {
        "plain": (f"{registry_noauth.host}/{repository}:v1", push_image(registry_noauth, repository, "v1", image)),
        "index": (f"{registry_noauth.host}/{repository}:multi", push_image(registry_noauth, repository, "multi", index)),
        "private": (f"{registry_basic.host}/{repository}:v1", push_image(registry_basic, repository, "v1", image)),
    }


def test_existing_images_exit_0_with_one_line_each(images, registry_noauth, registry_basic) -> None:
    plain, plain_digest = images["plain"]
    index, index_digest = images["index"]
    private, private_digest = images["private"]
    by_digest = plain.rsplit(":", 1)[0] + "@" + plain_digest

    run = run_imgrep("check", plain, f"docker://{index}", by_digest, private,
                     env={"INSECURE_REGISTRIES": f"{registry_noauth.host},{registry_basic.host}",
                          **credentials_env(registry_basic)})

    assert run.code == 0, run
    assert [row[0] for row in run.rows] == ["exists"] * 4
    assert [row[1] for row in run.rows] == [plain, index, by_digest, private]
    assert [row[2] for row in run.rows] == [plain_digest, index_digest, plain_digest, private_digest]


def test_a_missing_image_exits_1_and_says_not_found(images, registry_noauth) -> None:
    plain, digest = images["plain"]
    missing = plain.rsplit(":", 1)[0] + ":no-such-tag"

    run = run_imgrep("check", plain, missing, env={"INSECURE_REGISTRIES": registry_noauth.host})

    assert run.code == 1, run
    assert run.rows[0][:3] == ["exists", plain, digest]
    status, image, shown_digest, reason = run.rows[1]
    assert (status, image, shown_digest) == ("missing", missing, "-")
    assert reason.startswith("not found")


def test_an_invalid_reference_or_unreachable_registry_exits_2(images, registry_noauth) -> None:
    plain, _digest = images["plain"]
    invalid = "UPPER/Case:tag"
    with refusing_port() as port:
        nobody = f"127.0.0.1:{port}/team/app:v1"
        run = run_imgrep("check", plain, invalid, nobody, env={"INSECURE_REGISTRIES": registry_noauth.host})

    assert run.code == 2, run
    assert [row[:2] for row in run.rows] == [["exists", plain], ["error", invalid], ["error", nobody]]
    assert run.rows[1][3].startswith("invalid reference")
    assert run.rows[2][3].startswith("registry unreachable")
    assert "Traceback" not in run.stderr


def test_schema1_and_html_answers_are_errors_that_say_what_they_are(images, registry_noauth) -> None:
    """A registry with only a schema 1 manifest, and a portal answering HTML for every path."""
    schema1 = json.dumps({"schemaVersion": 1, "name": "team/old", "tag": "v1", "fsLayers": [],
                          "history": [], "signatures": []}).encode()

    def answer(seen: Seen) -> Reply:
        if seen.headers.get("host", "").startswith("127.0.0.1"):
            return Reply(200, (("Content-Type", "application/vnd.docker.distribution.manifest.v1+prettyjws"),
                               ("Docker-Content-Digest", "sha256:" + hashlib.sha256(schema1).hexdigest())), schema1)
        return Reply(200, (("Content-Type", "text/html"),), b"<html><body>Sign in</body></html>")

    with ScriptedPeer(answer) as peer:
        old, portal = f"{peer.host}/team/old:v1", f"localhost:{peer.port}/team/app:v1"
        run = run_imgrep("check", old, portal, env={"INSECURE_REGISTRIES": f"{peer.host},localhost:{peer.port}"})

    assert run.code == 2, run
    assert [row[:3] for row in run.rows] == [["error", old, "-"], ["error", portal, "-"]]
    assert run.rows[0][3].startswith("unsupported manifest") and "schema 1" in run.rows[0][3]
    assert "not a manifest" in run.rows[1][3] and "text/html" in run.rows[1][3]


def test_missing_and_error_together_exit_2(images, registry_noauth) -> None:
    plain, _digest = images["plain"]
    run = run_imgrep("check", plain.rsplit(":", 1)[0] + ":absent", "a b c",
                     env={"INSECURE_REGISTRIES": registry_noauth.host})
    assert run.code == 2, run
    assert [row[0] for row in run.rows] == ["missing", "error"]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "abc"),
        ("CACHE_TTL_SECONDS", "-1"),
        ("DOCKER_CONFIG_JSON", "{bad"),
        ("MODE", "x"),
        ("INSECURE_REGISTRIES", "host with space"),
        ("DOCKER_CONFIG_PATH", "/nonexistent/config.json"),
        ("LOG_FORMAT", "xml"),
    ],
)
def test_a_bad_environment_value_is_one_line_naming_the_variable(variable: str, value: str) -> None:
    run = run_imgrep("check", "127.0.0.1:1/team/app:v1", env={variable: value})

    assert run.code == 2, run
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert variable in lines[0]
    assert "Traceback" not in run.stderr


def test_password_never_appears_in_the_output(images, registry_basic) -> None:
    private, _digest = images["private"]
    missing = private.rsplit(":", 1)[0] + ":absent"
    user, password = registry_basic.credentials
    wrong = f"wrong-{secrets.token_hex(6)}"
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    insecure = {"INSECURE_REGISTRIES": registry_basic.host}

    runs = {
        "named variables": run_imgrep("check", private, missing, env={**insecure, **credentials_env(registry_basic)}),
        "docker config auth": run_imgrep(
            "check", private, missing,
            env={**insecure, "DOCKER_CONFIG_JSON": json.dumps({"auths": {registry_basic.host: {"auth": auth}}})}),
        "wrong password": run_imgrep(
            "check", private, env={**insecure, **credentials_env(registry_basic, password=wrong)}),
    }

    assert runs["named variables"].code == 1 and runs["docker config auth"].code == 1
    assert runs["wrong password"].code == 2 and runs["wrong password"].rows[0][3].startswith("unauthorized")
    for name, run in runs.items():
        output = run.stdout + run.stderr
        for secret in (password, wrong, auth):
            assert secret not in output, f"{name}: a secret leaked into the output"
