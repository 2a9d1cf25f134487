"""`chalice package` builds a deployable SAM template offline, with the policy, environment and
handler this project promises, so packaging cannot rot unseen.

Offline: requirements.txt names boto3 and python-dotenv, and chalice would `pip download`
them. The test packages a copy of the project whose requirements.txt is empty (the template
does not depend on it), and points pip and every HTTP client at a dead proxy so any attempt to
reach the network fails the test instead of passing slowly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHALICE = Path(sys.executable).with_name("chalice")
STAGE_MEMORY = {"dev": 512, "prod": 1024}


# What a deployer puts into stage dev before `chalice deploy --stage dev` (docs/deploying.md): the
# clone ships without it, so that `chalice local`, which runs stage dev, uses the local queue.
DEV_QUEUE_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/tune-firehose-dev"


def deployable_config() -> dict[str, Any]:
    """.chalice/config.json as the deployer has it: dev's QUEUE_URL filled in, the rest as shipped."""
    deployable = config()
    deployable["stages"]["dev"].setdefault("environment_variables", {}).setdefault("QUEUE_URL", DEV_QUEUE_URL)
    return deployable


def package(tmp_path: Path, stage: str, *extra: str) -> tuple[dict[str, Any], Path]:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "app.py", project)
    shutil.copytree(ROOT / "chalicelib", project / "chalicelib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / ".chalice", project / ".chalice", ignore=shutil.ignore_patterns("deployments", "deployed"))
    (project / ".chalice" / "config.json").write_text(json.dumps(deployable_config(), indent=2))
    (project / "requirements.txt").write_text("")
    out = tmp_path / "out"
    env = {
        **os.environ,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "PIP_NO_INDEX": "1",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "",
    }
    done = subprocess.run(
        [str(CHALICE), "package", "--stage", stage, *extra, str(out)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads((out / "sam.json").read_text()), out / "deployment.zip"


def config() -> dict[str, Any]:
    return json.loads((ROOT / ".chalice" / "config.json").read_text())


def queue_arn(queue_url: str) -> str:
    """https://sqs.REGION.amazonaws.com/ACCOUNT/NAME -> arn:aws:sqs:REGION:ACCOUNT:NAME"""
    parsed = urlparse(queue_url)
    region = parsed.netloc.split(".")[1]
    account, name = parsed.path.strip("/").split("/")
    return f"arn:aws:sqs:{region}:{account}:{name}"


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_package_has_the_handler_environment_and_least_privilege_policy(tmp_path: Path, stage: str) -> None:
    template, zip_path = package(tmp_path, stage)
    resources = template["Resources"]
    handler = resources["APIHandler"]["Properties"]
    stage_env = deployable_config()["stages"][stage]["environment_variables"]

    assert handler["Handler"] == "app.app"
    assert handler["Runtime"] == f"python{sys.version_info.major}.{sys.version_info.minor}"
    assert handler["MemorySize"] == STAGE_MEMORY[stage]
    assert handler["Timeout"] == 30  # API Gateway gives up after 29 s
    assert handler["Environment"]["Variables"] == stage_env
    assert "FIREHOSE_TOKEN" not in stage_env  # a secret is never committed
    assert urlparse(stage_env["QUEUE_URL"]).path.endswith(f"/tune-firehose-{stage}")

    role = handler["Role"]["Fn::GetAtt"][0]
    [policy] = resources[role]["Properties"]["Policies"]
    document = policy["PolicyDocument"]
    assert document == json.loads((ROOT / ".chalice" / f"policy-{stage}.json").read_text())
    sqs = [s for s in document["Statement"] if any(a.startswith("sqs:") for a in s["Action"])]
    assert [sorted(s["Action"]) for s in sqs] == [["sqs:GetQueueAttributes", "sqs:SendMessage"]]
    assert sqs[0]["Resource"] == queue_arn(stage_env["QUEUE_URL"])  # the queue the stage sends to
    for statement in document["Statement"]:
        assert statement["Effect"] == "Allow"
        assert all(a.split(":")[0] in ("sqs", "logs") and "*" not in a for a in statement["Action"])
        resources_ = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        assert all(r != "*" and f"tune-firehose-{stage}" in r for r in resources_)

    with zipfile.ZipFile(zip_path) as z:
        names = set(z.namelist())
    assert {"app.py", "chalicelib/ingest.py", "chalicelib/queues/sqs.py"} <= names
    assert not any(n.startswith(("db/", "tests/", ".chalice/")) for n in names)


def test_token_is_a_deploy_time_parameter(tmp_path: Path) -> None:
    template, _ = package(tmp_path, "prod", "--merge-template", ".chalice/firehose-token.json")
    variables = template["Resources"]["APIHandler"]["Properties"]["Environment"]["Variables"]
    assert variables["FIREHOSE_TOKEN"] == {"Ref": "FirehoseToken"}
    assert variables["QUEUE_URL"] == config()["stages"]["prod"]["environment_variables"]["QUEUE_URL"]
    assert template["Parameters"]["FirehoseToken"]["NoEcho"] is True
