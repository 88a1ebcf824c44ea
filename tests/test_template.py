"""template.yaml: lints clean (as SAM and as the CloudFormation SAM turns it into), every handler it
names imports, and every variable the code reads is set in it."""

from __future__ import annotations

import copy
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from replies_engine.config import Settings

from .aws import TEMPLATE, template

CFN_LINT = Path(sys.executable).with_name("cfn-lint")

# Variables the code reads that the Lambda functions must not get: the embedded engine's own, and
# TWILIO_AUTH_TOKEN, which in AWS comes from Secrets Manager (TWILIO_SECRET_NAME) instead.
LOCAL_ONLY = {
    "REPLIES_SQLITE_PATH",
    "REPLIES_SQLITE_BUSY_TIMEOUT_MS",
    "REPLIES_VISIBILITY_TIMEOUT_SECONDS",
    "SWEEP_INTERVAL_SECONDS",
    "BATCH_WINDOW_SECONDS",
    "BATCH_CONCURRENCY",  # Lambda's concurrency is the event source mapping's
    "REPLY_CONCURRENCY",
    "OPERATOR_TOKEN",  # the inbox of `serve`: no Lambda serves it
    "TWILIO_AUTH_TOKEN",
}


def lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CFN_LINT, str(path)], capture_output=True, text=True, timeout=120)


def translate(document: dict) -> dict:
    """What `sam deploy` hands CloudFormation (samtranslator, offline; code as `sam package` leaves it)."""
    from samtranslator.translator.transform import transform

    class NoManagedPolicies:
        def load(self) -> dict:
            return {}

    document = copy.deepcopy(document)
    document["Globals"]["Function"]["CodeUri"] = "s3://bucket/replies-engine.zip"
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return transform(document, {}, NoManagedPolicies())


def test_the_template_lints_clean():
    result = lint(TEMPLATE)

    assert result.returncode == 0, result.stdout + result.stderr


def test_the_cloudformation_it_becomes_lints_clean(tmp_path):
    translated = tmp_path / "translated.json"
    translated.write_text(json.dumps(translate(template())))

    result = lint(translated)

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t["Resources"]["BatchProcessorLambda"]["Properties"]["Events"]["Sms"].update(Type="SQSS"),
        lambda t: t["Resources"]["BatchProcessorLambda"]["Properties"]["Events"]["Sms"]["Properties"].update(
            BatchSize=100000
        ),
        lambda t: t["Globals"]["Function"].update(Runtime="python2.1"),
        lambda t: t["Resources"]["ConversationsTable"]["Properties"]["GlobalSecondaryIndexes"][0][
            "KeySchema"
        ][0].update(AttributeName="not_defined"),
    ],
    ids=["event type typo", "batch size", "runtime", "undefined index key"],
)
def test_the_lint_catches_a_broken_template(tmp_path, mutate):
    broken = template()
    mutate(broken)
    try:
        translated = translate(broken)
    except Exception:
        return  # SAM itself refused it
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(translated))

    assert lint(path).returncode != 0


def functions() -> dict:
    return {k: v for k, v in template()["Resources"].items() if v["Type"] == "AWS::Serverless::Function"}


def test_the_four_functions_of_the_design_are_there():
    assert set(functions()) == {
        "IncomingWebhookHandler",
        "BatchProcessorLambda",
        "ReplySenderLambda",
        "StalledConversationSweeper",
    }


@pytest.mark.parametrize("name", sorted(functions()))
def test_every_handler_imports(name):
    module, _, function = functions()[name]["Properties"]["Handler"].rpartition(".")

    assert callable(getattr(importlib.import_module(module), function))


def test_every_variable_the_code_reads_is_set_in_the_template():
    read = []

    class Recording(dict):
        def get(self, key, default=None):
            read.append(key)
            return default

    Settings.from_env(Recording())
    variables = template()["Globals"]["Function"]["Environment"]["Variables"]

    missing = sorted(set(read) - set(variables) - LOCAL_ONLY)
    assert missing == []
    assert "CONVERSATIONS_TABLE" in read and len(read) > 20  # the recording saw the reads


def test_queues_outlive_their_consumers():
    """A visibility timeout shorter than the consumer's timeout makes SQS hand a batch out twice."""
    resources = template()["Resources"]
    for function in functions().values():
        timeout = function["Properties"].get("Timeout", 3)
        for event in function["Properties"].get("Events", {}).values():
            if event["Type"] == "SQS":
                queue = event["Properties"]["Queue"]["Fn::GetAtt"].split(".")[0]
                assert resources[queue]["Properties"]["VisibilityTimeout"] >= 6 * timeout, queue


