"""template.yaml: lints clean (as SAM and as the CloudFormation SAM turns it into), every handler it
names imports, and every variable the code reads is set in it."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from replies_engine.config import Settings
from replies_engine.ports import SECRET_VARIABLES

from .aws import TEMPLATE, template, translate

CFN_LINT = Path(sys.executable).with_name("cfn-lint")
ROOT = TEMPLATE.parent

# Variables the code reads that the Lambda functions must not get: the embedded engine's own, and the
# secrets, which in AWS come from Secrets Manager (TWILIO_SECRET_NAME, ENGINE_SECRET_NAME) instead.
LOCAL_ONLY = set(SECRET_VARIABLES) | {
    "REPLIES_SQLITE_PATH",
    "HOME",  # with XDG_DATA_HOME: where the embedded database is by default
    "XDG_DATA_HOME",
    "REPLIES_SQLITE_BUSY_TIMEOUT_MS",
    "REPLIES_VISIBILITY_TIMEOUT_SECONDS",
    "SWEEP_INTERVAL_SECONDS",
    "BATCH_WINDOW_SECONDS",
    "BATCH_CONCURRENCY",  # Lambda's concurrency is the event source mapping's
    "REPLY_CONCURRENCY",
    "OPERATOR_TOKEN",  # the inbox of `serve`: no Lambda serves it yet
    "OPERATOR_SESSION_HOURS",
}


def lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CFN_LINT, str(path)], capture_output=True, text=True, timeout=120)


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


def test_the_four_functions_of_the_design_are_there_with_the_notifier_and_the_inbox():
    assert set(functions()) == {
        "IncomingWebhookHandler",
        "BatchProcessorLambda",
        "ReplySenderLambda",
        "StalledConversationSweeper",
        "HandoffNotifier",
        "OperatorInbox",
        "EmailFeedback",  # with EmailSender ses
        "SesEmailReceiver",  # with SesReceivingDomain
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
    variables = {**template()["Globals"]["Function"]["Environment"]["Variables"]}
    for function in functions().values():  # a function's own (the SES email function's bucket)
        variables.update(function["Properties"].get("Environment", {}).get("Variables", {}))

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


def test_the_floors_ci_installs_are_the_declared_lower_bounds():
    """`make test-floors` runs a smoke subset with .ci/floors.txt: each runtime dependency at the lowest
    version pyproject.toml and src/requirements.txt (the Lambda package) allow, so a bound is a tested one."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = (ROOT / "src" / "requirements.txt").read_text().splitlines()
    declared = [
        *map(Requirement, project["dependencies"] + project["optional-dependencies"]["aws"]),
        *(Requirement(line.split("#")[0]) for line in lines if line.split("#")[0].strip()),
    ]
    floors = dict(
        line.split("==") for line in (ROOT / ".ci" / "floors.txt").read_text().splitlines() if "==" in line
    )

    for requirement in declared:
        [lower] = [s.version for s in requirement.specifier if s.operator == ">="]
        assert Version(floors[requirement.name]) == Version(lower), requirement
    assert floors["botocore"] == floors["boto3"]  # boto3 pins its botocore


def test_a_plain_install_serves_and_the_lambda_package_stays_lean():
    """`pip install replies-engine` then `replies-engine serve` works; `sam build` installs
    src/requirements.txt, which leaves the local server's libraries out of the functions."""
    import tomllib

    root = Path(__file__).resolve().parent.parent
    installed = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    packaged = (root / "src" / "requirements.txt").read_text()

    assert {"starlette", "uvicorn"} <= {d.split(">")[0].split("[")[0] for d in installed}
    assert "starlette" not in packaged and "uvicorn" not in packaged


def parameter_values(document: dict, parameters: dict[str, str]) -> dict:
    """Each parameter's value: its default, or what `parameters` give; lists split as CloudFormation
    splits them ("" is [""])."""
    values = {}
    for name, parameter in document["Parameters"].items():
        value = parameters.get(name, parameter.get("Default", ""))
        values[name] = str(value).split(",") if "List" in parameter["Type"] else value
    return values


def value(node, values: dict):
    """`node`'s value where it depends on parameters only (Ref, Fn::Join, Fn::Split)."""
    if isinstance(node, list):
        return [value(v, values) for v in node]
    if isinstance(node, dict) and "Ref" in node:
        return values[node["Ref"]]
    if isinstance(node, dict) and "Fn::Join" in node:
        separator, items = node["Fn::Join"]
        return separator.join(map(str, value(items, values)))
    if isinstance(node, dict) and "Fn::Split" in node:
        separator, text = node["Fn::Split"]
        return value(text, values).split(separator)
    return node


