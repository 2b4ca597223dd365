"""The AWS template passes cfn-lint and wires the projector as the docs say."""

from __future__ import annotations

import copy
import importlib
import re
import shlex
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import botocore.client
import pytest
from cfnlint.api import lint_file
from cfnlint.decode import decode

from aggregates import fulfilment_lambda
from aggregates.application import Orders
from aggregates.fulfilment import Fact, OrderFulfilment
from aggregates.order import Order
from aggregates.payments import Payments
from aggregates.warehouse import Warehouse
from ledger.cli.app import cli
from ledger.projections.dynamodb import DynamoDBView, open_view
from ledger.projections.metrics import (
    LEDGER_METRICS,
    NAMESPACE,
    SAGA_DIMENSION,
    SAGAS_PARKED,
)
from ledger.projections.rebuild import drop_version
from ledger.projections.streams import lambda_handler, stream_arn_of
from ledger.publishing import Publisher
from ledger.publishing import lambda_handler as publisher_handler
from ledger.publishing import schema as publishing_schema
from ledger.publishing.publisher import logger as publisher_logger
from ledger.sagas import PARKED_TABLE
from projections.integration import SOURCE, OrderEvents
from projections.orders import OrderProjector
from tests.test_projections_core import ITEM
from tests.test_projections_dynamodb import (
    store_an_undecodable_event,
    stream_records,
)
from tests.test_publisher import Bus, RefusingClient, local_eventbridge
from tests.test_saga_fulfilment import FIG, TEA, Shop, open_shop

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
TEMPLATE = DEPLOY / "template.yaml"
README = DEPLOY / "README.md"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    decoded, problems = decode(str(TEMPLATE))
    assert problems == []
    return dict(decoded)


@pytest.fixture(scope="module")
def resources(template) -> dict[str, Any]:
    return dict(template["Resources"])


def test_template_passes_cfn_lint() -> None:
    assert [str(match) for match in lint_file(TEMPLATE)] == []


INLINE_TEMPLATE_BYTES = 51_200
"""The largest template CloudFormation takes in the request (TemplateBody)."""
S3_TEMPLATE_BYTES = 1_000_000
"""The largest it takes from S3 (TemplateURL: 1 MB)."""


def _documented_deploy_command() -> list[str]:
    """Return the arguments of the README's ``aws cloudformation deploy``."""
    [command] = re.findall(
        r"^aws cloudformation deploy .*?(?<!\\)$", README.read_text(), re.M | re.S
    )
    return shlex.split(command.replace("\\\n", " "))


def _options(argv: list[str]) -> dict[str, list[str]]:
    """Return each ``--option`` of a command with the words that follow it."""
    options: dict[str, list[str]] = {}
    current: list[str] = []
    for word in argv:
        if word.startswith("--"):
            current = options.setdefault(word, [])
        else:
            current.append(word)
    return options


def test_the_readmes_deploy_command_passes_the_template_the_way_its_size_allows():
    options = _options(_documented_deploy_command())
    [template_file] = options["--template-file"]
    size = (ROOT / template_file).stat().st_size

    assert ROOT / template_file == TEMPLATE
    if "--s3-bucket" in options:
        # the CLI uploads the template and deploys it by URL
        assert len(options["--s3-bucket"]) == 1
        assert size <= S3_TEMPLATE_BYTES
    else:
        assert size <= INLINE_TEMPLATE_BYTES, (
            f"the template is {size} bytes: over {INLINE_TEMPLATE_BYTES} the "
            "command needs --s3-bucket"
        )


def test_the_readmes_deploy_command_sets_every_parameter_without_a_default(
    template,
):
    options = _options(_documented_deploy_command())
    overrides = dict(word.split("=", 1) for word in options["--parameter-overrides"])
    parameters = template["Parameters"]

    assert set(overrides) <= set(parameters)
    assert {name for name, p in parameters.items() if "Default" not in p} <= set(
        overrides
    )


def test_events_table_streams_new_images_and_is_retained(resources):
    events = resources["EventsTable"]
    assert events["DeletionPolicy"] == "Retain"
    assert events["Properties"]["StreamSpecification"] == {
        "StreamViewType": "NEW_IMAGE"
    }


EVENT_STORE_SUFFIXES = ("_events", "_snapshots", "_notifications", "_tracking")
"""The tables of an application's event store, by their names' ends."""


def _table_name(resource: dict[str, Any]) -> str:
    return str(resource["Properties"]["TableName"]["Fn::Sub"])


def _event_store_tables(resources: dict[str, Any]) -> list[str]:
    return [
        name
        for name, resource in resources.items()
        if resource["Type"] == "AWS::DynamoDB::Table"
        and _table_name(resource).endswith((*EVENT_STORE_SUFFIXES, "_idempotency"))
    ]


def test_event_store_tables_are_retained_and_protected_from_deletion(resources):
    tables = _event_store_tables(resources)

    # Orders' five, Warehouse's and Payments' three, the saga's three
    assert len(tables) == 14
    assert "IdempotencyTable" in tables
    for name in tables:
        table = resources[name]
        assert table["DeletionPolicy"] == "Retain", name
        assert table["UpdateReplacePolicy"] == "Retain", name
        assert table["Properties"]["DeletionProtectionEnabled"] is True, name


@pytest.mark.parametrize(
    "table",
    [
        "ProjectionControlTable",
        "ParkedEventsTable",
        "PublisherTable",
        "FulfilmentParkedTable",
    ],
)
def test_records_of_what_was_parked_outlive_the_stack_and_a_rename(resources, table):
    resource = resources[table]

    assert resource["DeletionPolicy"] == "Retain"
    assert resource["UpdateReplacePolicy"] == "Retain"
    assert resource["Properties"]["PointInTimeRecoverySpecification"] == {
        "PointInTimeRecoveryEnabled": True
    }


# --- names the functions take ------------------------------------------------------

LAMBDA_FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What Lambda accepts as a function's name (not an ARN)."""


def _longest_name(template: dict[str, Any], sub: str) -> str:
    """Return ``sub`` with each parameter as long as it may be, in its pattern."""
    parameters = template["Parameters"]

    def longest(match: re.Match[str]) -> str:
        parameter = parameters[match.group(1)]
        assert "MaxLength" in parameter, f"{match.group(1)} has no MaxLength"
        return "x" * int(parameter["MaxLength"])

    return re.sub(r"\$\{([^}]+)\}", longest, sub)


def test_every_function_name_fits_lambda_whatever_the_parameters_allow(
    template, resources
):
    for function in _functions(resources):
        name = resources[function]["Properties"]["FunctionName"]["Fn::Sub"]
        assert LAMBDA_FUNCTION_NAME.fullmatch(_longest_name(template, name)), name