def test_timeouts_hold_end_to_end():
    """Reading the files (MEDIA_WAIT_SECONDS) and the responder's worst case (every attempt and backoff)
    fit the reply function, which fits the lock's lease, as does a failed reply's wait before its retry; and one AI context per invocation,
    so nobody waits for another person's AI call."""
    from replies_engine.replies.responders import OpenAIResponder

    variables = template()["Globals"]["Function"]["Environment"]["Variables"]
    settings = Settings.from_env({k: v for k, v in variables.items() if isinstance(v, str)})
    responder = OpenAIResponder(
        "https://model.example/v1",
        None,
        "m",
        timeout_seconds=settings.responder_timeout_seconds,
        attempts=settings.responder_attempts,
    )
    reply = functions()["ReplySenderLambda"]["Properties"]

    from replies_engine.replies.pipeline import RETRY_MAX_WAIT_SECONDS

    assert (
        settings.media_wait_seconds + responder.max_seconds + 15
        <= reply["Timeout"]
        < settings.lock_timeout_seconds
    )
    # a failed reply comes back (at most 120 s later) while its lease still holds
    assert settings.lock_timeout_seconds > RETRY_MAX_WAIT_SECONDS
    trigger = reply["Events"]["Ai"]["Properties"]
    assert trigger["BatchSize"] == 1
    assert trigger["ScalingConfig"]["MaximumConcurrency"] == {"Ref": "ReplyConcurrency"}


def test_a_plain_install_serves_and_the_lambda_package_stays_lean():
    """`pip install replies-engine` then `replies-engine serve` works (issue 11); `sam build` installs
    src/requirements.txt, which leaves the local server's libraries out of the functions."""
    import tomllib

    root = Path(__file__).resolve().parent.parent
    installed = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    packaged = (root / "src" / "requirements.txt").read_text()

    assert {"starlette", "uvicorn"} <= {d.split(">")[0].split("[")[0] for d in installed}
    assert "starlette" not in packaged and "uvicorn" not in packaged


def deployed(api_type: str) -> dict:
    """The translated template's resources and outputs as CloudFormation creates them with
    ApiType=`api_type`: conditional resources left out, `Fn::If` resolved."""
    document = translate(template())
    conditions = {"UseRestApi": api_type == "REST", "UseHttpApi": api_type == "HTTP"}

    def resolve(node):
        if isinstance(node, dict):
            if set(node) == {"Fn::If"}:
                condition, then, otherwise = node["Fn::If"]
                return resolve(then if conditions[condition] else otherwise)
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    def kept(item):
        return conditions.get(item.get("Condition"), True)

    return {
        "Resources": {k: resolve(v) for k, v in document["Resources"].items() if kept(v)},
        "Outputs": {k: resolve(v) for k, v in document["Outputs"].items() if kept(v)},
    }


def references(node) -> set[str]:
    """The logical ids `node` names through Ref, GetAtt and Sub."""
    import re

    if isinstance(node, list):
        return set().union(*map(references, node)) if node else set()
    if not isinstance(node, dict):
        return set()
    found = set().union(*map(references, node.values())) if node else set()
    if "Ref" in node:
        found.add(node["Ref"])
    if "Fn::GetAtt" in node:
        target = node["Fn::GetAtt"]
        found.add(target[0] if isinstance(target, list) else target.split(".")[0])
    if "Fn::Sub" in node:
        text = node["Fn::Sub"] if isinstance(node["Fn::Sub"], str) else node["Fn::Sub"][0]
        local = set(node["Fn::Sub"][1]) if isinstance(node["Fn::Sub"], list) else set()
        found |= {name.split(".")[0] for name in re.findall(r"\$\{([^}!]+)\}", text)} - local
    return found


@pytest.mark.parametrize("api_type, api", [("REST", "RepliesApi"), ("HTTP", "RepliesHttpApi")])
def test_either_api_type_deploys_one_api_that_reaches_the_webhook_handler(api_type, api):
    stack = deployed(api_type)
    resources = stack["Resources"]
    parameters = set(template()["Parameters"])

    apis = {
        k for k, v in resources.items() if v["Type"] in {"AWS::ApiGateway::RestApi", "AWS::ApiGatewayV2::Api"}
    }
    assert apis == {api}
    # every POST reaches the handler, which routes by path
    (route,) = resources[api]["Properties"]["Body"]["paths"].values()
    assert "IncomingWebhookHandler" in references(route["post"]["x-amazon-apigateway-integration"]["uri"])
    permission = resources["WebhookInvokePermission"]["Properties"]
    assert references(permission["SourceArn"]) & set(resources) == {api}
    for name in ["WhatsAppWebhookUrl", "SmsWebhookUrl", "EmailWebhookUrl", "StatusCallbackUrl"]:
        assert api in references(stack["Outputs"][name]["Value"]), name
    # nothing names a resource this choice leaves out
    for name, resource in resources.items():
        dangling = references(resource) - set(resources) - parameters
        assert {r for r in dangling if not r.startswith("AWS::")} == set(), name