def conditions(document: dict, parameters: dict[str, str]) -> dict[str, bool]:
    """The template's Conditions, evaluated on its parameters' defaults and `parameters`."""
    values = parameter_values(document, parameters)

    def evaluate(node) -> bool:
        [(function, argument)] = node.items()
        if function == "Condition":
            return evaluate(document["Conditions"][argument])
        if function == "Fn::Contains":  # Rules only
            return str(value(argument[1], values)) in [str(v) for v in value(argument[0], values)]
        if function == "Fn::Equals":
            return str(value(argument[0], values)) == str(value(argument[1], values))
        if function == "Fn::Not":
            return not evaluate(argument[0])
        if function == "Fn::And":
            return all(map(evaluate, argument))
        if function == "Fn::Or":
            return any(map(evaluate, argument))
        raise AssertionError(f"condition function {function} not evaluated here")

    return {name: evaluate(node) for name, node in document["Conditions"].items()}


def deployed(api_type: str = "REST", **parameters: str) -> dict:
    """The translated template's resources, outputs and rules as CloudFormation creates them with
    ApiType=`api_type` and `parameters`: conditional resources left out, `Fn::If` resolved."""
    document = translate(template())
    holds = conditions(document, {"ApiType": api_type, **parameters})

    no_value = {"Ref": "AWS::NoValue"}

    def resolve(node):
        if isinstance(node, dict):
            if set(node) == {"Fn::If"}:
                condition, then, otherwise = node["Fn::If"]
                return resolve(then if holds[condition] else otherwise)
            return {k: r for k, v in node.items() if (r := resolve(v)) != no_value}
        if isinstance(node, list):
            return [r for v in node if (r := resolve(v)) != no_value]
        return node

    def kept(item):
        return holds.get(item.get("Condition"), True)

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
    # every route the webhook handler serves, each a POST to it; the inbox's, to the inbox function
    paths = resources[api]["Properties"]["Body"]["paths"]
    webhooks = {"/whatsapp", "/sms", "/email", "/email/{provider}", "/twilio/status"}
    assert set(paths) == webhooks | {"/inbox", "/inbox/{proxy+}", "/api/{proxy+}"}
    for path, route in paths.items():
        [(method, operation)] = route.items()
        function = "IncomingWebhookHandler" if path in webhooks else "OperatorInbox"
        assert function in references(operation["x-amazon-apigateway-integration"]["uri"]), path
        assert method == "post" if path in webhooks else method in ("get", "x-amazon-apigateway-any-method")
    for permission in ("WebhookInvokePermission", "InboxInvokePermission"):
        assert references(resources[permission]["Properties"]["SourceArn"]) & set(resources) == {api}
    for name in ["WhatsAppWebhookUrl", "SmsWebhookUrl", "EmailWebhookUrl", "StatusCallbackUrl", "InboxUrl"]:
        assert api in references(stack["Outputs"][name]["Value"]), name
    # nothing names a resource this choice leaves out
    for name, resource in resources.items():
        dangling = references(resource) - set(resources) - parameters
        assert {r for r in dangling if not r.startswith("AWS::")} == set(), name


# --- safe as it ships --------------------------------------------------------------------------------


def failed_rules(**parameters: str) -> list[str]:
    """The template's Rules that refuse a deploy with `parameters` (CloudFormation checks them first)."""
    document = template()
    fake = {**document, "Conditions": {}}
    failed = []
    for name, rule in document["Rules"].items():
        fake["Conditions"] = {"rule": rule["RuleCondition"]} | {
            f"assert{i}": a["Assert"] for i, a in enumerate(rule["Assertions"])
        }
        holds = conditions(fake, parameters)
        if holds["rule"] and not all(v for k, v in holds.items() if k.startswith("assert")):
            failed.append(name)
    return failed


def test_prod_alarms_reach_someone_and_ses_names_its_identities():
    assert failed_rules() == []
    assert failed_rules(EnvironmentName="prod") == ["ProdAlarmsReachSomeone"]
    assert failed_rules(EnvironmentName="prod", AlarmEmail="ops@company.example") == []
    assert failed_rules(EmailSender="ses") == ["SesSendsFromKnownIdentities"]
    assert failed_rules(EmailSender="ses", SesIdentities="company.example") == []