@pytest.mark.parametrize(
    "parameter", ["TablePrefix", "ProjectionName", "PublicationName"]
)
def test_names_lambda_would_refuse_are_refused_by_the_template(template, parameter):
    pattern = template["Parameters"][parameter]["AllowedPattern"]
    default = template["Parameters"][parameter]["Default"]

    # CloudFormation matches AllowedPattern against the whole value
    assert re.fullmatch(pattern, "Orders_v2-eu")
    assert re.fullmatch(pattern, default) is not None
    assert re.fullmatch(pattern, "orders.eu") is None
    assert re.fullmatch(pattern, "orders/eu") is None


STREAM_MAPPINGS = (
    "ProjectorStreamMapping",
    "PublisherStreamMapping",
    "FulfilmentFollowOrdersMapping",
    "FulfilmentFollowWarehouseMapping",
    "FulfilmentFollowPaymentsMapping",
    "FulfilmentSendStepsMapping",
)
"""Every event source mapping on an events table's stream."""


def test_every_stream_mapping_is_checked(resources):
    mappings = [
        name
        for name, resource in resources.items()
        if resource["Type"] == "AWS::Lambda::EventSourceMapping"
    ]

    assert sorted(mappings) == sorted(STREAM_MAPPINGS)


@pytest.mark.parametrize("name", STREAM_MAPPINGS)
def test_stream_mapping_bisects_reports_partial_failures_and_parks_the_rest(
    resources, name
):
    mapping = resources[name]["Properties"]
    assert mapping["BisectBatchOnFunctionError"] is True
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert "OnFailure" in mapping["DestinationConfig"]


STREAM_RETENTION_SECONDS = 24 * 60 * 60
"""How long a DynamoDB stream keeps a record."""


@pytest.mark.parametrize("name", STREAM_MAPPINGS)
def test_stream_mappings_give_up_on_records_hours_before_the_stream_trims_them(
    resources, name
):
    age = resources[name]["Properties"]["MaximumRecordAgeInSeconds"]
    hours_left = (STREAM_RETENTION_SECONDS - age) // 3600

    # the failure message must leave time to read the records it names
    assert hours_left >= 6
    assert f"at least {hours_left} hours" in README.read_text()


