"""IAM on the AWS backend's tests: each Lambda function's calls checked against its role in the template.

moto authorizes every request, so a call the code makes that the function's role does not grant would
pass every test and fail in production. Here a botocore `before-call` handler finds which function
makes a call (its handler on the calling thread's stack), works out what IAM authorizes for it (the
actions and resources), and checks them against that function's role as SAM translates the template,
intrinsics resolved against the test's Stack. A call no statement allows gets the answer AWS would give
(AccessDeniedException, HTTP 400), so the code sees what it would in production, and is recorded, so
that the test fails even when the code swallows the error.

Only a role's inline Allow statements with Action and Resource are modelled (the template's roles have
no other kind): anything else (Deny, NotAction, Condition, a managed policy, a permissions boundary, a
call whose resource cannot be told) raises Unsupported rather than guess.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import re
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path
from types import CodeType
from typing import Any

from .aws import ACCOUNT, REGION, Body, Stack, template, translate


class Unsupported(Exception):
    """A policy or a call this emulation cannot judge: failing loudly beats guessing."""


# --- matching -------------------------------------------------------------------------------------


@functools.cache
def _glob(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(regex, re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def matches(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    """IAM's wildcards: `*` any run of characters, `?` one. Actions compare case-insensitively,
    resources case-sensitively. (IAM matches ARNs segment by segment; a `*` inside a segment matching
    across `:` here is a little more generous than IAM.)"""
    return _glob(pattern, ignore_case).fullmatch(value) is not None


@dataclass(frozen=True)
class Statement:
    actions: tuple[str, ...]
    resources: tuple[str, ...]

    def allows(self, action: str, resource: str) -> bool:
        return any(matches(a, action, ignore_case=True) for a in self.actions) and any(
            matches(r, resource) for r in self.resources
        )


@dataclass(frozen=True)
class Need:
    """One authorization a call needs: `action` on one of `resources` (SES: the address or its domain)."""

    action: str
    resources: tuple[str, ...]


@dataclass
class Role:
    name: str  # as in the assumed-role ARN
    function_name: str
    statements: list[Statement]

    def allows(self, need: Need) -> bool:
        return any(s.allows(need.action, r) for s in self.statements for r in need.resources)


def statements(document: Mapping[str, Any], where: str) -> list[Statement]:
    """The Allow statements of a resolved policy document; anything IAM would weigh otherwise raises."""
    found = document.get("Statement", [])
    result = []
    for statement in [found] if isinstance(found, dict) else found:
        if statement.get("Effect") != "Allow" or set(statement) - {"Sid"} != {"Effect", "Action", "Resource"}:
            raise Unsupported(f"{where}: only Allow with Action and Resource is modelled: {statement}")
        actions, resources = statement["Action"], statement["Resource"]
        result.append(
            Statement(
                tuple([actions] if isinstance(actions, str) else actions),
                tuple([resources] if isinstance(resources, str) else resources),
            )
        )
    if any("${" in r for s in result for r in s.resources):
        raise Unsupported(f"{where}: policy variables are not modelled: {result}")
    return result


# --- what a call needs ----------------------------------------------------------------------------


def table_arn(name: str) -> str:
    return f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}"


def queue_arn(name: str) -> str:
    return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"


def secret_arn(secret_id: str) -> str:
    """A secret's ARN ends in `-` and six random characters, which policies match with `-*` or `-??????`."""
    if secret_id.startswith("arn:"):
        return secret_id
    return f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{secret_id}-AbCdEf"


_DYNAMODB_ITEM_ACTIONS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
    "Get": "GetItem",
}
_SQS_BATCH_ACTIONS = {
    "SendMessageBatch": "SendMessage",
    "DeleteMessageBatch": "DeleteMessage",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
}
RESOURCELESS = {
    "dynamodb:ListTables",
    "sqs:ListQueues",
    "secretsmanager:ListSecrets",
    "sts:GetCallerIdentity",
}