def test_no_secret_reaches_a_functions_environment_or_the_template():
    document = template()
    variables = set(document["Globals"]["Function"]["Environment"]["Variables"])
    for function in functions().values():
        variables |= set(function["Properties"].get("Environment", {}).get("Variables", {}))

    assert variables & set(SECRET_VARIABLES) == set()
    assert {"TWILIO_SECRET_NAME", "ENGINE_SECRET_NAME"} <= variables
    assert [name for name, p in document["Parameters"].items() if p.get("NoEcho")] == []
    secret = document["Resources"]["EngineSecret"]["Properties"]["GenerateSecretString"]
    assert secret["GenerateStringKey"] == "EMAIL_WEBHOOK_TOKEN" and secret["PasswordLength"] >= 32


def get_att(node: dict) -> str:
    """The logical id a `Fn::GetAtt` names (either of its two forms)."""
    target = node["Fn::GetAtt"]
    return target[0] if isinstance(target, list) else target.split(".")[0]


def roles(stack: dict) -> dict[str, list[dict]]:
    """Each function's role's statements, by function."""
    resources = stack["Resources"]
    found = {}
    for name, function in resources.items():
        if function["Type"] == "AWS::Lambda::Function":
            role = resources[get_att(function["Properties"]["Role"])]["Properties"]
            assert "ManagedPolicyArns" not in role, name  # AWS's managed policies grant on every resource
            found[name] = [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]
    return found