@pytest.mark.parametrize("role", ["ProjectorRole", "PublisherRole"])
def test_function_roles_grant_no_wildcard_actions(resources, role):
    statements = [
        statement
        for policy in resources[role]["Properties"]["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]
    ]
    actions = [a for s in statements for a in _as_list(s["Action"])]
    assert all("*" not in action for action in actions)
    wildcard_resources = [s["Action"] for s in statements if s["Resource"] == "*"]
    assert wildcard_resources == ["dynamodb:ListStreams"]


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


@pytest.mark.parametrize("parameter", ["ProjectorHandler", "PublisherHandler"])
def test_handler_named_by_the_template_exists(parameter: str) -> None:
    template, _ = decode(str(TEMPLATE))
    handler = template["Parameters"][parameter]["Default"]
    module_name, _, function_name = handler.rpartition(".")

    module = importlib.import_module(module_name)

    assert callable(getattr(module, function_name))


def test_projection_name_defaults_to_the_projector_the_handler_feeds(template):
    assert template["Parameters"]["ProjectionName"]["Default"] == OrderProjector.name
    assert template["Parameters"]["ApplicationName"]["Default"] == Orders.name


def test_publication_parameters_default_to_the_example_publication(template):
    parameters = template["Parameters"]

    assert parameters["PublicationName"]["Default"] == OrderEvents.name
    assert parameters["IntegrationEventSource"]["Default"] == SOURCE
    assert {event.source for event in OrderEvents.events} == {SOURCE}


# --- the runtime the package is built for -------------------------------------------

PACKAGE_BUILD = ("LambdaPackage", "Build")
"""Where the template names the runtime and CPU the package is built for."""

_PLATFORM_OF_ARCHITECTURE = {"x86_64": "x86_64", "arm64": "aarch64"}
"""Lambda's architecture names and the CPU in manylinux wheel platform tags."""


def _package_build(template: dict[str, Any]) -> dict[str, str]:
    mapping, key = PACKAGE_BUILD
    return dict(template["Mappings"][mapping][key])


def test_every_function_runs_on_the_runtime_and_cpu_the_package_is_built_for(
    resources,
):
    functions = {
        name: resource["Properties"]
        for name, resource in resources.items()
        if resource["Type"] == "AWS::Lambda::Function"
    }

    assert functions
    for properties in functions.values():
        assert properties["Runtime"] == {"Fn::FindInMap": [*PACKAGE_BUILD, "Runtime"]}
        assert properties["Architectures"] == [
            {"Fn::FindInMap": [*PACKAGE_BUILD, "Architecture"]}
        ]


def test_readme_builds_the_package_for_the_templates_python_and_cpu(template):
    build = _package_build(template)
    runtime_version = build["Runtime"].removeprefix("python")
    readme = README.read_text()

    build_versions = re.findall(r"--python-version[ =](\d+\.\d+)", readme)
    every_version_named = re.findall(r"python:?(3\.\d+)", readme)
    platforms = re.findall(r"--platform[ =]manylinux\w*?_(x86_64|aarch64)\b", readme)

    assert build_versions, "the README's build command names no --python-version"
    assert set(build_versions) == {runtime_version}
    assert set(every_version_named) == {runtime_version}
    assert platforms
    assert set(platforms) == {_PLATFORM_OF_ARCHITECTURE[build["Architecture"]]}


# --- alarms ------------------------------------------------------------------------


def _alarms(resources: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: resource["Properties"]
        for name, resource in resources.items()
        if resource["Type"] == "AWS::CloudWatch::Alarm"
    }


def _alarms_on(
    resources: dict[str, Any], namespace: str, metric: str
) -> list[dict[str, Any]]:
    return [
        alarm
        for alarm in _alarms(resources).values()
        if alarm["Namespace"] == namespace and alarm["MetricName"] == metric
    ]


def _functions(resources: dict[str, Any]) -> list[str]:
    return [
        name
        for name, resource in resources.items()
        if resource["Type"] == "AWS::Lambda::Function"
    ]


@pytest.mark.parametrize(
    ("metric", "statistic"), [("Errors", "Sum"), ("IteratorAge", "Maximum")]
)
def test_every_function_has_an_alarm_on_its_lambda_metric(resources, metric, statistic):
    watched = [
        alarm["Dimensions"]
        for alarm in _alarms_on(resources, "AWS/Lambda", metric)
        if alarm["Statistic"] == statistic
        and alarm["ComparisonOperator"] == "GreaterThanThreshold"
    ]

    # Every function has an errors alarm; only stream-fed ones an iterator age.
    functions = _functions(resources)
    if metric == "IteratorAge":
        functions = _stream_fed_functions(resources)
    assert sorted(map(str, watched)) == sorted(
        str([{"Name": "FunctionName", "Value": {"Ref": name}}]) for name in functions
    )


def _stream_fed_functions(resources: dict[str, Any]) -> list[str]:
    return [
        resource["Properties"]["FunctionName"]["Ref"]
        for resource in resources.values()
        if resource["Type"] == "AWS::Lambda::EventSourceMapping"
    ]


def test_errors_alarms_fire_on_the_first_error(resources):
    alarms = _alarms_on(resources, "AWS/Lambda", "Errors")

    assert len(alarms) == len(_functions(resources))
    for alarm in alarms:
        assert alarm["Threshold"] == 0
        assert alarm["Period"] * alarm["EvaluationPeriods"] <= 300


def test_iterator_age_alarms_fire_long_before_stream_records_expire(
    template, resources
):
    alarms = _alarms_on(resources, "AWS/Lambda", "IteratorAge")
    threshold = template["Parameters"]["IteratorAgeAlarmMilliseconds"]
    day_ms = 24 * 60 * 60 * 1000

    given_up_at_ms = 1000 * min(
        resources[name]["Properties"]["MaximumRecordAgeInSeconds"]
        for name in STREAM_MAPPINGS
    )

    assert alarms
    for alarm in alarms:
        assert alarm["Threshold"] == {"Ref": "IteratorAgeAlarmMilliseconds"}
    assert threshold["Default"] == 600_000
    assert threshold["MaxValue"] < given_up_at_ms < day_ms


def test_parked_events_alarm_counts_this_stacks_projector_log_lines(resources):
    filter_properties = resources["ParkedEventsMetricFilter"]["Properties"]
    [metric] = filter_properties["MetricTransformations"]
    [alarm] = _alarms_on(resources, "ledger", metric["MetricName"])

    # the stack's own log group and a metric named after the stack's names,
    # so another stack's projection of the same name is not counted
    assert filter_properties["LogGroupName"] == {"Ref": "ProjectorLogGroup"}
    assert metric["MetricName"] == {
        "Fn::Sub": "${TablePrefix}${ProjectionName}-EventsParked"
    }
    assert "Dimensions" not in alarm
    assert alarm["Statistic"] == "Sum"
    assert alarm["Period"] == 300
    assert alarm["Threshold"] == 0
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    # No data is the normal case: nothing was parked.
    assert alarm["TreatMissingData"] == "notBreaching"


def test_the_parked_events_filter_matches_each_park_the_projector_logs(
    streamed_tables, confirmations_fail, dynamodb_env, resources, caplog
):
    filter_properties = resources["ParkedEventsMetricFilter"]["Properties"]
    [phrase] = re.findall(r'"([^"]+)"', filter_properties["FilterPattern"])
    orders, view = streamed_tables
    stream_arn = stream_arn_of(orders)
    records = [{**r, "eventSourceARN": stream_arn} for r in stream_records(orders)]
    handler = lambda_handler(
        OrderProjector, Orders, {**dynamodb_env, "CREATE_TABLE": "no"}
    )

    with caplog.at_level("ERROR", logger="ledger"):
        assert handler({"Records": records}, None) == {"batchItemFailures": []}

    # both orders' confirmations were parked
    assert len(view.parked_events()) == 2
    matched = [r for r in caplog.records if phrase in r.getMessage()]
    assert len(matched) == 2


def test_sagas_parked_alarm_watches_what_the_send_steps_function_reports(resources):
    [alarm] = _alarms_on(resources, NAMESPACE, SAGAS_PARKED)
    sender = resources["FulfilmentSendSteps"]["Properties"]["Environment"]
    parked = resources["FulfilmentParkedTable"]["Properties"]
    made = publishing_schema.table_definition("")

    assert alarm["Dimensions"] == [
        {"Name": SAGA_DIMENSION, "Value": OrderFulfilment.name}
    ]
    assert alarm["Statistic"] == "Sum"
    assert (alarm["Period"], alarm["Threshold"]) == (300, 0)
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert alarm["TreatMissingData"] == "notBreaching"
    assert sender["Variables"][LEDGER_METRICS] == "emf"
    assert parked["TableName"] == {
        "Fn::Sub": f"${{TablePrefix}}{OrderFulfilment.name}_{PARKED_TABLE}"
    }
    assert parked["KeySchema"] == made["KeySchema"]
    assert parked["AttributeDefinitions"] == made["AttributeDefinitions"]


@pytest.mark.parametrize("mapping", STREAM_MAPPINGS)
def test_failure_queue_alarm_watches_the_stream_mappings_on_failure_queue(
    resources, mapping
):
    destination = resources[mapping]["Properties"]["DestinationConfig"]["OnFailure"][
        "Destination"
    ]
    [queue] = [
        name
        for name, resource in resources.items()
        if resource["Type"] == "AWS::SQS::Queue"
        and destination == {"Fn::GetAtt": [name, "Arn"]}
    ]

    dimensions = [{"Name": "QueueName", "Value": {"Fn::GetAtt": [queue, "QueueName"]}}]
    [alarm] = [
        alarm
        for alarm in _alarms_on(
            resources, "AWS/SQS", "ApproximateNumberOfMessagesVisible"
        )
        if alarm["Dimensions"] == dimensions
    ]

    assert alarm["Threshold"] == 0
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"


def test_every_stream_fed_function_alarms_when_its_failure_message_is_lost(
    resources,
):
    alarms = _alarms_on(resources, "AWS/Lambda", "DestinationDeliveryFailures")
    watched = [alarm["Dimensions"] for alarm in alarms]

    assert sorted(map(str, watched)) == sorted(
        str([{"Name": "FunctionName", "Value": {"Ref": name}}])
        for name in _stream_fed_functions(resources)
    )
    for alarm in alarms:
        assert (alarm["Statistic"], alarm["Threshold"]) == ("Sum", 0)
        assert alarm["ComparisonOperator"] == "GreaterThanThreshold"


def test_alarms_notify_the_topic_only_when_one_is_given(template, resources):
    notify = {
        "Fn::If": [
            "NotifiesAlarmTopic",
            [{"Ref": "AlarmTopicArn"}],
            {"Ref": "AWS::NoValue"},
        ]
    }

    assert template["Parameters"]["AlarmTopicArn"]["Default"] == ""
    assert template["Conditions"]["NotifiesAlarmTopic"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}]
    }
    alarms = _alarms(resources)
    # 5 of the projector, 6 of publishing, 16 of the saga (5 on errors, 4 on
    # iterator ages, 4 on undelivered failure messages, 1 on its failure
    # queue, 1 on parked sagas, 1 on the poller not being invoked)
    assert len(alarms) == 27
    for alarm in alarms.values():
        assert alarm["AlarmActions"] == notify
        assert alarm["OKActions"] == notify


# --- IAM: what the code calls, against what the template allows ---------------------
#
# The calls are recorded from the real code running against DynamoDB Local;
# each becomes the IAM action and resource AWS would authorise, and the
# template's policy (its intrinsic functions resolved) must allow it.

PARTITION, REGION, ACCOUNT = "aws", "us-east-1", "123456789012"