def needs(prefix: str, operation: str, params: Mapping[str, Any]) -> list[Need]:
    """What IAM authorizes for `operation` of the service whose actions start `prefix:`, called with
    `params` (the API's, as the code passes them)."""

    def need(action: str, *resources: str) -> Need:
        return Need(f"{prefix}:{action}", resources)

    if prefix == "dynamodb":
        if operation in ("TransactWriteItems", "TransactGetItems"):
            return [
                need(_DYNAMODB_ITEM_ACTIONS[kind], table_arn(body["TableName"]))
                for item in params["TransactItems"]
                for kind, body in item.items()
            ]
        if operation in ("BatchGetItem", "BatchWriteItem"):
            return [need(operation, table_arn(table)) for table in params["RequestItems"]]
        if "TableName" in params:
            arn = table_arn(params["TableName"])
            return [need(operation, f"{arn}/index/{params['IndexName']}" if "IndexName" in params else arn)]
    if prefix == "sqs":
        if "QueueUrl" in params:
            return [
                need(
                    _SQS_BATCH_ACTIONS.get(operation, operation),
                    queue_arn(params["QueueUrl"].rsplit("/", 1)[1]),
                )
            ]
        if "QueueName" in params:  # GetQueueUrl
            return [need(operation, queue_arn(params["QueueName"]))]
    if prefix == "s3" and operation == "GetObject":
        return [need(operation, f"arn:aws:s3:::{params['Bucket']}/{params['Key']}")]
    if prefix == "sns" and operation == "Publish":
        return [need(operation, params["TopicArn"])]
    if prefix == "secretsmanager" and "SecretId" in params:
        return [need(operation, secret_arn(params["SecretId"]))]
    if prefix == "ses" and operation == "SendEmail":
        # SES authorizes the identity sent from and, when one is named, the configuration set
        sets = (
            [
                need(
                    operation,
                    f"arn:aws:ses:{REGION}:{ACCOUNT}:configuration-set/{params['ConfigurationSetName']}",
                )
            ]
            if params.get("ConfigurationSetName")
            else []
        )
        if "FromEmailAddressIdentityArn" in params:
            return [need(operation, params["FromEmailAddressIdentityArn"]), *sets]
        address = parseaddr(params["FromEmailAddress"])[1]
        identity = f"arn:aws:ses:{REGION}:{ACCOUNT}:identity/"
        return [need(operation, identity + address, identity + address.rpartition("@")[2]), *sets]
    if f"{prefix}:{operation}" in RESOURCELESS:
        return [need(operation, "*")]
    raise Unsupported(f"cannot tell the resource IAM checks for {prefix}:{operation}({sorted(params)})")


# --- the template, resolved against a Stack -------------------------------------------------------


@functools.cache
def translated() -> dict[str, Any]:
    """template.yaml as CloudFormation gets it, once per session."""
    return translate(template())


_NO_VALUE = object()  # AWS::NoValue: the list item or property is left out
_NAME_PROPERTIES = {  # what Ref gives for these: the name
    "AWS::Lambda::Function": "FunctionName",
    "AWS::IAM::Role": "RoleName",
    "AWS::Logs::LogGroup": "LogGroupName",
}
_PSEUDO = {
    "AWS::Partition": "aws",
    "AWS::Region": REGION,
    "AWS::AccountId": ACCOUNT,
    "AWS::URLSuffix": "amazonaws.com",
}