def test_each_function_has_a_role_of_its_own_scoped_to_the_stacks_resources():
    stack = deployed()
    statements = roles(stack)

    assert len(statements) == 6 and len({id(s) for s in statements.values()}) == 6
    for function, granted in statements.items():
        for statement in granted:
            assert statement["Effect"] == "Allow" and set(statement) == {"Effect", "Action", "Resource"}
            if statement["Resource"] == "*":  # X-Ray's actions take no resource
                assert set(statement["Action"]) <= {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
            for action in statement["Action"]:
                assert "*" not in action, (function, action)
        logs = [s for s in granted if "logs:PutLogEvents" in s["Action"]]
        assert [get_att(s["Resource"]) for s in logs] == [f"{function}Logs"]


def test_ses_is_granted_only_with_ses_and_only_for_the_stacks_identities_and_configuration_set():
    def ses_grants(stack):
        return [s for granted in roles(stack).values() for s in granted if "ses:SendEmail" in s["Action"]]

    assert ses_grants(deployed()) == []
    identities = {"EmailSender": "ses", "SesIdentities": "company.example,support@other.example"}
    grants = ses_grants(deployed(**identities))  # the AI's replies, and the operators'
    identity = [g for g in grants if "Fn::Split" in g["Resource"]]
    through = [g["Resource"] for g in grants if "Fn::Sub" in g["Resource"]]
    assert len(identity) == len(through) == 2 and len(grants) == 4
    for grant in identity:
        assert value(grant["Resource"], parameter_values(template(), identities)) == [
            "arn:aws:ses:*:*:identity/company.example",
            "arn:aws:ses:*:*:identity/support@other.example",
        ]
    assert all(
        r == {"Fn::Sub": "arn:aws:ses:*:*:configuration-set/replies-engine-${EnvironmentName}"}
        for r in through
    )


@pytest.mark.parametrize("api_type", ["REST", "HTTP"])
def test_the_edge_logs_every_request_without_its_body_and_throttles_each_route(api_type):
    resources = deployed(api_type)["Resources"]
    [stage] = [
        v["Properties"]
        for v in resources.values()
        if v["Type"] in ("AWS::ApiGateway::Stage", "AWS::ApiGatewayV2::Stage")
    ]  # one stage: no stray "Stage" without throttling

    log = stage.get("AccessLogSetting") or stage["AccessLogSettings"]
    fields = json.loads(log["Format"])
    assert {"requestId", "ip", "status", "latencyMs"} <= set(fields)
    assert not any("body" in v.lower() for v in fields.values())
    if api_type == "REST":
        throttled = {m["ResourcePath"][1:].replace("~1", "/") for m in stage["MethodSettings"]}
        assert all(m["ThrottlingRateLimit"] > 0 for m in stage["MethodSettings"])
    else:
        throttled = {route.split(" ", 1)[1] for route in stage["RouteSettings"]}
    webhooks = {"/whatsapp", "/sms", "/email", "/email/{provider}", "/twilio/status"}
    assert throttled == webhooks | {"/inbox", "/inbox/{proxy+}", "/api/{proxy+}"}
    assert "WebAclAssociation" not in resources
    waf = "arn:aws:wafv2:us-east-1:123456789012:regional/webacl/edge/1"
    assert ("WebAclAssociation" in deployed(api_type, WafWebAclArn=waf)["Resources"]) == (api_type == "REST")


def test_the_webhook_keeps_its_concurrency_and_every_queue_trigger_is_capped():
    resources = deployed()["Resources"]

    webhook = resources["IncomingWebhookHandler"]["Properties"]
    assert webhook["ReservedConcurrentExecutions"] == {"Ref": "WebhookReservedConcurrency"}
    assert (
        "ReservedConcurrentExecutions"
        not in deployed(WebhookReservedConcurrency="0")["Resources"]["IncomingWebhookHandler"]["Properties"]
    )
    mappings = [v["Properties"] for v in resources.values() if v["Type"] == "AWS::Lambda::EventSourceMapping"]
    assert len(mappings) == 5
    assert all(m["ScalingConfig"]["MaximumConcurrency"] for m in mappings)


def test_alarms_watch_the_api_the_tables_every_queue_and_the_engines_own_metrics():
    resources = deployed()["Resources"]
    alarms = {k: v["Properties"] for k, v in resources.items() if v["Type"] == "AWS::CloudWatch::Alarm"}
    watched = json.dumps(alarms)

    assert all(a["AlarmActions"] == [{"Ref": "AlarmTopic"}] for a in alarms.values())
    queues = [k for k, v in resources.items() if v["Type"] == "AWS::SQS::Queue"]
    for queue in queues:
        metric = (
            "ApproximateNumberOfMessagesVisible" if queue.endswith("DLQ") else "ApproximateAgeOfOldestMessage"
        )
        assert any(metric in json.dumps(a) and queue in references(a) for a in alarms.values()), queue
    for metric in ("5XXError", "4XXError", "ReadThrottleEvents", "WriteThrottleEvents"):
        assert metric in watched
    for metric in ("ReplyInDoubt", "DeadLettered", "InvalidSignature"):
        assert any(
            a.get("Namespace") == "RepliesEngine" and a["MetricName"] == metric for a in alarms.values()
        )
    http = json.dumps(deployed("HTTP")["Resources"])
    assert '"5xx"' in http and '"4xx"' in http


def test_data_at_rest_is_encrypted_tls_only_and_protected_in_prod():
    dev, prod = (
        deployed()["Resources"],
        deployed(EnvironmentName="prod", AlarmEmail="ops@x.example")["Resources"],
    )
    tables = [k for k, v in dev.items() if v["Type"] == "AWS::DynamoDB::Table"]
    queues = [k for k, v in dev.items() if v["Type"] == "AWS::SQS::Queue"]

    assert all(prod[t]["Properties"]["DeletionProtectionEnabled"] is True for t in tables)
    assert all(dev[t]["Properties"]["DeletionProtectionEnabled"] is False for t in tables)
    assert all(dev[t]["Properties"]["SSESpecification"]["SSEEnabled"] for t in tables)
    assert all(dev[q]["Properties"]["SqsManagedSseEnabled"] is True for q in queues)
    [policy] = [v["Properties"] for v in dev.values() if v["Type"] == "AWS::SQS::QueuePolicy"]
    assert sorted(q["Ref"] for q in policy["Queues"]) == sorted(queues)
    [deny] = policy["PolicyDocument"]["Statement"]
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert sorted(map(get_att, deny["Resource"])) == sorted(queues)
    key = dev["AlarmTopic"]["Properties"]["KmsMasterKeyId"]["Ref"]
    principals = json.dumps(dev[key]["Properties"]["KeyPolicy"])
    assert "cloudwatch.amazonaws.com" in principals  # or alarms cannot publish to the encrypted topic


def test_checkov_finds_only_what_docs_security_md_justifies(tmp_path):
    """checkov (pinned, in its own environment: `make test` installs it) on the translated template."""
    checkov = os.environ.get("CHECKOV") or str(ROOT / ".venv-checkov" / "bin" / "checkov")
    if not Path(checkov).exists():
        pytest.fail(f"no checkov at {checkov}: `make test` installs it")
    translated = tmp_path / "translated.json"
    translated.write_text(json.dumps(translate(template())))

    result = subprocess.run(
        [
            checkov,
            "-f",
            str(translated),
            "--framework",
            "cloudformation",
            "--skip-download",
            "-o",
            "json",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )

    report = json.loads(result.stdout)
    assert report["summary"]["parsing_errors"] == 0
    found: dict[str, set[str]] = {}
    for failure in report["results"]["failed_checks"]:
        found.setdefault(failure["check_id"], set()).add(failure["resource"].rpartition(".")[2])
    justified = {}
    for line in (ROOT / "docs" / "security.md").read_text().splitlines():
        if line.startswith("| CKV_"):
            check, resources, why = (cell.strip() for cell in line.strip("|").split("|"))
            assert why, check
            justified[check] = set(resources.split(", "))
    assert found == justified


def test_with_ses_the_email_feedback_function_keeps_what_fails_and_is_watched():
    resources = deployed(EmailSender="ses", SesIdentities="company.example")["Resources"]

    function = resources["EmailFeedback"]["Properties"]
    assert function["DeadLetterConfig"] == {"TargetArn": {"Fn::GetAtt": "EmailFeedbackDLQ.Arn"}}
    assert resources["EmailFeedbackFeedback"]["Properties"]["TopicArn"] == {"Ref": "EmailFeedbackTopic"}
    alarms = json.dumps({k: v for k, v in resources.items() if v["Type"] == "AWS::CloudWatch::Alarm"})
    assert "EmailFeedbackDLQ" in alarms
    [tls] = [
        v["Properties"]
        for v in resources.values()
        if v["Type"] == "AWS::SQS::QueuePolicy" and "EmailFeedbackDLQ" in json.dumps(v)
    ]
    assert tls["PolicyDocument"]["Statement"][0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert resources["SesFeedbackDestination"]["Properties"]["EventDestination"]["MatchingEventTypes"] == [
        "bounce",
        "complaint",
    ]


def test_ses_inbound_exists_only_with_a_receiving_domain_and_keeps_mail_private_and_brief():
    names = ("InboundMailBucket", "InboundMailRule", "SesEmailReceiver", "SesEmailDLQ", "SesEmailFailing")
    assert not set(names) & set(deployed()["Resources"])

    stack = deployed(SesReceivingDomain="replies.company.example", MessageRetentionDays="7")
    resources = stack["Resources"]

    bucket = resources["InboundMailBucket"]["Properties"]
    assert bucket["PublicAccessBlockConfiguration"] == dict.fromkeys(
        ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"), True
    )
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    [expiry] = bucket["LifecycleConfiguration"]["Rules"]
    assert expiry["ExpirationInDays"] == {"Ref": "MessageRetentionDays"} and expiry["Status"] == "Enabled"
    kept = deployed(SesReceivingDomain="replies.company.example")["Resources"]["InboundMailBucket"]
    assert kept["Properties"]["LifecycleConfiguration"]["Rules"][0]["ExpirationInDays"] == 30
    rule = resources["InboundMailRule"]["Properties"]["Rule"]
    assert rule["Recipients"] == [{"Ref": "SesReceivingDomain"}] and rule["ScanEnabled"] is True
    store, invoke = rule["Actions"]  # stored first, then the function told
    function = resources["SesEmailReceiver"]["Properties"]
    prefix = function["Environment"]["Variables"]["INBOUND_MAIL_PREFIX"]
    assert store["S3Action"] == {"BucketName": {"Ref": "InboundMailBucket"}, "ObjectKeyPrefix": prefix}
    assert invoke["LambdaAction"]["InvocationType"] == "Event"
    assert function["DeadLetterConfig"] == {"TargetArn": {"Fn::GetAtt": "SesEmailDLQ.Arn"}}
    # SES may write only there, only for this stack's rule set; the function invoked only by this rule
    [writes] = [
        s
        for s in resources["InboundMailBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
        if s["Effect"] == "Allow"
    ]
    assert writes["Resource"] == {"Fn::Sub": "${InboundMailBucket.Arn}/" + prefix + "*"}
    assert writes["Condition"]["StringEquals"] == {"AWS:SourceAccount": {"Ref": "AWS::AccountId"}}
    permission = resources["SesEmailInvokePermission"]["Properties"]
    assert permission["SourceArn"]["Fn::Sub"].endswith(":receipt-rule/" + rule["Name"]["Fn::Sub"])
    [reads] = [s for s in roles(stack)["SesEmailReceiver"] if "s3:GetObject" in s["Action"]]
    assert reads["Action"] == ["s3:GetObject"]
    assert "SesEmailDLQ" in json.dumps(resources["SesEmailFailing"])