_TRANSACT_ACTIONS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}
"""IAM authorises each action of a TransactWriteItems as its own operation."""


def _table_arn(name: str) -> str:
    return f"arn:{PARTITION}:dynamodb:{REGION}:{ACCOUNT}:table/{name}"


Request = tuple[str, str]
"""An IAM action and the resource it is asked for."""


def _bus_arn(name_or_arn: str) -> str:
    if name_or_arn.startswith("arn:"):
        return name_or_arn
    return f"arn:{PARTITION}:events:{REGION}:{ACCOUNT}:event-bus/{name_or_arn}"


def _iam_requests(
    service: str, operation: str, params: dict[str, Any]
) -> list[Request]:
    """Return what IAM is asked to allow for one DynamoDB or EventBridge API call.

    Other services' calls are the tests' own (reading the rule's queue).
    """
    if service == "events":
        if operation != "PutEvents":
            raise AssertionError(
                f"no IAM mapping for {operation}: add one to this test"
            )
        return [
            ("events:PutEvents", _bus_arn(entry.get("EventBusName", "default")))
            for entry in params["Entries"]
        ]
    if service not in ("dynamodb", "dynamodbstreams"):
        return []
    if operation == "TransactWriteItems":
        return [
            (f"dynamodb:{_TRANSACT_ACTIONS[kind]}", _table_arn(body["TableName"]))
            for action in params["TransactItems"]
            for kind, body in action.items()
        ]
    if operation == "BatchGetItem":
        return [
            ("dynamodb:BatchGetItem", _table_arn(t)) for t in params["RequestItems"]
        ]
    if operation in ("ListTables", "ListStreams"):
        return [(f"dynamodb:{operation}", "*")]
    if "StreamArn" in params:
        # DynamoDB Local's region and account, made the template's.
        table_and_stream = params["StreamArn"].split(":table/", 1)[1]
        return [(f"dynamodb:{operation}", _table_arn(table_and_stream))]
    if "TableName" in params:
        return [(f"dynamodb:{operation}", _table_arn(params["TableName"]))]
    raise AssertionError(f"no IAM mapping for {operation}: add one to this test")


@pytest.fixture
def recorded_requests(monkeypatch: pytest.MonkeyPatch) -> list[Request]:
    """Every IAM request of the DynamoDB (and Streams) calls made from now on."""
    requests: list[Request] = []
    original = botocore.client.BaseClient._make_api_call

    def recording(client: Any, operation: str, params: dict[str, Any]) -> Any:
        service = client.meta.service_model.service_name
        requests.extend(_iam_requests(service, operation, params))
        return original(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recording)
    return requests


class _Stack:
    """The template with its parameters set: resolves the policies' resources."""

    def __init__(self, template: dict[str, Any], parameters: dict[str, str]) -> None:
        self.template = template
        self.parameters = parameters
        self.context: dict[str, set[str]] = {}
        """Condition keys of the requests, and every value they were sent with."""

    def sub(self, text: str) -> str:
        pseudo = {
            "AWS::Partition": PARTITION,
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
        }
        values = {**pseudo, **self.parameters}
        return re.sub(r"\$\{([^}]+)\}", lambda m: values[m.group(1)], text)

    def condition(self, name: str) -> bool:
        return bool(self.value(self.template["Conditions"][name]))

    def value(self, node: Any) -> Any:
        """Resolve the intrinsic functions the template's conditions use."""
        if not isinstance(node, dict):
            return node
        [(function, argument)] = node.items()
        if function == "Ref":
            return self.parameters[argument]
        if function == "Fn::Equals":
            left, right = (self.value(side) for side in argument)
            return left == right
        if function == "Fn::Not":
            return not self.value(argument[0])
        raise AssertionError(f"{function} is not resolved by this test")

    def resources_of(self, node: Any) -> list[str]:
        """Return the ARNs (patterns) a policy statement's Resource names."""
        if isinstance(node, str):
            return [node]
        if isinstance(node, list):
            return [arn for item in node for arn in self.resources_of(item)]
        [(function, argument)] = node.items()
        if function == "Ref" and argument == "AWS::NoValue":
            return []
        if function == "Fn::Sub":
            return [self.sub(argument)]
        if function == "Fn::If":
            name, when_true, when_false = argument
            return self.resources_of(when_true if self.condition(name) else when_false)
        if function == "Fn::GetAtt":
            logical_id, attribute = argument
            resource = self.template["Resources"][logical_id]
            if resource["Type"] == "AWS::Events::EventBus":
                return [_bus_arn(self.sub(resource["Properties"]["Name"]["Fn::Sub"]))]
            if resource["Type"] != "AWS::DynamoDB::Table":
                return [f"{logical_id}.{attribute}"]  # never a DynamoDB ARN
            table = _table_arn(self.sub(resource["Properties"]["TableName"]["Fn::Sub"]))
            return [{"Arn": table, "StreamArn": f"{table}/stream/*"}[attribute]]
        raise AssertionError(f"{function} is not resolved by this test")

    def holds(self, condition: Mapping[str, Any]) -> bool:
        """Return whether a statement's condition holds for every request.

        Only ``StringEquals`` is understood; a key the requests were not
        seen with (``context``) fails, as it would in IAM.
        """
        for operator, keys in condition.items():
            if operator != "StringEquals":
                raise AssertionError(f"{operator} is not evaluated by this test")
            for key, wanted in keys.items():
                sent = self.context.get(key)
                if not sent or sent != {self.value(wanted)}:
                    return False
        return True

    def refused(
        self, statements: list[dict[str, Any]], requests: list[Request]
    ) -> list[Request]:
        """Return the requests no Allow statement grants, each once."""
        grants = [
            (_as_list(s["Action"]), self.resources_of(s["Resource"]))
            for s in statements
            if s["Effect"] == "Allow" and self.holds(s.get("Condition", {}))
        ]
        return sorted(
            {
                (action, resource)
                for action, resource in requests
                if not any(
                    any(fnmatchcase(action, a) for a in actions)
                    and any(fnmatchcase(resource, r) for r in arns)
                    for actions, arns in grants
                )
            }
        )


def _stack(template: dict[str, Any], table_prefix: str, ordering: str) -> _Stack:
    return _Stack(
        template,
        {
            "TablePrefix": table_prefix,
            "ApplicationName": Orders.name,
            "ProjectionName": OrderProjector.name,
            "PublicationName": OrderEvents.name,
            "IntegrationEventSource": template["Parameters"]["IntegrationEventSource"][
                "Default"
            ],
            "Ordering": ordering,
        },
    )


def _place_and_confirm(orders: Orders) -> uuid.UUID:
    order_id = orders.place_order(uuid.uuid4(), [ITEM])
    orders.confirm(order_id)
    return order_id