class Resolver:
    """CloudFormation's intrinsic functions, evaluated against one test's Stack: physical names are the
    Stack's for tables and queues, `{prefix}-{LogicalId}` for the rest."""

    def __init__(self, document: Mapping[str, Any], stack: Stack, parameters: Mapping[str, str]) -> None:
        self.resources = document["Resources"]
        self.conditions = document.get("Conditions", {})
        self.stack = stack
        declared = document.get("Parameters", {})
        values = {k: str(v["Default"]) for k, v in declared.items() if "Default" in v} | dict(parameters)
        self.parameters: dict[str, Any] = {  # a list parameter's Ref is the list
            k: v.split(",") if "List" in declared.get(k, {}).get("Type", "") else v for k, v in values.items()
        }

    def __call__(self, node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in map(self, node) if v is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            [(key, value)] = node.items()
            if key == "Ref":
                return self.ref(value)
            if key == "Fn::GetAtt":
                name, attribute = value.split(".", 1) if isinstance(value, str) else value
                return self.get_att(name, attribute)
            if key == "Fn::Sub":
                text, variables = (value, {}) if isinstance(value, str) else value
                return self.sub(text, {k: self(v) for k, v in variables.items()})
            if key == "Fn::If":
                condition, then, otherwise = value
                return self(then if self.condition(condition) else otherwise)
            if key == "Fn::Join":
                separator, values = value
                return separator.join(self(values))
            if key == "Fn::Split":
                separator, text = value
                return self(text).split(separator)
            if key == "Fn::Select":
                index, values = value
                return self(values)[int(self(index))]
            if key.startswith("Fn::"):
                raise Unsupported(f"{key} is not modelled: {node}")
        return {k: r for k, v in node.items() if (r := self(v)) is not _NO_VALUE}

    def condition(self, name: str) -> bool:
        return self._evaluate(self.conditions[name])

    def _evaluate(self, node: dict[str, Any]) -> bool:
        [(key, value)] = node.items()
        if key == "Fn::Equals":
            left, right = (str(self(v)) for v in value)
            return left == right
        if key == "Fn::Not":
            return not self._evaluate(value[0])
        if key == "Fn::And":
            return all(self._evaluate(v) for v in value)
        if key == "Fn::Or":
            return any(self._evaluate(v) for v in value)
        if key == "Condition":
            return self.condition(value)
        raise Unsupported(f"condition {node}")

    def exists(self, logical_id: str) -> bool:
        """False for a resource its Condition leaves out of this deployment."""
        condition = self.resources[logical_id].get("Condition")
        return condition is None or self.condition(condition)

    def physical_name(self, logical_id: str, name_property: str = "") -> str:
        """Its name property's value, else the name CloudFormation would make up."""
        properties = self.resources.get(logical_id, {}).get("Properties", {})
        if name_property in properties:
            return self(properties[name_property])
        return f"{self.stack.prefix}-{logical_id}"

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return _NO_VALUE
        if name == "AWS::StackName":
            return self.stack.prefix
        if name in _PSEUDO:
            return _PSEUDO[name]
        if name in self.parameters:
            return self.parameters[name]
        kind = self.resources.get(name, {}).get("Type")
        if kind in ("AWS::DynamoDB::Table", "AWS::SQS::Queue", "AWS::SNS::Topic", "AWS::S3::Bucket"):
            return self.stack.refs[name]  # the table's or bucket's name, the queue's URL, the topic's ARN
        if kind == "AWS::SecretsManager::Secret":
            return secret_arn(self.physical_name(name, "Name"))
        if kind in _NAME_PROPERTIES:
            return self.physical_name(name, _NAME_PROPERTIES[kind])
        raise Unsupported(f"Ref {name} ({kind or 'not a parameter or resource'})")

    def get_att(self, name: str, attribute: str) -> str:
        kind = self.resources.get(name, {}).get("Type")
        if kind == "AWS::DynamoDB::Table" and attribute == "Arn":
            return table_arn(self.stack.refs[name])
        if kind == "AWS::SQS::Queue" and attribute in ("Arn", "QueueName", "QueueUrl"):
            queue = self.stack.queue_names[name]
            return {"Arn": queue_arn(queue), "QueueName": queue, "QueueUrl": self.stack.refs[name]}[attribute]
        if kind == "AWS::S3::Bucket" and attribute == "Arn":
            return f"arn:aws:s3:::{self.stack.refs[name]}"
        if kind == "AWS::Lambda::Function" and attribute == "Arn":
            return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{self.ref(name)}"
        if kind == "AWS::IAM::Role" and attribute == "Arn":
            return f"arn:aws:iam::{ACCOUNT}:role/{self.ref(name)}"
        if kind == "AWS::KMS::Key" and attribute == "Arn":
            return f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{self.stack.prefix}-{name}"
        if kind == "AWS::Logs::LogGroup" and attribute == "Arn":
            return f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{self.ref(name)}:*"
        raise Unsupported(f"GetAtt {name}.{attribute} ({kind})")

    def sub(self, text: str, variables: Mapping[str, Any]) -> str:
        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"  # ${!Literal}
            if name in variables:
                return str(variables[name])
            if "." in name:
                return self.get_att(*name.split(".", 1))
            return str(self.ref(name))

        return re.sub(r"\$\{([^}]+)\}", value, text)


@dataclass
class Policies:
    """One deployment's authorizations: each function's role, and which function consumes each queue."""

    roles: dict[str, Role]  # function's logical id → its role
    consumers: dict[str, str]  # queue ARN → the logical id of the function its event source mapping feeds


def resolve(document: Mapping[str, Any], stack: Stack, parameters: Mapping[str, str]) -> Policies:
    """Each function's effective policy (its role's inline policies) with the template's parameters at
    `parameters` (else their defaults)."""
    resolver = Resolver(document, stack, parameters)
    resources = {k: v for k, v in document["Resources"].items() if resolver.exists(k)}

    def role_statements(role_id: str) -> list[Statement]:
        properties = resources[role_id]["Properties"]
        for kind in ("PermissionsBoundary", "ManagedPolicyArns"):
            if properties.get(kind):
                raise Unsupported(f"{role_id}: {kind} is not modelled")
        if any(
            r["Type"] == "AWS::IAM::Policy" and {"Ref": role_id} in r["Properties"].get("Roles", [])
            for r in resources.values()
        ):
            raise Unsupported(f"{role_id}: policies attached apart from the role are not modelled")
        found = []
        for policy in resolver(properties.get("Policies", [])):
            found += statements(policy["PolicyDocument"], f"{role_id} {policy.get('PolicyName')}")
        return found

    roles = {}
    for function_id, function in resources.items():
        if function["Type"] != "AWS::Lambda::Function":
            continue
        properties = function["Properties"]
        role_id = referenced(properties["Role"])
        if resources.get(role_id, {}).get("Type") != "AWS::IAM::Role":
            raise Unsupported(f"{function_id}: its Role {properties['Role']} is not a role of the template")
        roles[function_id] = Role(resolver.ref(role_id), resolver.ref(function_id), role_statements(role_id))
    consumers = {
        resolver(mapping["Properties"]["EventSourceArn"]): referenced(mapping["Properties"]["FunctionName"])
        for mapping in resources.values()
        if mapping["Type"] == "AWS::Lambda::EventSourceMapping"
    }
    return Policies(roles, consumers)


def referenced(node: Any) -> str:
    """The logical id a `Ref X` or `GetAtt X.Arn` names."""
    if isinstance(node, dict) and "Ref" in node:
        return node["Ref"]
    if isinstance(node, dict) and "Fn::GetAtt" in node:
        target = node["Fn::GetAtt"]
        return target.split(".")[0] if isinstance(target, str) else target[0]
    raise Unsupported(f"not a reference to a resource of the template: {node}")


def handler_codes(document: Mapping[str, Any]) -> dict[CodeType, str]:
    """The code of each function's handler (its Handler property) → the function's logical id."""
    found = {}
    for function_id, function in document["Resources"].items():
        if function["Type"] == "AWS::Lambda::Function":
            module, _, name = function["Properties"]["Handler"].rpartition(".")
            found[inspect.unwrap(getattr(importlib.import_module(module), name)).__code__] = function_id
    return found


def _environment_parameters(document: Mapping[str, Any]) -> list[tuple[str, re.Pattern[str], list[str]]]:
    """(variable, pattern, parameters) for each function variable made of parameters: a Ref or Sub of
    them, or a Ref of a secret whose Name is. The value a test gives the variable tells the parameters'
    (EMAIL_SENDER=ses: EmailSender=ses; TWILIO_SECRET_NAME=/replies-engine/t1/twilio: EnvironmentName=t1)."""
    parameters, resources = set(document.get("Parameters", {})), document["Resources"]
    found: dict[str, tuple[str, re.Pattern[str], list[str]]] = {}
    for function in resources.values():
        if function["Type"] != "AWS::Lambda::Function":
            continue
        for variable, value in function["Properties"].get("Environment", {}).get("Variables", {}).items():
            node = value if isinstance(value, dict) else {}
            text, before, after = node.get("Fn::Sub"), "", ""
            if node.get("Ref") in parameters:
                text = "${" + node["Ref"] + "}"
            secret = resources.get(node.get("Ref"), {})
            if secret.get("Type") == "AWS::SecretsManager::Secret":
                # Ref gives its ARN in AWS; a test may give the name
                name = secret["Properties"].get("Name")
                text = name.get("Fn::Sub") if isinstance(name, dict) else None
                before, after = r"(?:arn:[^:]+:secretsmanager:[^:]+:[^:]+:secret:)?", r"(?:-[A-Za-z0-9]{6})?"
            parts = re.split(r"\$\{([^}]+)\}", text if isinstance(text, str) else "")
            names = parts[1::2]
            if names and set(names) <= parameters and variable not in found:
                regex = "".join(re.escape(p) if i % 2 == 0 else "(.*?)" for i, p in enumerate(parts))
                found[variable] = (variable, re.compile(before + regex + after, re.DOTALL), names)
    return list(found.values())


# --- enforcement ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One call of a function, as judged."""

    function: str
    action: str
    resource: str
    allowed: bool
    thread: str


@dataclass
class Enforcement:
    """The roles of one test's Stack, enforced on every call a function makes, while active.

    `document` is the translated template (a test may pass an altered copy); `parameters` set template
    parameters, which otherwise follow the environment the test gives the functions, else default."""

    stack: Stack
    document: Mapping[str, Any] = field(default_factory=translated)
    parameters: Mapping[str, str] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # Unsupported raised while checking
    _policies: dict[tuple[Any, ...], Policies] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.handlers = handler_codes(self.document)  # imported now, not inside a call
        self.variables = _environment_parameters(self.document)

    @property
    def denials(self) -> list[Check]:
        return [c for c in self.checks if not c.allowed]

    def policies(self) -> Policies:
        """Resolved for the parameters the environment implies now (a test may change it mid-way)."""
        environment = tuple(os.environ.get(variable) for variable, _, _ in self.variables)
        key = (*environment, *sorted(self.parameters.items()))
        if key not in self._policies:
            implied: dict[str, str] = {}
            for (_, pattern, names), value in zip(self.variables, environment, strict=True):
                if value is not None and (match := pattern.fullmatch(value)):
                    for name, part in zip(names, match.groups(), strict=True):
                        implied.setdefault(name, part)
            self._policies[key] = resolve(self.document, self.stack, {**implied, **self.parameters})
        return self._policies[key]

    def caller(self, operation: str = "", params: Mapping[str, Any] | None = None) -> str | None:
        """The function a call is made for, from the calling thread's stack, innermost frame first:
        - a handler the template names: its function;
        - the test's engine (conftest: engine.put, engine.get…), even where a fake inside a handler
          calls it: nobody's;
        - a local queue worker's own receive and delete: Lambda's event source mapping, which polls
          with the role of the function it feeds that queue to. (The worker's hand-back of unprocessed
          messages on stop has no Lambda equivalent: nobody's.)
        Else the function whose invocation started the thread (a heartbeat), or nobody (test setup,
        the CLI)."""
        frame = sys._getframe(1)
        while frame is not None:
            code = frame.f_code
            if code in self.handlers:
                return self.handlers[code]
            if code.co_filename == _CONFTEST:
                return None
            if code in _WORKER_CODES:
                return self._poller(frame.f_locals["self"], operation, params or {})
            frame = frame.f_back
        enforcement, function = getattr(threading.current_thread(), "_iam_caller", (None, None))
        return function if enforcement is self else None

    def _poller(self, worker: Any, operation: str, params: Mapping[str, Any]) -> str | None:
        if operation not in _POLLER_OPERATIONS or "QueueUrl" not in params:
            return None
        arn = queue_arn(params["QueueUrl"].rsplit("/", 1)[1])
        consumer = self.policies().consumers.get(arn)
        # no trigger feeds this queue to a function: the worker's handler stands for its function
        return consumer or self.handlers.get(getattr(worker.handler, "__code__", None))

    def authorize(self, service_prefix: str, operation: str, params: Mapping[str, Any]) -> Check | None:
        """The first of the call's needs the caller's role does not grant (None: allowed or not checked)."""
        try:
            function = self.caller(operation, params)
            if function is None:
                return None
            role = self.policies().roles[function]
            wanted = needs(service_prefix, operation, params)
        except Unsupported as exc:  # the code may swallow it: the test fails at teardown anyway
            self.errors.append(f"{service_prefix}:{operation}: {exc}")
            raise
        thread = threading.current_thread().name
        for need in wanted:
            check = Check(function, need.action, need.resources[0], role.allows(need), thread)
            self.checks.append(check)
            if not check.allowed:
                return check
        return None

    def role(self, function: str) -> Role:
        return self.policies().roles[function]

    def report(self) -> str:
        lines = [f"{c.function} ({c.thread}): {c.action} on {c.resource}" for c in self.denials]
        return "\n".join(["IAM denied calls the template's roles do not grant:", *lines, *self.errors])


_WORKER_CODES: set[CodeType] = set()  # the methods of the local QueueWorker (filled by `hooks`)
_POLLER_OPERATIONS = {"ReceiveMessage", "DeleteMessage", "DeleteMessageBatch", "GetQueueAttributes"}
_CONFTEST = str(Path(__file__).with_name("conftest.py"))


_active: Enforcement | None = None


def active() -> Enforcement | None:
    return _active


@contextmanager
def enforced(stack: Stack, **options: Any) -> Iterator[Enforcement]:
    """Enforce the roles for `stack` meanwhile (options: Enforcement's document, parameters)."""
    global _active
    previous, _active = _active, Enforcement(stack, **options)
    try:
        yield _active
    finally:
        _active = previous


def _denied(url: str, role: Role, check: Check) -> tuple[Any, dict[str, Any]]:
    """What AWS answers a call no identity-based policy allows."""
    from botocore.awsrequest import AWSResponse

    message = (
        f"User: arn:aws:sts::{ACCOUNT}:assumed-role/{role.name}/{role.function_name} is not authorized to"
        f" perform: {check.action} on resource: {check.resource} because no identity-based policy allows"
        f" the {check.action} action"
    )
    request_id = str(uuid.uuid4())
    headers = {"x-amzn-RequestId": request_id, "Content-Type": "application/x-amz-json-1.0"}
    body = json.dumps({"__type": "AccessDeniedException", "Message": message}).encode()
    parsed = {
        "Error": {"Code": "AccessDeniedException", "Message": message},
        "ResponseMetadata": {
            "RequestId": request_id,
            "HTTPStatusCode": 400,
            "HTTPHeaders": headers,
            "RetryAttempts": 0,
        },
    }
    return AWSResponse(url, 400, headers, Body(body)), parsed


def _keep_params(params: dict[str, Any], context: dict[str, Any], **kwargs: Any) -> None:
    """The call's parameters as the code passed them (before-call sees them serialized)."""
    if _active is not None:
        context["iam_params"] = params


def _before_call(model: Any, params: dict[str, Any], context: dict[str, Any], **kwargs: Any) -> Any:
    enforcement = _active
    if enforcement is None or "iam_params" not in context:
        return None
    prefix = model.service_model.signing_name  # the actions' prefix: sesv2 signs as ses
    check = enforcement.authorize(prefix, model.name, context.pop("iam_params"))
    if check is None:
        return None
    return _denied(params["url"], enforcement.role(check.function), check)


def _start(start: Any) -> Any:
    """Thread.start that tags the thread with the function starting it (see Enforcement.caller)."""

    def tagged(thread: threading.Thread) -> None:
        if (enforcement := _active) is not None:
            thread._iam_caller = (enforcement, enforcement.caller())  # type: ignore[attr-defined]
        start(thread)

    return tagged


@contextmanager
def hooks() -> Iterator[None]:
    """Every botocore session made meanwhile gets the handlers (inert while no test enforces), and
    threads remember who started them. For the whole pytest session: clients are cached across tests."""
    from botocore.handlers import BUILTIN_HANDLERS

    from replies_engine.adapters.aws.clients import client
    from replies_engine.local.workers import QueueWorker

    _WORKER_CODES.update(f.__code__ for f in vars(QueueWorker).values() if inspect.isfunction(f))
    ours = [("before-parameter-build", _keep_params), ("before-call", _before_call)]
    BUILTIN_HANDLERS.extend(ours)
    client.cache_clear()  # a client made before would not have them
    original = threading.Thread.start
    threading.Thread.start = _start(original)  # type: ignore[method-assign]
    try:
        yield
    finally:
        threading.Thread.start = original  # type: ignore[method-assign]
        for handler in ours:
            BUILTIN_HANDLERS.remove(handler)