@pytest.fixture
def streamed_tables(
    streamed: None, orders: Orders, view: DynamoDBView
) -> tuple[Orders, DynamoDBView]:
    """The stack's tables, the events table with its stream, and two orders."""
    _place_and_confirm(orders)
    _place_and_confirm(orders)
    return orders, view


@pytest.fixture
def confirmations_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the projector's confirmation handler raise, and park at once."""

    def confirmation_fails(*_: Any) -> None:
        raise RuntimeError("a handler bug")

    monkeypatch.setattr(OrderProjector, "retry_delays", ())
    monkeypatch.setitem(
        OrderProjector.handlers, Order.OrderConfirmed, confirmation_fails
    )


def test_the_projector_role_allows_every_call_the_lambda_handler_makes(
    streamed_tables, confirmations_fail, dynamodb_env, template, recorded_requests
):
    # One order's first event is missing from the batch, so its gap is read
    # from the events table; every confirmation fails, so each is parked.
    orders, view = streamed_tables
    stream_arn = stream_arn_of(orders)
    records = [{**r, "eventSourceARN": stream_arn} for r in stream_records(orders)]
    batch = records[1:]
    handler = lambda_handler(
        OrderProjector, Orders, {**dynamodb_env, "CREATE_TABLE": "no"}
    )
    recorded_requests.clear()

    assert handler({"Records": batch}, None) == {"batchItemFailures": []}

    stack = _stack(template, dynamodb_env["DYNAMODB_TABLE_PREFIX"], "sequence")
    events_table = _table_arn(orders.recorder.events_table_name)
    parked_table = _table_arn(view.parked_table_name)
    assert ("dynamodb:Query", events_table) in recorded_requests
    assert ("dynamodb:PutItem", parked_table) in recorded_requests
    statements = [
        statement
        for policy in template["Resources"]["ProjectorRole"]["Properties"]["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]
    ]
    assert stack.refused(statements, recorded_requests) == []


@pytest.fixture
def operator_commands(
    dynamodb_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., None]:
    """Run ``ledger`` commands in this process, as an operator would, tables made."""
    monkeypatch.setenv("CREATE_TABLE", "no")

    def run(*args: str) -> None:
        cli(list(args), standalone_mode=False)

    return run


@pytest.fixture(params=["sequence", "stream"])
def deployed(
    request: pytest.FixtureRequest,
    streamed: None,
    dynamodb_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Orders]:
    """The tables the stack makes, in either ordering, with orders.

    One order has an event no code can decode: a rebuild parks it, and a
    redrive tries it again.
    """
    ordering = request.param
    env = {**dynamodb_env, "DYNAMODB_ORDERING": ordering}
    monkeypatch.setenv("DYNAMODB_ORDERING", ordering)
    app = Orders(env=env)
    open_view(OrderProjector, env)
    store_an_undecodable_event(app)
    yield app
    app.close()


def test_the_operator_policy_allows_rebuild_status_dlq_and_dropping_versions(
    deployed, template, recorded_requests, operator_commands, dynamodb_env
):
    name = OrderProjector.name
    operator_commands("projections", "rebuild", name)
    operator_commands("projections", "status", name)
    operator_commands("projections", "dlq", "list", name)
    operator_commands("projections", "dlq", "redrive", name)
    operator_commands("projections", "rebuild", name)
    view = open_view(OrderProjector, {**dynamodb_env, "CREATE_TABLE": "no"})
    drop_version(view, 2)

    ordering = deployed.recorder.ordering
    stack = _stack(template, dynamodb_env["DYNAMODB_TABLE_PREFIX"], ordering)
    version_3 = _table_arn(view.version_table_name(3))
    assert ("dynamodb:CreateTable", version_3) in recorded_requests
    assert (
        "dynamodb:DeleteTable",
        _table_arn(view.version_table_name(2)),
    ) in recorded_requests
    policy = template["Resources"]["ProjectionOperatorPolicy"]["Properties"]
    assert stack.refused(policy["PolicyDocument"]["Statement"], recorded_requests) == []


# --- publishing ---------------------------------------------------------------------


def test_the_publisher_publishes_to_the_stacks_bus_and_the_rule_forwards_its_source(
    resources,
):
    variables = resources["Publisher"]["Properties"]["Environment"]["Variables"]
    rule = resources["IntegrationEventsRule"]["Properties"]
    [target] = rule["Targets"]
    [statement] = resources["IntegrationEventsQueuePolicy"]["Properties"][
        "PolicyDocument"
    ]["Statement"]

    assert variables[Publisher.PUBLISHER_EVENT_BUS] == {"Ref": "IntegrationEventBus"}
    assert variables["CREATE_TABLE"] == "no"
    assert rule["EventBusName"] == {"Ref": "IntegrationEventBus"}
    assert rule["EventPattern"] == {"source": [{"Ref": "IntegrationEventSource"}]}
    assert target["Arn"] == {"Fn::GetAtt": ["IntegrationEventsQueue", "Arn"]}
    assert "DeadLetterConfig" in target
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Condition"] == {
        "ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["IntegrationEventsRule", "Arn"]}}
    }


def test_the_publisher_mapping_retries_until_records_are_18_hours_old(resources):
    mapping = resources["PublisherStreamMapping"]["Properties"]

    assert mapping["MaximumRetryAttempts"] == -1
    assert mapping["MaximumRecordAgeInSeconds"] == 18 * 60 * 60


ONLY_THE_PUBLICATIONS_SOURCE = {
    "StringEquals": {"events:source": {"Ref": "IntegrationEventSource"}}
}


def test_put_events_is_granted_only_for_the_publications_source(resources):
    role = resources["PublisherRole"]["Properties"]
    operator = resources["PublisherOperatorPolicy"]["Properties"]
    statements = [
        statement
        for policy in role["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]
    ] + operator["PolicyDocument"]["Statement"]

    put_events = [s for s in statements if s["Action"] == "events:PutEvents"]

    assert len(put_events) == 2
    for statement in put_events:
        assert statement["Condition"] == ONLY_THE_PUBLICATIONS_SOURCE


def test_the_bus_keeps_an_archive_for_replays(resources):
    [archive] = [
        resource["Properties"]
        for resource in resources.values()
        if resource["Type"] == "AWS::Events::Archive"
    ]
    days = archive["RetentionDays"]

    assert archive["SourceArn"] == {"Fn::GetAtt": ["IntegrationEventBus", "Arn"]}
    assert "EventPattern" not in archive  # every event of the bus
    assert f"{days}-day archive" in README.read_text()


@dataclass
class PublishingStack:
    """The stack's tables (events with their stream), its bus and the rule's queue."""

    orders: Orders
    env: dict[str, str]
    """The application's environment, and the publisher's: the stack's bus."""
    bus: Bus
    prefix: str


@pytest.fixture(scope="module")
def eventbridge_endpoint() -> Iterator[str]:
    with local_eventbridge() as endpoint:
        yield endpoint


@pytest.fixture
def publishing_stack(
    streamed: None,
    orders: Orders,
    dynamodb_env: dict[str, str],
    eventbridge_endpoint: str,
) -> PublishingStack:
    prefix = dynamodb_env["DYNAMODB_TABLE_PREFIX"]
    # Named as the template names it, so its ARN is the one the policies grant.
    bus = Bus(f"{prefix}{orders.name}-integration", eventbridge_endpoint).create()
    env = {
        **dynamodb_env,
        "PUBLISHER_EVENT_BUS": bus.name,
        "EVENTBRIDGE_ENDPOINT_URL": eventbridge_endpoint,
    }
    return PublishingStack(orders, env, bus, prefix)


def test_the_dead_letter_metric_filter_matches_what_the_publisher_logs(
    resources, publishing_stack, caplog
):
    filter_properties = resources["PublisherDeadLettersMetricFilter"]["Properties"]
    [phrase] = re.findall(r'"([^"]+)"', filter_properties["FilterPattern"])
    [metric] = filter_properties["MetricTransformations"]
    [alarm] = _alarms_on(resources, "ledger", metric["MetricName"])
    orders = publishing_stack.orders
    store_an_undecodable_event(orders)
    publisher = Publisher(OrderEvents(), orders, env=publishing_stack.env)

    with caplog.at_level("ERROR", logger=publisher_logger.name):
        publisher.process(stream_records(orders))

    # The undecodable event, and the confirmation whose v2 reads the order.
    dead_lettered = [r.getMessage() for r in caplog.records]
    assert len(dead_lettered) == 2
    assert all(phrase in message for message in dead_lettered)
    assert alarm["Statistic"] == "Sum"


def test_the_publisher_role_allows_every_call_the_lambda_handler_makes(
    publishing_stack, template, recorded_requests
):
    orders, bus, prefix = (
        publishing_stack.orders,
        publishing_stack.bus,
        publishing_stack.prefix,
    )
    _place_and_confirm(orders)
    store_an_undecodable_event(orders)  # one record is dead-lettered
    Publisher(OrderEvents(), orders, env=publishing_stack.env)  # the stack's table
    stream_arn = stream_arn_of(orders)
    records = [{**r, "eventSourceARN": stream_arn} for r in stream_records(orders)]
    env = {**publishing_stack.env, "CREATE_TABLE": "no"}
    handler = publisher_handler(OrderEvents, Orders, env)
    recorded_requests.clear()

    assert handler({"Records": records}, None) == {"batchItemFailures": []}

    stack = _stack(template, prefix, "sequence")
    stack.context["events:source"] = {e["source"] for e in bus.received()}
    publisher_table = _table_arn(f"{prefix}{OrderEvents.name}_publishing")
    assert ("dynamodb:PutItem", publisher_table) in recorded_requests
    assert ("events:PutEvents", _bus_arn(bus.name)) in recorded_requests
    statements = [
        statement
        for policy in template["Resources"]["PublisherRole"]["Properties"]["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]
    ]
    assert stack.refused(statements, recorded_requests) == []
    assert stack.context["events:source"] == {SOURCE}


def test_the_publisher_operator_policy_allows_listing_and_redriving_dead_letters(
    publishing_stack, template, recorded_requests
):
    orders, env = publishing_stack.orders, publishing_stack.env
    _place_and_confirm(orders)
    refusing = Publisher(OrderEvents(), orders, env=env, retry_delays=())
    refusing.client = RefusingClient(refusing.client, lambda _: "InternalFailure")
    refusing.process(stream_records(orders))
    recorded_requests.clear()

    operator = Publisher(OrderEvents(), orders, env={**env, "CREATE_TABLE": "no"})
    letters = operator.dead_letters()
    outcomes = operator.redrive()

    assert len(letters) == 3  # placed; confirmed as v1 and v2
    assert set(outcomes.values()) == {"published"}
    stack = _stack(template, publishing_stack.prefix, orders.recorder.ordering)
    stack.context["events:source"] = {
        e["source"] for e in publishing_stack.bus.received()
    }
    assert (
        "events:PutEvents",
        _bus_arn(publishing_stack.bus.name),
    ) in recorded_requests
    policy = template["Resources"]["PublisherOperatorPolicy"]["Properties"]
    assert stack.refused(policy["PolicyDocument"]["Statement"], recorded_requests) == []


# --- the Order fulfilment saga ------------------------------------------------------

SAGA_HANDLERS = {
    "FulfilmentFollowOrders": "follow_orders",
    "FulfilmentFollowWarehouse": "follow_warehouse",
    "FulfilmentFollowPayments": "follow_payments",
    "FulfilmentSendSteps": "send_steps",
    "FulfilmentTimeouts": "fire_timeouts",
}
"""Each saga function of the template: its handler in aggregates.fulfilment_lambda."""

SAGA_STREAMS = {
    "FulfilmentFollowOrders": "EventsTable",
    "FulfilmentFollowWarehouse": "WarehouseEventsTable",
    "FulfilmentFollowPayments": "PaymentsEventsTable",
    "FulfilmentSendSteps": "FulfilmentEventsTable",
}
"""Each stream-fed saga function and the table whose stream feeds it."""


def _saga_functions(resources: dict[str, Any]) -> list[str]:
    return [
        name
        for name, resource in resources.items()
        if resource["Type"] == "AWS::Lambda::Function"
        and str(resource["Properties"]["Handler"]).startswith(
            f"{fulfilment_lambda.__name__}."
        )
    ]


def _role_statements(
    stack: _Stack, resources: dict[str, Any], function: str
) -> list[dict[str, Any]]:
    """Return the statements of a function's role: inline and managed, resolved."""
    role = resources[function]["Properties"]["Role"]["Fn::GetAtt"][0]
    properties = resources[role]["Properties"]
    documents = [policy["PolicyDocument"] for policy in properties["Policies"]]
    documents += [
        resources[arn["Ref"]]["Properties"]["PolicyDocument"]
        for arn in properties.get("ManagedPolicyArns", [])
    ]
    statements = []
    for document in documents:
        for written in document["Statement"]:
            statement = written
            if "Fn::If" in written:
                name, when_true, when_false = written["Fn::If"]
                statement = when_true if stack.condition(name) else when_false
                if statement == {"Ref": "AWS::NoValue"}:
                    continue
            statements.append(statement)
    return statements


def test_the_saga_functions_are_the_handlers_module_names(resources):
    handlers = {
        name: resources[name]["Properties"]["Handler"]
        for name in _saga_functions(resources)
    }

    assert handlers == {
        name: f"{fulfilment_lambda.__name__}.{function}"
        for name, function in SAGA_HANDLERS.items()
    }
    for function in SAGA_HANDLERS.values():
        assert callable(getattr(fulfilment_lambda, function))


def test_the_saga_handlers_build_nothing_at_import() -> None:
    probe = (
        "import sys; import aggregates.fulfilment_lambda; "
        "assert 'aggregates.fulfilment' not in sys.modules; "
        "assert 'ledger.sagas' not in sys.modules"
    )
    done = subprocess.run(  # noqa: S603 - our own interpreter, fixed argv
        [sys.executable, "-c", probe],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        check=False,
    )

    assert done.returncode == 0, done.stderr


def test_the_saga_tables_are_named_after_its_applications(resources):
    def stem(logical_id: str) -> str:
        return str(resources[logical_id]["Properties"]["TableName"]["Fn::Sub"])

    assert stem("WarehouseEventsTable") == f"${{TablePrefix}}{Warehouse.name}_events"
    assert stem("PaymentsEventsTable") == f"${{TablePrefix}}{Payments.name}_events"
    assert (
        stem("FulfilmentEventsTable")
        == f"${{TablePrefix}}{OrderFulfilment.name}_events"
    )
    assert (
        stem("FulfilmentNotificationsTable")
        == f"${{TablePrefix}}{OrderFulfilment.name}_notifications"
    )
    # The saga reads its own sequence whatever the leaders' ordering.
    assert "Condition" not in resources["FulfilmentNotificationsTable"]
    for events in SAGA_STREAMS.values():
        assert resources[events]["DeletionPolicy"] == "Retain"
        assert resources[events]["Properties"]["StreamSpecification"] == {
            "StreamViewType": "NEW_IMAGE"
        }


@pytest.mark.parametrize(("function", "table"), SAGA_STREAMS.items())
def test_each_saga_stream_function_is_fed_by_its_tables_stream(
    resources, function, table
):
    [mapping] = [
        resource["Properties"]
        for resource in resources.values()
        if resource["Type"] == "AWS::Lambda::EventSourceMapping"
        and resource["Properties"]["FunctionName"] == {"Ref": function}
    ]

    assert mapping["EventSourceArn"] == {"Fn::GetAtt": [table, "StreamArn"]}
    assert mapping["DestinationConfig"]["OnFailure"]["Destination"] == {
        "Fn::GetAtt": ["FulfilmentFailureQueue", "Arn"]
    }


def test_the_saga_functions_get_the_payment_timeout_parameter(template, resources):
    parameter = template["Parameters"]["PaymentTimeoutSeconds"]

    assert parameter["Default"] == OrderFulfilment.DEFAULT_PAYMENT_TIMEOUT.seconds
    for name in _saga_functions(resources):
        variables = resources[name]["Properties"]["Environment"]["Variables"]
        assert variables[OrderFulfilment.PAYMENT_TIMEOUT_SECONDS] == {
            "Ref": "PaymentTimeoutSeconds"
        }
        assert variables["CREATE_TABLE"] == "no"
        assert variables["DYNAMODB_ORDERING"] == {"Ref": "Ordering"}


def test_the_schedule_invokes_the_timeout_poller_every_minute(resources):
    [schedule] = [
        resource["Properties"]
        for resource in resources.values()
        if resource["Type"] == "AWS::Scheduler::Schedule"
    ]
    target = schedule["Target"]
    role = resources[target["RoleArn"]["Fn::GetAtt"][0]]["Properties"]
    [trust] = role["AssumeRolePolicyDocument"]["Statement"]
    [allowed] = [
        statement
        for policy in role["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]
    ]
    timeouts = resources["FulfilmentTimeouts"]["Properties"]

    assert schedule["ScheduleExpression"] == "rate(1 minute)"
    assert schedule["FlexibleTimeWindow"] == {"Mode": "OFF"}
    assert target["Arn"] == {"Fn::GetAtt": ["FulfilmentTimeouts", "Arn"]}
    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"}
    assert allowed["Action"] == "lambda:InvokeFunction"
    assert allowed["Resource"] == {"Fn::GetAtt": ["FulfilmentTimeouts", "Arn"]}
    # overlapping polls are safe; a reservation may not deploy (low quotas)
    assert "ReservedConcurrentExecutions" not in timeouts
    assert timeouts["Handler"].endswith(".fire_timeouts")
    assert "FulfilmentTimeouts" not in _stream_fed_functions(resources)


def test_lambda_neither_retries_nor_keeps_a_scheduled_poll_it_could_not_run(
    resources,
):
    # The Scheduler invokes asynchronously: without this, Lambda itself
    # retries a failed poll twice and a throttled one for up to 6 hours.
    [config] = [
        resource["Properties"]
        for resource in resources.values()
        if resource["Type"] == "AWS::Lambda::EventInvokeConfig"
        and resource["Properties"]["FunctionName"] == {"Ref": "FulfilmentTimeouts"}
    ]

    assert config["Qualifier"] == "$LATEST"
    assert config["MaximumRetryAttempts"] == 0
    assert config["MaximumEventAgeInSeconds"] == 60  # Lambda's least


def test_an_alarm_fires_when_nothing_invokes_the_timeout_poller(resources):
    [alarm] = _alarms_on(resources, "AWS/Lambda", "Invocations")

    assert alarm["Dimensions"] == [
        {"Name": "FunctionName", "Value": {"Ref": "FulfilmentTimeouts"}}
    ]
    assert alarm["Statistic"] == "Sum"
    assert alarm["Period"] * alarm["EvaluationPeriods"] <= 300
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == (
        "LessThanThreshold",
        1,
    )
    # no invocation publishes no data point: that is the failure
    assert alarm["TreatMissingData"] == "breaching"


@pytest.mark.parametrize("ordering", ["sequence", "stream"])
def test_the_saga_roles_grant_no_wildcard_actions(template, resources, ordering):
    stack = _stack(template, "", ordering)
    for function in SAGA_HANDLERS:
        statements = _role_statements(stack, resources, function)
        actions = [a for s in statements for a in _as_list(s["Action"])]
        assert all("*" not in action for action in actions)
        wildcard = [s["Action"] for s in statements if s["Resource"] == "*"]
        expected = ["dynamodb:ListStreams"] if function in SAGA_STREAMS else []
        assert wildcard == expected, function


@pytest.fixture(params=["sequence", "stream"])
def saga_stack(
    request: pytest.FixtureRequest,
    streamed: None,
    dynamodb_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[str, Shop]]:
    """The saga's stack: its tables and the leaders' (made), in either ordering.

    The handlers then build their applications from the environment, as in
    Lambda: ``CREATE_TABLE=no``, and timeouts due at once.
    """
    ordering = request.param
    env = {**dynamodb_env, "DYNAMODB_ORDERING": ordering}
    monkeypatch.setenv("DYNAMODB_ORDERING", ordering)
    shop = open_shop(env)
    for app in (shop.orders, shop.warehouse, shop.payments):
        app.recorder.idempotency.create_table()  # made at a first key otherwise
    fulfilment_lambda.reset()
    monkeypatch.setenv("CREATE_TABLE", "no")
    monkeypatch.setenv(OrderFulfilment.PAYMENT_TIMEOUT_SECONDS, "0")
    yield ordering, shop
    fulfilment_lambda.reset()
    shop.close()


def _run_the_saga_as_lambda_does(
    shop: Shop, recorded: list[Request]
) -> dict[str, list[Request]]:
    """Drive the saga's handlers: an order shipped, one timed out then charged late.

    Returns what each function asked IAM for. Between invocations the test
    plays the streams (a scan of each events table, as Lambda would deliver
    it) and the payment gateway. Each stream's first record is held back
    (``_with_a_gap``), so a gap is filled from the events table.
    """
    calls: dict[str, list[Request]] = {function: [] for function in SAGA_HANDLERS}
    leaders: dict[str, Any] = {
        "FulfilmentFollowOrders": shop.orders,
        "FulfilmentFollowWarehouse": shop.warehouse,
        "FulfilmentFollowPayments": shop.payments,
        "FulfilmentSendSteps": shop.fulfilment,
    }
    arns = {function: stream_arn_of(app) for function, app in leaders.items()}
    needs_a_gap: dict[str, Any] = dict.fromkeys(leaders)

    def invoke(function: str) -> Any:
        handler = getattr(fulfilment_lambda, SAGA_HANDLERS[function])
        event: dict[str, Any] = {}
        if function in leaders:
            records = [
                {**r, "eventSourceARN": arns[function]}
                for r in stream_records(leaders[function])
            ]
            if function in needs_a_gap:
                records = _with_a_gap(records, function, needs_a_gap)
            event = {"Records": records}
        start = len(recorded)
        response = handler(event, None)
        calls[function].extend(recorded[start:])
        if function in leaders:
            assert response == {"batchItemFailures": []}, function
        return response

    def every_stream() -> None:
        for function in leaders:
            invoke(function)

    shipped, late = shop.place({TEA: 1}), shop.place({FIG: 1})
    every_stream()  # sagas begin; stock reserved
    every_stream()  # payments requested
    shop.answer(shipped, approved=True)
    invoke("FulfilmentFollowPayments")  # charged: its timeout is cancelled
    assert invoke("FulfilmentTimeouts") == {"fired": 1}  # the other's
    shop.answer(late, approved=True)  # charged after the timeout: refunded
    for _ in range(3):
        every_stream()
    invoke("FulfilmentTimeouts")
    assert shop.saga(shipped).outcome == "shipped"
    assert shop.saga(late).outcome == "cancelled"
    return calls


def _with_a_gap(
    records: list[dict[str, Any]], function: str, needs_a_gap: dict[str, Any]
) -> list[dict[str, Any]]:
    """Hold back the stream's first record until a later one of its aggregate comes.

    That later record then arrives after a gap, which the follower fills
    from the events table; from then on ``function``'s batches are whole.
    """

    def key(record: dict[str, Any]) -> tuple[str, int]:
        keys = record["dynamodb"]["Keys"]
        return keys["aggregate_id"]["S"], int(keys["version"]["N"])

    if not records:
        return records
    held = needs_a_gap[function] or key(records[0])
    needs_a_gap[function] = held
    if any(key(r)[0] == held[0] and key(r)[1] > held[1] for r in records):
        del needs_a_gap[function]
    return [r for r in records if key(r) != held]


def test_the_saga_roles_allow_every_call_the_saga_handlers_make(
    saga_stack, template, recorded_requests, dynamodb_env
):
    ordering, shop = saga_stack
    calls = _run_the_saga_as_lambda_does(shop, recorded_requests)

    stack = _stack(template, dynamodb_env["DYNAMODB_TABLE_PREFIX"], ordering)
    resources = template["Resources"]
    # What the run must have exercised: deciding, gaps, commands, timeouts.
    decided = (
        "dynamodb:PutItem",
        _table_arn(shop.fulfilment.recorder.events_table_name),
    )
    assert decided in calls["FulfilmentFollowWarehouse"]
    assert decided in calls["FulfilmentTimeouts"]
    for app in (shop.orders, shop.warehouse, shop.payments):
        events = _table_arn(app.recorder.events_table_name)
        keys = _table_arn(app.recorder.idempotency.table_name)
        assert ("dynamodb:PutItem", events) in calls["FulfilmentSendSteps"]
        assert ("dynamodb:PutItem", keys) in calls["FulfilmentSendSteps"]
    streamed_apps = (shop.orders, shop.warehouse, shop.payments, shop.fulfilment)
    for function, app in zip(SAGA_STREAMS, streamed_apps, strict=True):
        # the first record of its first batch, read from the table
        gap = ("dynamodb:Query", _table_arn(app.recorder.events_table_name))
        assert gap in calls[function], function
    for function, requests in calls.items():
        refused = stack.refused(_role_statements(stack, resources, function), requests)
        assert refused == [], function


def test_the_saga_check_fails_without_a_permission_the_commands_need(
    saga_stack, template, recorded_requests, dynamodb_env
):
    ordering, shop = saga_stack
    calls = _run_the_saga_as_lambda_does(shop, recorded_requests)
    resources = copy.deepcopy(template["Resources"])
    role = resources["FulfilmentSendStepsRole"]["Properties"]
    role["Policies"] = [
        policy for policy in role["Policies"] if policy["PolicyName"] != "send-commands"
    ]

    stack = _stack(template, dynamodb_env["DYNAMODB_TABLE_PREFIX"], ordering)
    refused = stack.refused(
        _role_statements(stack, resources, "FulfilmentSendSteps"),
        calls["FulfilmentSendSteps"],
    )

    keys = _table_arn(shop.warehouse.recorder.idempotency.table_name)
    assert ("dynamodb:PutItem", keys) in refused


def test_the_readmes_catch_up_command_processes_what_a_saga_missed(
    saga_stack, capsys, monkeypatch
):
    _, shop = saga_stack
    section = README.read_text().split("## The Order fulfilment saga")[1]
    [code] = re.findall(r"```sh\npython -c '\n(.*?)\n' warehouse ", section, re.DOTALL)
    order_id = shop.place({TEA: 2})
    orders = stream_records(shop.orders)
    arn = stream_arn_of(shop.orders)
    fulfilment_lambda.follow_orders(
        {"Records": [{**r, "eventSourceARN": arn} for r in orders]}, None
    )
    own = stream_records(shop.fulfilment)
    arn = stream_arn_of(shop.fulfilment)
    fulfilment_lambda.send_steps(
        {"Records": [{**r, "eventSourceARN": arn} for r in own]}, None
    )
    reservation = shop.warehouse.get_reservation(order_id)
    assert reservation is not None
    # The warehouse's records were given up on: the saga never learned them.
    assert Fact.STOCK_RESERVED not in shop.saga(order_id).facts

    monkeypatch.setattr(sys, "argv", ["-c", "warehouse", str(reservation.id)])
    exec(code, {})  # noqa: S102 - the README's own command

    assert capsys.readouterr().out == "True\n"
    assert Fact.STOCK_RESERVED in shop.saga(order_id).facts
