"""The AWS template passes cfn-lint and wires the projector as the docs say."""

from __future__ import annotations

import copy
import functools
import importlib
import json
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import boto3
import botocore.client
import pytest
from cfnlint.api import lint_file
from cfnlint.decode import decode
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import resolve_topic

from aggregates import fulfilment_lambda, services
from aggregates.application import Orders
from aggregates.fulfilment import OrderFulfilment
from aggregates.order import Order
from aggregates.payments import Payments
from aggregates.services import PAYMENTS, WAREHOUSE
from aggregates.warehouse import Warehouse
from ledger import index_consumers
from ledger.cli.app import cli
from ledger.feeds import StreamSource, feed_records
from ledger.inbox import Inbox
from ledger.inbox.sqs import MAX_MESSAGES_PER_RECEIVE, lambda_handler
from ledger.index_consumers import (
    INDEX_DIMENSION,
    LEDGER_INDEX_READERS,
    STOP_MARGIN_MS,
    WakeUp,
    indexer_handler,
    projection_handler,
    publication_handler,
)
from ledger.indexer import Indexer
from ledger.indexer import lambda_handler as indexer_lambda_handler
from ledger.projections.dynamodb import DynamoDBView, open_view
from ledger.projections.metrics import (
    DIMENSION,
    INDEX_OLDEST_UNINDEXED_AGE,
    LAG,
    LEDGER_METRICS,
    NAMESPACE,
    PUBLICATION_DIMENSION,
    SAGA_DIMENSION,
    SAGAS_PARKED,
)
from ledger.projections.rebuild import drop_version
from ledger.publishing import Publisher
from ledger.publishing import schema as publishing_schema
from ledger.publishing.publisher import logger as publisher_logger
from ledger.sagas import PARKED_TABLE
from projections.integration import SOURCE, OrderEvents
from projections.orders import OrderProjector
from tests.test_index_consumers import SCHEDULED, with_time_to_work
from tests.test_projections_core import ITEM
from tests.test_projections_dynamodb import (
    store_an_undecodable_event,
    stream_records,
)
from tests.test_publisher import Bus, RefusingClient, local_eventbridge
from tests.test_saga_fulfilment import FIG, INDEXED, TEA, Shop, open_shop

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
        "WarehouseInboxTable",
        "PaymentsInboxTable",
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
    "parameter", ["TablePrefix", "ApplicationName", "ProjectionName", "PublicationName"]
)
def test_names_lambda_would_refuse_are_refused_by_the_template(template, parameter):
    pattern = template["Parameters"][parameter]["AllowedPattern"]
    default = template["Parameters"][parameter]["Default"]

    # CloudFormation matches AllowedPattern against the whole value
    assert re.fullmatch(pattern, "Orders_v2-eu")
    assert re.fullmatch(pattern, default) is not None
    assert re.fullmatch(pattern, "orders.eu") is None
    assert re.fullmatch(pattern, "orders/eu") is None


# --- one reader per stream: the indexer ----------------------------------------------

INDEXERS = {
    "OrdersIndexer": "EventsTable",
    "WarehouseIndexer": "WarehouseEventsTable",
    "PaymentsIndexer": "PaymentsEventsTable",
    "FulfilmentIndexer": "FulfilmentEventsTable",
}
"""Each indexer function and the events table whose stream it reads."""
INDEXER_HANDLER = (
    f"{indexer_lambda_handler.__module__}.{indexer_lambda_handler.__name__}"
)
FOLLOWERS = {
    "Projector": f"{index_consumers.__name__}.{index_consumers.project.__name__}",
    "Publisher": f"{index_consumers.__name__}.{index_consumers.publish.__name__}",
    "FulfilmentFollowIndex": f"{fulfilment_lambda.__name__}.follow_index",
}
"""Each function following an index, and its handler."""
STREAM_READS = {"dynamodb:GetRecords", "dynamodb:GetShardIterator"}
"""The actions that read a stream's records (a reader, as DynamoDB Streams counts)."""


def _streams(resources: dict[str, Any]) -> list[str]:
    return [
        name
        for name, resource in resources.items()
        if resource["Type"] == "AWS::DynamoDB::Table"
        and "StreamSpecification" in resource["Properties"]
    ]


def _stream_readers(resources: dict[str, Any], table: str) -> set[str]:
    """Return what reads a table's stream: mappings' functions, roles that may."""
    stream = {"Fn::GetAtt": [table, "StreamArn"]}
    readers = {
        str(resource["Properties"]["FunctionName"]["Ref"])
        for resource in resources.values()
        if resource["Type"] == "AWS::Lambda::EventSourceMapping"
        and resource["Properties"]["EventSourceArn"] == stream
    }
    for name, resource in resources.items():
        if resource["Type"] not in ("AWS::IAM::Role", "AWS::IAM::ManagedPolicy"):
            continue
        properties = resource["Properties"]
        documents = [p["PolicyDocument"] for p in properties.get("Policies", [])]
        documents += (
            [properties["PolicyDocument"]] if "PolicyDocument" in properties else []
        )
        for statement in _either_branch(s for d in documents for s in d["Statement"]):
            actions = set(_as_list(statement["Action"]))
            granted = _as_list(statement["Resource"])
            if actions & STREAM_READS and (stream in granted or "*" in granted):
                readers.add(_function_of_role(resources, name))
    return readers


def _either_branch(statements: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Return the statements, a conditional one's both branches (either may hold)."""
    for statement in statements:
        if "Fn::If" in statement:
            _, *branches = statement["Fn::If"]
            yield from (b for b in branches if "Action" in b)
        else:
            yield statement


def _function_of_role(resources: dict[str, Any], role: str) -> str:
    users = [
        name
        for name, resource in resources.items()
        if resource["Type"] == "AWS::Lambda::Function"
        and resource["Properties"]["Role"] == {"Fn::GetAtt": [role, "Arn"]}
    ]
    return users[0] if len(users) == 1 else role


def test_no_stream_has_more_than_one_reader_and_it_is_its_tables_indexer(resources):
    streams = _streams(resources)

    assert sorted(streams) == sorted(INDEXERS.values())
    for table in streams:
        readers = _stream_readers(resources, table)
        assert len(readers) <= 1, f"{table}'s stream has readers {sorted(readers)}"
        [indexer] = readers
        assert INDEXERS[indexer] == table
        assert resources[indexer]["Properties"]["Handler"] == INDEXER_HANDLER


def test_the_stream_check_fails_when_a_second_function_reads_a_stream(resources):
    # Yesterday's template: a projector mapped onto the Orders events stream.
    with_a_mapping = {
        **resources,
        "ProjectorStreamMapping": {
            "Type": "AWS::Lambda::EventSourceMapping",
            "Properties": {
                "FunctionName": {"Ref": "Projector"},
                "EventSourceArn": {"Fn::GetAtt": ["EventsTable", "StreamArn"]},
            },
        },
    }

    assert _stream_readers(with_a_mapping, "EventsTable") == {
        "OrdersIndexer",
        "Projector",
    }


def test_no_event_source_mapping_reads_any_stream(resources):
    # The indexers drain their streams themselves (their checkpoints commit
    # with what they append); nothing else reads a stream. The only mappings
    # are the services' inboxes, on their own queues.
    sources = {
        name: resource["Properties"]["EventSourceArn"]
        for name, resource in resources.items()
        if resource["Type"] == "AWS::Lambda::EventSourceMapping"
    }

    assert sources == {
        f"{service}InboxMapping": {"Fn::GetAtt": [f"{service}Queue", "Arn"]}
        for service in SERVICES
    }


def test_every_application_runs_indexed(resources):
    for function in _functions(resources):
        variables = resources[function]["Properties"]["Environment"]["Variables"]
        assert variables["DYNAMODB_ORDERING"] == "indexed", function
        assert variables["CREATE_TABLE"] == "no", function
        if "OrderFulfilment" in str(variables.get("LEDGER_APP", "")) or (
            function in SAGA_HANDLERS
        ):
            # the saga application's own ordering, which it reads prefixed
            assert variables["ORDERFULFILMENT_DYNAMODB_ORDERING"] == "indexed"


def _schedules_of(resources: dict[str, Any], function: str) -> list[dict[str, Any]]:
    return [
        resource["Properties"]
        for resource in resources.values()
        if resource["Type"] == "AWS::Scheduler::Schedule"
        and resource["Properties"]["Target"]["Arn"] == {"Fn::GetAtt": [function, "Arn"]}
    ]


def _invoke_config_of(resources: dict[str, Any], function: str) -> dict[str, Any]:
    [config] = [
        resource["Properties"]
        for resource in resources.values()
        if resource["Type"] == "AWS::Lambda::EventInvokeConfig"
        and resource["Properties"]["FunctionName"] == {"Ref": function}
    ]
    return dict(config)


def _scheduler_may_invoke(resources: dict[str, Any], schedule: dict[str, Any]) -> bool:
    role = resources[schedule["Target"]["RoleArn"]["Fn::GetAtt"][0]]["Properties"]
    [trust] = role["AssumeRolePolicyDocument"]["Statement"]
    target = schedule["Target"]["Arn"]
    return trust["Principal"] == {"Service": "scheduler.amazonaws.com"} and any(
        statement["Action"] == "lambda:InvokeFunction"
        and target in _as_list(statement["Resource"])
        for policy in role["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]
    )


@pytest.mark.parametrize("function", [*INDEXERS, *FOLLOWERS, "FulfilmentTimeouts"])
def test_every_index_function_runs_every_minute_and_late_runs_are_dropped(
    resources, function
):
    [schedule] = _schedules_of(resources, function)
    config = _invoke_config_of(resources, function)

    assert schedule["ScheduleExpression"] == "rate(1 minute)"
    assert schedule["FlexibleTimeWindow"] == {"Mode": "OFF"}
    assert schedule["Target"]["RetryPolicy"]["MaximumRetryAttempts"] == 0
    assert _scheduler_may_invoke(resources, schedule)
    # a late run only does the next one's work: Lambda neither retries nor keeps it
    assert (config["MaximumRetryAttempts"], config["MaximumEventAgeInSeconds"]) == (
        0,
        60,
    )
    # overlapping runs are safe; a reservation may not deploy (low quotas)
    assert "ReservedConcurrentExecutions" not in resources[function]["Properties"]


@pytest.mark.parametrize("indexer", INDEXERS)
def test_each_indexer_runs_for_about_the_minute_until_the_next_takes_over(
    resources, indexer
):
    properties = resources[indexer]["Properties"]
    variables = properties["Environment"]["Variables"]
    runs_for_seconds = properties["Timeout"] - STOP_MARGIN_MS / 1000

    assert 50 <= runs_for_seconds <= 60
    assert variables["LEDGER_INDEX_TOPIC_ARN"] == {"Ref": "IndexWakeUpTopic"}
    assert variables["LEDGER_APP"]


# --- the indexers' size: memory (hence CPU) and reader processes ---------------------

VCPU_MB = 1769
"""Lambda's memory per vCPU: CPU is allotted in proportion to memory."""
GB_SECOND_USD = 0.0000166667
"""Lambda's list price per GB-second, x86, us-east-1."""
MONTH_SECONDS = 730 * 3600
"""A month as AWS's pricing calculator counts it."""


def _rule_value(value: Any, parameters: Mapping[str, str]) -> Any:
    """Evaluate a CloudFormation rule's condition or assertion for ``parameters``."""
    if not isinstance(value, dict):
        return value
    [(function, argument)] = value.items()
    if function == "Ref":
        return parameters[argument]
    arguments = [_rule_value(a, parameters) for a in _as_list(argument)]
    if function == "Fn::Or":
        return any(arguments)
    if function == "Fn::And":
        return all(arguments)
    if function == "Fn::Not":
        return not arguments[0]
    if function == "Fn::Equals":
        return str(arguments[0]) == str(arguments[1])
    if function == "Fn::Contains":
        return str(arguments[1]) in [str(a) for a in arguments[0]]
    raise AssertionError(f"rule function {function} not understood by this test")


def _rules_allow(template: dict[str, Any], parameters: Mapping[str, str]) -> bool:
    """Whether every rule of the template holds for ``parameters``."""
    for rule in template.get("Rules", {}).values():
        condition = rule.get("RuleCondition")
        if condition is not None and not _rule_value(condition, parameters):
            continue
        if not all(_rule_value(a["Assert"], parameters) for a in rule["Assertions"]):
            return False
    return True


def _sizes(template: dict[str, Any]) -> Iterator[tuple[int, int]]:
    """Every (memory, readers) the parameters allow, before the rules."""
    parameters = template["Parameters"]
    for memory in parameters["IndexerMemorySize"]["AllowedValues"]:
        for readers in parameters["IndexerReaders"]["AllowedValues"]:
            yield int(memory), int(readers)


@pytest.mark.parametrize("indexer", INDEXERS)
def test_each_indexers_memory_and_readers_are_the_stacks_parameters(resources, indexer):
    properties = resources[indexer]["Properties"]
    variables = properties["Environment"]["Variables"]

    assert properties["MemorySize"] == {"Ref": "IndexerMemorySize"}
    assert variables[LEDGER_INDEX_READERS] == {"Ref": "IndexerReaders"}


def test_only_the_indexers_get_reader_processes(resources):
    with_readers = {
        function
        for function in _functions(resources)
        if LEDGER_INDEX_READERS
        in resources[function]["Properties"]["Environment"]["Variables"]
    }

    assert with_readers == set(INDEXERS)


def test_the_indexers_default_to_512_mb_in_one_process(template):
    parameters = template["Parameters"]

    assert parameters["IndexerMemorySize"]["Default"] == 512
    assert parameters["IndexerReaders"]["Default"] == 0


def _vcpu_check_failures(template: dict[str, Any]) -> list[tuple[int, int]]:
    """The sizes the template's rules get wrong: readers without a vCPU each allowed,
    or readers with one refused."""
    return [
        (memory, readers)
        for memory, readers in _sizes(template)
        if _rules_allow(
            template,
            {"IndexerMemorySize": str(memory), "IndexerReaders": str(readers)},
        )
        != (readers == 0 or memory >= readers * VCPU_MB)
    ]


def test_readers_are_allowed_only_with_a_vcpu_each(template):
    # Readers read while their committer waits: N of them need N vCPUs.
    assert _vcpu_check_failures(template) == []
    assert not _rules_allow(
        template, {"IndexerMemorySize": "3537", "IndexerReaders": "2"}
    )


@pytest.mark.parametrize("dropped", range(4))
def test_the_vcpu_check_fails_without_each_assertion_of_the_templates_rule(
    template, dropped
):
    rule = template["Rules"]["IndexerReadersHaveAVCPUEach"]
    weakened = copy.deepcopy(template)
    del weakened["Rules"]["IndexerReadersHaveAVCPUEach"]["Assertions"][dropped]
    readers = int(
        rule["Assertions"][dropped]["Assert"]["Fn::Or"][0]["Fn::Not"][0]["Fn::Equals"][
            1
        ]
    )

    # What that assertion refused is then allowed, and the check says so.
    assert len(rule["Assertions"]) == 4
    assert (512, readers) in _vcpu_check_failures(weakened)


def test_the_vcpu_check_fails_without_the_templates_rule(template):
    without_rules = {k: v for k, v in template.items() if k != "Rules"}

    assert _vcpu_check_failures(without_rules) == [
        (memory, readers)
        for memory, readers in _sizes(template)
        if readers and memory < readers * VCPU_MB
    ]


def _sizing_section() -> str:
    return README.read_text().split("## Sizing the indexer")[1].split("\n## ")[0]


def _sizing_table() -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in _sizing_section().splitlines()
        if re.match(r"\| \d", line)
    ]


def _stated_cpu() -> dict[str, tuple[float, float]]:
    """The µs an event the README states: in one process, the committer, a reader."""
    text = " ".join(_sizing_section().split())
    found = {}
    for role, pattern in {
        "one": r"in one process ([\d.]+) to ([\d.]+) µs an event",
        "committer": r"the committer ([\d.]+) to ([\d.]+) µs an event",
        "reader": r"a reader ([\d.]+) to ([\d.]+) µs\.",
    }.items():
        match = re.search(pattern, text)
        assert match, f"the README states no {role} figure"
        found[role] = (float(match[1]), float(match[2]))
    return found


def _ceiling(memory: int, readers: int, cpu: Mapping[str, tuple[float, float]]) -> str:
    """The ceiling, events a second, worked out as the README says (to the hundred)."""
    if readers:
        (fast_c, slow_c), (fast_r, slow_r) = cpu["committer"], cpu["reader"]
        low, high = 1e6 / (slow_c + slow_r / readers), 1e6 / (fast_c + fast_r / readers)
    else:
        vcpus = min(1.0, memory / VCPU_MB)
        fast, slow = cpu["one"]
        low, high = vcpus * 1e6 / slow, vcpus * 1e6 / fast
    return f"{round(low, -2):,.0f} to {round(high, -2):,.0f}"


def test_readme_ceilings_are_the_stored_runs_figures_worked_out(template):
    stored = json.loads(
        (ROOT / "benchmarks/results/indexer_readers_cpu.json").read_text()
    )
    one = [r["cpu_us_per_event"] for r in stored["runs"] if not r["readers"]]
    committer = [r["cpu_us_per_event"] for r in stored["runs"] if r["readers"]]
    reader = [us for r in stored["runs"] for us in r["reader_cpu_us_per_event"]]
    cpu = _stated_cpu()
    descriptions = {
        name: " ".join(template["Parameters"][name]["Description"].split())
        for name in ("IndexerMemorySize", "IndexerReaders")
    }

    assert "--gc-freeze --runs 6 --readers 0 2" in stored["command"]
    assert cpu == {
        "one": (min(one), max(one)),
        "committer": (min(committer), max(committer)),
        "reader": (min(reader), max(reader)),
    }
    for row in _sizing_table():
        memory, readers = int(row[0].split()[0]), int(row[2].split()[0])
        assert row[3].startswith(_ceiling(memory, readers, cpu)), row
    # The parameters' descriptions quote the same ceilings.
    assert (
        f"0.29 of a vCPU, {_ceiling(512, 0, cpu)} events"
        in descriptions["IndexerMemorySize"]
    )
    assert (
        f"1769 one vCPU, {_ceiling(1769, 0, cpu)} in one process"
        in descriptions["IndexerMemorySize"]
    )
    assert (
        f"2 at 3538 MB take {_ceiling(3538, 2, cpu)} events"
        in descriptions["IndexerReaders"]
    )


@pytest.mark.parametrize("indexer", INDEXERS)
def test_each_indexer_logs_the_readers_it_ends_with_their_process_ids(
    resources, indexer
):
    # In Lambda's text format the Python runtime leaves the root logger at
    # WARNING and writes the message only: the INFO line and its ids are lost.
    logging_config = resources[indexer]["Properties"].get("LoggingConfig", {})

    assert logging_config.get("LogFormat") == "JSON"
    assert logging_config.get("ApplicationLogLevel") in {"TRACE", "DEBUG", "INFO"}


def _subscribed_tables(resources: dict[str, Any], function: str) -> list[str]:
    """Return the events tables whose wake-ups invoke ``function`` (name patterns)."""
    [subscription] = [
        resource["Properties"]
        for resource in resources.values()
        if resource["Type"] == "AWS::SNS::Subscription"
        and resource["Properties"]["Endpoint"] == {"Fn::GetAtt": [function, "Arn"]}
    ]
    [permission] = [
        resource["Properties"]
        for resource in resources.values()
        if resource["Type"] == "AWS::Lambda::Permission"
        and resource["Properties"]["FunctionName"] == {"Ref": function}
    ]
    assert subscription["TopicArn"] == {"Ref": "IndexWakeUpTopic"}
    assert subscription["Protocol"] == "lambda"
    assert subscription["FilterPolicyScope"] == "MessageAttributes"
    assert permission["Principal"] == "sns.amazonaws.com"
    assert permission["SourceArn"] == {"Ref": "IndexWakeUpTopic"}
    return [t["Fn::Sub"] for t in subscription["FilterPolicy"]["events_table"]]


FOLLOWED = {
    "Projector": ["EventsTable"],
    "Publisher": ["EventsTable"],
    "FulfilmentFollowIndex": list(INDEXERS.values()),
}
"""The events tables whose index each follower reads."""


@pytest.mark.parametrize("function", FOLLOWERS)
def test_every_follower_is_woken_by_the_indexers_of_what_it_follows(
    resources, function
):
    tables = _subscribed_tables(resources, function)

    assert resources[function]["Properties"]["Handler"] == FOLLOWERS[function]
    assert sorted(tables) == sorted(
        _table_name(resources[t]) for t in FOLLOWED[function]
    )


def test_wake_ups_are_filtered_on_the_attribute_the_indexer_sends(resources):
    [subscription] = [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::SNS::Subscription"
        and r["Properties"]["Endpoint"] == {"Fn::GetAtt": ["Projector", "Arn"]}
    ]
    sent = WakeUp("topic", "Orders_events", None)

    assert list(subscription["FilterPolicy"]) == ["events_table"]
    assert sent.events_table == "Orders_events"


@pytest.mark.parametrize("function", [*INDEXERS, *FOLLOWERS])
def test_only_the_indexers_may_read_a_stream(template, resources, function):
    stack = _stack(template, "", "indexed")
    statements = _role_statements(stack, resources, function)
    reads = [
        s
        for s in statements
        if set(_as_list(s["Action"])) & {*STREAM_READS, "dynamodb:DescribeStream"}
    ]

    if function in INDEXERS:
        [read] = reads
        assert read["Resource"] == {"Fn::GetAtt": [INDEXERS[function], "StreamArn"]}
    else:
        assert reads == []


@pytest.mark.parametrize(
    "role", ["ProjectorRole", "PublisherRole", *(f"{i}Role" for i in INDEXERS)]
)
def test_function_roles_grant_no_wildcard_actions(resources, role):
    statements = [
        statement
        for policy in resources[role]["Properties"]["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]
    ]
    actions = [a for s in statements for a in _as_list(s["Action"])]
    assert all("*" not in action for action in actions)
    wildcard_resources = [s["Action"] for s in statements if s["Resource"] == "*"]
    assert wildcard_resources == []


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def test_every_handler_named_by_the_template_exists(resources) -> None:
    for function in _functions(resources):
        handler = resources[function]["Properties"]["Handler"]
        module_name, _, function_name = handler.rpartition(".")

        module = importlib.import_module(module_name)

        assert callable(getattr(module, function_name)), handler


@pytest.mark.parametrize(
    ("parameter", "default"),
    [
        ("ApplicationClass", Orders),
        ("ProjectorClass", OrderProjector),
        ("PublicationClass", OrderEvents),
    ],
)
def test_class_parameters_default_to_the_example(template, parameter, default):
    topic = template["Parameters"][parameter]["Default"]

    assert resolve_topic(topic) is default
    assert re.fullmatch(template["Parameters"][parameter]["AllowedPattern"], topic)


@pytest.mark.parametrize(
    ("function", "application"),
    [
        ("WarehouseIndexer", Warehouse),
        ("PaymentsIndexer", Payments),
        ("FulfilmentIndexer", OrderFulfilment),
    ],
)
def test_each_saga_tables_indexer_builds_the_application_of_its_table(
    resources, function, application
):
    variables = resources[function]["Properties"]["Environment"]["Variables"]
    events = INDEXERS[function]

    assert resolve_topic(variables["LEDGER_APP"]) is application
    assert (
        _table_name(resources[events]) == f"${{TablePrefix}}{application.name}_events"
    )


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
        if alarm.get("Namespace") == namespace and alarm.get("MetricName") == metric
    ]


def _lag_alarm(resources: dict[str, Any], dimension: str) -> dict[str, Any]:
    """Return the one alarm on ``Lag`` whose dimension is ``dimension``."""
    [alarm] = [
        alarm
        for alarm in _alarms_on(resources, NAMESPACE, LAG)
        if [d["Name"] for d in alarm["Dimensions"]] == [dimension]
    ]
    return alarm


def _functions(resources: dict[str, Any]) -> list[str]:
    return [
        name
        for name, resource in resources.items()
        if resource["Type"] == "AWS::Lambda::Function"
    ]


def test_every_function_has_an_alarm_on_its_errors(resources):
    watched = [
        alarm["Dimensions"]
        for alarm in _alarms_on(resources, "AWS/Lambda", "Errors")
        if alarm["Statistic"] == "Sum"
        and alarm["ComparisonOperator"] == "GreaterThanThreshold"
    ]

    assert sorted(map(str, watched)) == sorted(
        str([{"Name": "FunctionName", "Value": {"Ref": name}}])
        for name in _functions(resources)
    )


def test_errors_alarms_fire_on_the_first_error(resources):
    alarms = _alarms_on(resources, "AWS/Lambda", "Errors")

    assert len(alarms) == len(_functions(resources))
    for alarm in alarms:
        assert alarm["Threshold"] == 0
        assert alarm["Period"] * alarm["EvaluationPeriods"] <= 300


STREAM_RETENTION_MS = 24 * 60 * 60 * 1000
"""How long a DynamoDB stream keeps a record."""


def test_each_indexer_alarms_on_its_lag_long_before_the_stream_trims_records(
    template, resources
):
    alarms = _alarms_on(resources, NAMESPACE, INDEX_OLDEST_UNINDEXED_AGE)
    threshold = template["Parameters"]["IndexLagAlarmMilliseconds"]

    # the dimension the indexer's metrics carry, valued the table's name
    assert sorted(str(a["Dimensions"]) for a in alarms) == sorted(
        str(
            [{"Name": INDEX_DIMENSION, "Value": {"Fn::Sub": _table_name(resources[t])}}]
        )
        for t in INDEXERS.values()
    )
    for alarm in alarms:
        assert alarm["Threshold"] == {"Ref": "IndexLagAlarmMilliseconds"}
        assert alarm["Statistic"] == "Maximum"
    assert threshold["Default"] == 60_000
    assert threshold["MaxValue"] < STREAM_RETENTION_MS - 6 * 3600 * 1000


@pytest.mark.parametrize("function", [*INDEXERS, "FulfilmentTimeouts"])
def test_an_alarm_fires_when_nothing_invokes_a_scheduled_function(resources, function):
    [alarm] = [
        alarm
        for alarm in _alarms_on(resources, "AWS/Lambda", "Invocations")
        if alarm["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": function}}]
    ]

    assert alarm["Statistic"] == "Sum"
    assert alarm["Period"] * alarm["EvaluationPeriods"] <= 300
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == (
        "LessThanThreshold",
        1,
    )
    # no invocation publishes no data point: that is the failure
    assert alarm["TreatMissingData"] == "breaching"


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
    indexed_tables, confirmations_fail, dynamodb_env, resources, caplog
):
    filter_properties = resources["ParkedEventsMetricFilter"]["Properties"]
    [phrase] = re.findall(r'"([^"]+)"', filter_properties["FilterPattern"])
    _, view = indexed_tables
    handler = projection_handler(
        OrderProjector, Orders, {**_indexed(dynamodb_env), "CREATE_TABLE": "no"}
    )

    with caplog.at_level("ERROR", logger="ledger"):
        assert handler(SCHEDULED, with_time_to_work(30))["applied"] == 6

    # both orders' confirmations were parked
    assert len(view.parked_events()) == 2
    matched = [r for r in caplog.records if phrase in r.getMessage()]
    assert len(matched) == 2


def test_sagas_parked_alarm_watches_what_the_saga_function_reports(resources):
    [alarm] = _alarms_on(resources, NAMESPACE, SAGAS_PARKED)
    sender = resources["FulfilmentFollowIndex"]["Properties"]["Environment"]
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


def test_alarms_notify_the_topic_given_or_the_one_the_stack_makes(template, resources):
    notify = {
        "Fn::If": [
            "NotifiesAlarmTopic",
            [{"Ref": "AlarmTopicArn"}],
            [{"Ref": "AlarmTopic"}],
        ]
    }
    made = resources["AlarmTopic"]
    assert made["Type"] == "AWS::SNS::Topic"
    assert made["Condition"] == "MakesAlarmTopic"
    assert template["Conditions"]["MakesAlarmTopic"] == {
        "Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]
    }
    assert template["Outputs"]["AlarmTopic"]["Value"] == {
        "Fn::If": [
            "NotifiesAlarmTopic",
            {"Ref": "AlarmTopicArn"},
            {"Ref": "AlarmTopic"},
        ]
    }

    assert template["Parameters"]["AlarmTopicArn"]["Default"] == ""
    assert template["Conditions"]["NotifiesAlarmTopic"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}]
    }
    alarms = _alarms(resources)
    # 3 per indexer (errors, not invoked, lag), 3 of the projector (errors,
    # parked events, lag), 4 of publishing (errors, dead letters, the rule's
    # dead letters, lag), 5 of the saga (2 on errors, parked sagas, the
    # timeout poller not being invoked, lag), 4 per service (errors, its
    # queue's and its rule's dead letters, parked events)
    assert len(alarms) == 3 * len(INDEXERS) + 3 + 4 + 5 + 4 * len(SERVICES)
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
    if service == "sns" and operation == "Publish":
        return [("sns:Publish", params["TopicArn"])]
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
    return _record_requests(monkeypatch)


def _record_requests(monkeypatch: pytest.MonkeyPatch) -> list[Request]:
    """Record every IAM request of the calls made until ``monkeypatch`` undoes it."""
    requests: list[Request] = []
    original = botocore.client.BaseClient._make_api_call

    streams_of: dict[str, str] = {}
    """Each shard iterator handed out, and its stream (GetRecords names only it)."""

    def recording(client: Any, operation: str, params: dict[str, Any]) -> Any:
        service = client.meta.service_model.service_name
        if operation == "GetRecords":
            stream = streams_of[params["ShardIterator"]]
            requests.extend(_iam_requests(service, operation, {"StreamArn": stream}))
        else:
            requests.extend(_iam_requests(service, operation, params))
        answer = original(client, operation, params)
        stream = params.get("StreamArn") or streams_of.get(params.get("ShardIterator"))
        for key in ("ShardIterator", "NextShardIterator"):
            if stream and answer.get(key):
                streams_of[answer[key]] = stream
        return answer

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
        if function == "Ref":
            resource = self.template["Resources"][argument]
            assert resource["Type"] == "AWS::SNS::Topic", argument
            topic = self.sub(resource["Properties"]["TopicName"]["Fn::Sub"])
            return [f"arn:{PARTITION}:sns:{REGION}:{ACCOUNT}:{topic}"]
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
        },
    )


def _place_and_confirm(orders: Orders) -> uuid.UUID:
    order_id = orders.place_order(uuid.uuid4(), [ITEM])
    orders.confirm(order_id)
    return order_id


def _indexed(env: dict[str, str]) -> dict[str, str]:
    """The stack's functions' environment: every application indexed."""
    return {**env, **INDEXED}


def _index(*apps: Any) -> None:
    """Play the indexer functions: index until each index holds its events table."""
    for app in apps:
        recorder = app.recorder
        indexer = Indexer(recorder)
        saved = recorder.connection.call(
            "scan", TableName=recorder.events_table_name, Select="COUNT"
        )["Count"]
        deadline = time.monotonic() + 30
        while (recorder.max_notification_id() or 0) < saved:
            assert time.monotonic() < deadline, "the stream did not show the saves"
            indexer.poll()


@pytest.fixture
def indexed_tables(
    dynamodb_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Orders, DynamoDBView]]:
    """The stack's tables, indexed, and two orders in the index."""
    env = _indexed(dynamodb_env)
    for key, value in INDEXED.items():
        monkeypatch.setenv(key, value)
    orders = Orders(env=env)
    view = open_view(OrderProjector, env)
    _place_and_confirm(orders)
    _place_and_confirm(orders)
    _index(orders)
    yield orders, view
    orders.close()


@pytest.fixture
def confirmations_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the projector's confirmation handler raise, and park at once."""

    def confirmation_fails(*_: Any) -> None:
        raise RuntimeError("a handler bug")

    monkeypatch.setattr(OrderProjector, "retry_delays", ())
    monkeypatch.setitem(
        OrderProjector.handlers, Order.OrderConfirmed, confirmation_fails
    )


def _role_of(
    template: dict[str, Any], stack: _Stack, function: str
) -> list[dict[str, Any]]:
    return _role_statements(stack, template["Resources"], function)


def test_the_projector_role_allows_every_call_the_lambda_handler_makes(
    indexed_tables, confirmations_fail, dynamodb_env, template, recorded_requests
):
    # Every confirmation fails, so each is parked.
    orders, view = indexed_tables
    handler = projection_handler(
        OrderProjector, Orders, {**_indexed(dynamodb_env), "CREATE_TABLE": "no"}
    )
    recorded_requests.clear()

    assert handler(SCHEDULED, with_time_to_work(30))["position"] == 6

    stack = _stack(template, dynamodb_env["DYNAMODB_TABLE_PREFIX"], "indexed")
    notifications = _table_arn(orders.recorder.notifications_table_name)
    parked_table = _table_arn(view.parked_table_name)
    assert ("dynamodb:Query", notifications) in recorded_requests
    assert ("dynamodb:PutItem", parked_table) in recorded_requests
    assert not any(":stream/" in resource for _, resource in recorded_requests)
    statements = _role_of(template, stack, "Projector")
    assert stack.refused(statements, recorded_requests) == []


@pytest.fixture(scope="module")
def aws_endpoint() -> Iterator[str]:
    """A local SNS, SQS and EventBridge (moto's server) for this module."""
    with local_eventbridge() as endpoint:
        yield endpoint


@pytest.fixture
def wake_up_topic(aws_endpoint: str, dynamodb_env: dict[str, str]) -> str:
    """The stack's wake-up topic, named as the template names it; its ARN."""
    sns = boto3.client(
        "sns",
        endpoint_url=aws_endpoint,
        region_name=REGION,
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 - the local server's placeholder
    )
    prefix = dynamodb_env["DYNAMODB_TABLE_PREFIX"]
    arn: str = sns.create_topic(Name=f"{prefix}{Orders.name}-index-advanced")[
        "TopicArn"
    ]
    return arn


def test_the_indexer_role_allows_every_call_the_indexer_handler_makes(  # noqa: PLR0917
    dynamodb_env, template, recorded_requests, wake_up_topic, aws_endpoint, monkeypatch
):
    env = _indexed(dynamodb_env)
    for key, value in INDEXED.items():
        monkeypatch.setenv(key, value)
    orders = Orders(env=env)
    _place_and_confirm(orders)
    handler = indexer_handler(
        Orders,
        {
            **env,
            "CREATE_TABLE": "no",
            "LEDGER_INDEX_TOPIC_ARN": wake_up_topic,
            "SNS_ENDPOINT_URL": aws_endpoint,
        },
        idle_wait=0.05,
    )
    recorded_requests.clear()

    deadline = time.monotonic() + 30
    while handler(SCHEDULED, with_time_to_work(1))["head"] < 3:
        assert time.monotonic() < deadline

    stack = _stack(template, dynamodb_env["DYNAMODB_TABLE_PREFIX"], "indexed")
    events_stream = _table_arn(orders.recorder.events_table_name) + "/stream/"
    assert any(
        action == "dynamodb:GetRecords" and resource.startswith(events_stream)
        for action, resource in recorded_requests
    )
    assert ("sns:Publish", wake_up_topic) in recorded_requests
    assert wake_up_topic.endswith(":" + _role_topic_name(template, stack))
    refused = stack.refused(
        _role_of(template, stack, "OrdersIndexer"), recorded_requests
    )
    assert refused == []
    orders.close()


def _role_topic_name(template: dict[str, Any], stack: _Stack) -> str:
    topic = template["Resources"]["IndexWakeUpTopic"]["Properties"]["TopicName"]
    return stack.sub(topic["Fn::Sub"])


@pytest.fixture
def operator_commands(
    dynamodb_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., None]:
    """Run ``ledger`` commands in this process, as an operator would, tables made."""
    monkeypatch.setenv("CREATE_TABLE", "no")

    def run(*args: str) -> None:
        cli(list(args), standalone_mode=False)

    return run


@pytest.fixture
def deployed(
    dynamodb_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Orders]:
    """The tables the stack makes, indexed, with orders in the index.

    One order has an event no code can decode: a rebuild parks it, and a
    redrive tries it again.
    """
    env = _indexed(dynamodb_env)
    for key, value in INDEXED.items():
        monkeypatch.setenv(key, value)
    app = Orders(env=env)
    open_view(OrderProjector, env)
    store_an_undecodable_event(app)
    _index(app)
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
    view = open_view(OrderProjector, {**_indexed(dynamodb_env), "CREATE_TABLE": "no"})
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
def eventbridge_endpoint(aws_endpoint: str) -> str:
    return aws_endpoint


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
        feed_records(publisher, stream_records(orders), StreamSource.of(orders))

    # The undecodable event, and the confirmation whose v2 reads the order.
    dead_lettered = [r.getMessage() for r in caplog.records]
    assert len(dead_lettered) == 2
    assert all(phrase in message for message in dead_lettered)
    assert alarm["Statistic"] == "Sum"


def test_the_publisher_role_allows_every_call_the_lambda_handler_makes(
    indexed_publishing_stack, template, recorded_requests
):
    stack_ = indexed_publishing_stack
    orders, bus, prefix = stack_.orders, stack_.bus, stack_.prefix
    _place_and_confirm(orders)
    store_an_undecodable_event(orders)  # one event is dead-lettered
    _index(orders)
    Publisher(OrderEvents(), orders, env=stack_.env)  # the stack's table
    handler = publication_handler(
        OrderEvents, Orders, {**stack_.env, "CREATE_TABLE": "no"}
    )
    recorded_requests.clear()

    done = handler(SCHEDULED, with_time_to_work(30))

    assert done["position"] == orders.recorder.max_notification_id()
    stack = _stack(template, prefix, "indexed")
    stack.context["events:source"] = {e["source"] for e in bus.received()}
    publisher_table = _table_arn(f"{prefix}{OrderEvents.name}_publishing")
    assert ("dynamodb:PutItem", publisher_table) in recorded_requests
    assert ("dynamodb:GetItem", publisher_table) in recorded_requests  # the cursor
    assert ("events:PutEvents", _bus_arn(bus.name)) in recorded_requests
    assert not any(":stream/" in resource for _, resource in recorded_requests)
    assert (
        stack.refused(_role_of(template, stack, "Publisher"), recorded_requests) == []
    )
    assert stack.context["events:source"] == {SOURCE}


@pytest.fixture
def indexed_publishing_stack(
    dynamodb_env: dict[str, str],
    eventbridge_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[PublishingStack]:
    """The publishing stack's tables, indexed, and its bus."""
    for key, value in INDEXED.items():
        monkeypatch.setenv(key, value)
    env = _indexed(dynamodb_env)
    orders = Orders(env=env)
    prefix = dynamodb_env["DYNAMODB_TABLE_PREFIX"]
    bus = Bus(f"{prefix}{orders.name}-integration", eventbridge_endpoint).create()
    yield PublishingStack(
        orders,
        {
            **env,
            "PUBLISHER_EVENT_BUS": bus.name,
            "EVENTBRIDGE_ENDPOINT_URL": eventbridge_endpoint,
        },
        bus,
        prefix,
    )
    orders.close()


def test_the_publisher_operator_policy_allows_listing_and_redriving_dead_letters(
    publishing_stack, template, recorded_requests
):
    orders, env = publishing_stack.orders, publishing_stack.env
    _place_and_confirm(orders)
    refusing = Publisher(OrderEvents(), orders, env=env, retry_delays=())
    refusing.client = RefusingClient(refusing.client, lambda _: "InternalFailure")
    feed_records(refusing, stream_records(orders), StreamSource.of(orders))
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
    "FulfilmentFollowIndex": "follow_index",
    "FulfilmentTimeouts": "fire_timeouts",
}
"""Each saga function of the template: its handler in aggregates.fulfilment_lambda."""


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
    for events in INDEXERS.values():
        assert resources[events]["DeletionPolicy"] == "Retain"
        assert resources[events]["Properties"]["StreamSpecification"] == {
            "StreamViewType": "NEW_IMAGE"
        }
    for table in ("Notifications", "WarehouseNotifications", "PaymentsNotifications"):
        assert "Condition" not in resources[f"{table}Table"]  # every one is indexed


def test_the_saga_functions_get_the_payment_timeout_parameter(template, resources):
    parameter = template["Parameters"]["PaymentTimeoutSeconds"]

    assert parameter["Default"] == OrderFulfilment.DEFAULT_PAYMENT_TIMEOUT.seconds
    for name in _saga_functions(resources):
        variables = resources[name]["Properties"]["Environment"]["Variables"]
        assert variables[OrderFulfilment.PAYMENT_TIMEOUT_SECONDS] == {
            "Ref": "PaymentTimeoutSeconds"
        }


def test_the_timeout_pollers_schedule_may_only_invoke_it(resources):
    [schedule] = _schedules_of(resources, "FulfilmentTimeouts")
    role = resources[schedule["Target"]["RoleArn"]["Fn::GetAtt"][0]]["Properties"]
    [allowed] = [
        statement
        for policy in role["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]
    ]

    assert allowed["Action"] == "lambda:InvokeFunction"
    assert allowed["Resource"] == {"Fn::GetAtt": ["FulfilmentTimeouts", "Arn"]}
    assert resources["FulfilmentTimeouts"]["Properties"]["Handler"].endswith(
        ".fire_timeouts"
    )


def test_the_saga_roles_grant_no_wildcard_actions(template, resources):
    stack = _stack(template, "", "indexed")
    for function in SAGA_HANDLERS:
        statements = _role_statements(stack, resources, function)
        actions = [a for s in statements for a in _as_list(s["Action"])]
        assert all("*" not in action for action in actions)
        assert [s["Action"] for s in statements if s["Resource"] == "*"] == []


@pytest.fixture
def saga_stack(
    dynamodb_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Shop]:
    """The saga's stack: its tables and the leaders' (made), every one indexed.

    The handlers then build their applications from the environment, as in
    Lambda: ``CREATE_TABLE=no``, and timeouts due at once.
    """
    yield from _saga_stack(dynamodb_env, monkeypatch)


def _saga_stack(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Shop]:
    for key, value in INDEXED.items():
        monkeypatch.setenv(key, value)
    shop = open_shop(_indexed(env))
    for app in (shop.orders, shop.warehouse, shop.payments):
        app.recorder.idempotency.create_table()  # made at a first key otherwise
    fulfilment_lambda.reset()
    monkeypatch.setenv("CREATE_TABLE", "no")
    monkeypatch.setenv(OrderFulfilment.PAYMENT_TIMEOUT_SECONDS, "0")
    yield shop
    fulfilment_lambda.reset()
    shop.close()


@dataclass(frozen=True)
class _SagaRun:
    """The saga's stack after one run of its handlers, and what each asked IAM for."""

    shop: Shop
    calls: dict[str, list[Request]]
    table_prefix: str


@pytest.fixture(scope="module")
def saga_run(new_dynamodb_env: Callable[[], dict[str, str]]) -> _SagaRun:
    """The saga driven once as Lambda does (about 20 s), for the checks of its roles.

    Those checks only read what the run asked for, so they share one run. The
    environment is the run's only: the module's other tests make their tables.
    """
    env = new_dynamodb_env()
    with pytest.MonkeyPatch.context() as monkeypatch:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        stack = _saga_stack(env, monkeypatch)
        shop = next(stack)
        try:
            calls = _run_the_saga_as_lambda_does(shop, _record_requests(monkeypatch))
        finally:
            next(stack, None)  # the stack's end: the handlers' apps and the shop closed
    return _SagaRun(shop, calls, env["DYNAMODB_TABLE_PREFIX"])


def _run_the_saga_as_lambda_does(
    shop: Shop, recorded: list[Request]
) -> dict[str, list[Request]]:
    """Drive the saga's handlers: an order shipped, one timed out then charged late.

    Returns what each function asked IAM for. Between invocations the test
    plays the indexer functions (each index catches up with its table) and
    the payment gateway.
    """
    calls: dict[str, list[Request]] = {function: [] for function in SAGA_HANDLERS}
    apps = (shop.orders, shop.warehouse, shop.payments, shop.fulfilment)

    def invoke(function: str) -> Any:
        _index(*apps)
        handler = getattr(fulfilment_lambda, SAGA_HANDLERS[function])
        start = len(recorded)
        response = handler(SCHEDULED, with_time_to_work(20))
        calls[function].extend(recorded[start:])
        return response

    def follow_until(done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 60
        while not done():
            assert time.monotonic() < deadline
            invoke("FulfilmentFollowIndex")

    shipped, late = shop.place({TEA: 1}), shop.place({FIG: 1})
    follow_until(
        lambda: None not in (shop.payments.get_payment(o) for o in (shipped, late))
    )
    shop.answer(shipped, approved=True)
    follow_until(lambda: shop.saga(shipped).outcome == "shipped")
    fired = invoke("FulfilmentTimeouts")["fired"]
    assert fired == 1  # the other's
    shop.answer(late, approved=True)  # charged after the timeout: refunded
    follow_until(lambda: shop.saga(late).outcome == "cancelled")
    return calls


@pytest.mark.slow  # about 40 s: a saga shipped, one timed out, all indexed
def test_the_saga_roles_allow_every_call_the_saga_handlers_make(saga_run, template):
    shop, calls = saga_run.shop, saga_run.calls

    stack = _stack(template, saga_run.table_prefix, "indexed")
    resources = template["Resources"]
    # What the run must have exercised: deciding, reading indexes, commands, timeouts.
    decided = (
        "dynamodb:PutItem",
        _table_arn(shop.fulfilment.recorder.events_table_name),
    )
    assert decided in calls["FulfilmentFollowIndex"]
    assert decided in calls["FulfilmentTimeouts"]
    for app in (shop.orders, shop.warehouse, shop.payments, shop.fulfilment):
        index = _table_arn(app.recorder.notifications_table_name)
        assert ("dynamodb:Query", index) in calls["FulfilmentFollowIndex"]
    for app in (shop.orders, shop.warehouse, shop.payments):
        events = _table_arn(app.recorder.events_table_name)
        keys = _table_arn(app.recorder.idempotency.table_name)
        assert ("dynamodb:PutItem", events) in calls["FulfilmentFollowIndex"]
        assert ("dynamodb:PutItem", keys) in calls["FulfilmentFollowIndex"]
    for function, requests in calls.items():
        assert not any(":stream/" in resource for _, resource in requests), function
        refused = stack.refused(_role_statements(stack, resources, function), requests)
        assert refused == [], function


@pytest.mark.slow  # the saga's run of the test above, if this one runs alone
def test_the_saga_check_fails_without_a_permission_the_commands_need(
    saga_run, template
):
    shop, calls = saga_run.shop, saga_run.calls
    resources = copy.deepcopy(template["Resources"])
    role = resources["FulfilmentFollowIndexRole"]["Properties"]
    role["Policies"] = [
        policy for policy in role["Policies"] if policy["PolicyName"] != "send-commands"
    ]

    stack = _stack(template, saga_run.table_prefix, "indexed")
    refused = stack.refused(
        _role_statements(stack, resources, "FulfilmentFollowIndex"),
        calls["FulfilmentFollowIndex"],
    )

    keys = _table_arn(shop.warehouse.recorder.idempotency.table_name)
    assert ("dynamodb:PutItem", keys) in refused


@pytest.mark.parametrize(
    ("function", "application"),
    [
        ("WarehouseIndexer", "warehouse"),
        ("PaymentsIndexer", "payments"),
        ("FulfilmentIndexer", "fulfilment"),
    ],
)
def test_the_saga_tables_indexer_roles_allow_what_their_indexers_call(  # noqa: PLR0917
    saga_stack, template, recorded_requests, dynamodb_env, function, application
):
    shop = saga_stack
    shop.place({TEA: 1})
    shop.run()  # every application has events to index
    app = getattr(shop, application)
    handler = indexer_handler(
        type(app), {**_indexed(dynamodb_env), "CREATE_TABLE": "no"}
    )
    recorded_requests.clear()

    handler(SCHEDULED, with_time_to_work(1))

    stack = _stack(template, dynamodb_env["DYNAMODB_TABLE_PREFIX"], "indexed")
    assert recorded_requests
    refused = stack.refused(_role_of(template, stack, function), recorded_requests)
    assert refused == []


# The services: Warehouse and Payments receive over the bus --------------------------

SERVICES = {
    WAREHOUSE: (services.warehouse_inbox, Warehouse),
    PAYMENTS: (services.payments_inbox, Payments),
}
"""Each receiving service: how its inbox is made, and its application class."""


def _inbox_of(service: str, env: dict[str, str]) -> Inbox:
    make_inbox, application_class = SERVICES[service]
    return make_inbox(application_class(env=env), env=env, retry_delays=())


def _queue_of_mapping(resources: dict[str, Any], function: str) -> str:
    [queue] = [
        resource["Properties"]["EventSourceArn"]["Fn::GetAtt"][0]
        for resource in resources.values()
        if resource["Type"] == "AWS::Lambda::EventSourceMapping"
        and resource["Properties"]["FunctionName"] == {"Ref": function}
    ]
    return str(queue)


def _queues(resources: dict[str, Any]) -> list[str]:
    return [n for n, r in resources.items() if r["Type"] == "AWS::SQS::Queue"]


def test_every_inbox_queue_sends_what_its_function_kept_failing_to_a_dead_letter_queue(
    resources,
):
    mapped = [
        resource["Properties"]
        for resource in resources.values()
        if resource["Type"] == "AWS::Lambda::EventSourceMapping"
    ]

    assert len(mapped) == len(SERVICES)
    for mapping in mapped:
        queue = mapping["EventSourceArn"]["Fn::GetAtt"][0]
        function = resources[mapping["FunctionName"]["Ref"]]["Properties"]
        redrive = resources[queue]["Properties"]["RedrivePolicy"]
        [dead_letters, _] = redrive["deadLetterTargetArn"]["Fn::GetAtt"]
        assert dead_letters in _queues(resources)
        assert dead_letters != queue
        assert 1 < redrive["maxReceiveCount"] <= 10, queue  # retried, then kept
        # a batch still in the function is not delivered again meanwhile
        timeout = resources[queue]["Properties"]["VisibilityTimeout"]
        assert timeout >= 6 * function["Timeout"], queue
        assert resources[dead_letters]["Properties"]["MessageRetentionPeriod"] == (
            14 * 24 * 3600
        )


@pytest.mark.parametrize("service", SERVICES)
def test_each_services_rule_sends_its_inboxs_event_types_to_its_queue_only(
    template, resources, dynamodb_env, service
):
    pattern = services.event_pattern(_inbox_of(service, dynamodb_env))
    rule = resources[f"{service}Rule"]["Properties"]
    stack = _stack(template, "", "indexed")
    [target] = rule["Targets"]

    assert rule["EventBusName"] == {"Ref": "IntegrationEventBus"}
    assert rule["State"] == "ENABLED"
    written = rule["EventPattern"]
    assert {
        "source": [stack.value(each) for each in written["source"]],
        "detail-type": sorted(written["detail-type"]),
    } == pattern
    assert set(written) == set(pattern)
    assert target["Arn"] == {"Fn::GetAtt": [f"{service}Queue", "Arn"]}
    # EventBridge's own retries, then the rule's dead-letter queue, not the inbox's
    assert target["RetryPolicy"]["MaximumEventAgeInSeconds"] == 86400
    [rule_dlq, _] = target["DeadLetterConfig"]["Arn"]["Fn::GetAtt"]
    assert rule_dlq in _queues(resources)
    assert rule_dlq not in (f"{service}Queue", f"{service}QueueDeadLetterQueue")
    # no other rule feeds the service's queue
    feeding = [
        name
        for name, r in resources.items()
        if r["Type"] == "AWS::Events::Rule"
        and {"Fn::GetAtt": [f"{service}Queue", "Arn"]}
        in [t["Arn"] for t in r["Properties"]["Targets"]]
    ]
    assert feeding == [f"{service}Rule"]


@pytest.mark.parametrize("service", SERVICES)
def test_only_the_services_rule_may_send_to_its_queues(resources, service):
    queue, rule_dlq = f"{service}Queue", f"{service}RuleDeadLetterQueue"
    policies = [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::SQS::QueuePolicy"
        and {"Ref": queue} in r["Properties"]["Queues"]
    ]

    [policy] = policies
    assert policy["Queues"] == [{"Ref": queue}, {"Ref": rule_dlq}]
    [statement] = policy["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Allow"
    assert statement["Action"] == "sqs:SendMessage"
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Condition"] == {
        "ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": [f"{service}Rule", "Arn"]}}
    }


@pytest.mark.parametrize("service", SERVICES)
def test_each_inbox_function_reports_its_failed_messages_alone(resources, service):
    function = f"{service}Inbox"
    handler = resources[function]["Properties"]["Handler"]
    module, _, name = handler.rpartition(".")
    [mapping] = [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::Lambda::EventSourceMapping"
        and r["Properties"]["FunctionName"] == {"Ref": function}
    ]

    assert (module, name) == (services.__name__, f"{service.lower()}_handler")
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["BatchSize"] <= MAX_MESSAGES_PER_RECEIVE
    assert _queue_of_mapping(resources, function) == f"{service}Queue"


def _service_tables(resources: dict[str, Any], service: str) -> set[str]:
    """The tables of a service, by name: ``{prefix}{Service}_*``."""
    return {
        name
        for name, r in resources.items()
        if r["Type"] == "AWS::DynamoDB::Table"
        and _table_name(r).startswith(f"${{TablePrefix}}{service}_")
    }


def _granted(
    stack: _Stack, resources: dict[str, Any], function: str, service: str
) -> set[str]:
    """The resources a function's role grants any action of ``service`` on."""
    return {
        arn
        for statement in _role_statements(stack, resources, function)
        if statement["Effect"] == "Allow"
        and any(a.startswith(f"{service}:") for a in _as_list(statement["Action"]))
        for arn in stack.resources_of(statement["Resource"])
    }


@pytest.mark.parametrize("service", SERVICES)
def test_each_services_role_reaches_only_its_own_tables_and_queue(
    template, resources, service
):
    function = f"{service}Inbox"
    stack = _stack(template, "", "indexed")
    own = {
        _table_arn(stack.sub(_table_name(resources[t])))
        for t in _service_tables(resources, service)
    }
    statements = _role_statements(stack, resources, function)
    services_reached = {
        a.split(":")[0] for s in statements for a in _as_list(s["Action"])
    }

    assert _granted(stack, resources, function, "dynamodb") <= own
    assert not any(
        Orders.name in arn for arn in _granted(stack, resources, function, "dynamodb")
    )
    assert _granted(stack, resources, function, "sqs") == {f"{service}Queue.Arn"}
    assert services_reached == {"dynamodb", "sqs", "logs"}
    assert all("*" not in a for s in statements for a in _as_list(s["Action"]))


def _confirmed(total: str = "3.00", lines: list[dict[str, Any]] | None = None) -> str:
    """An EventBridge event of OrderConfirmed.v2, as its SQS target delivers it."""
    detail = {
        "id": str(uuid.uuid4()),
        "aggregate_version": 2,
        "occurred_at": "2026-01-01T00:00:00+00:00",
        "order_id": str(uuid.uuid4()),
        "customer_id": str(uuid.uuid4()),
        "currency": "EUR",
        "lines": [
            {"product_id": TEA, "quantity": 2, "unit_price": "1.50", "subtotal": "3.00"}
        ]
        if lines is None
        else lines,
        "total": total,
    }
    return json.dumps(
        {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "OrderConfirmed.v2",
            "source": SOURCE,
            "account": ACCOUNT,
            "time": "2026-01-01T00:00:00Z",
            "region": REGION,
            "resources": [],
            "detail": detail,
        }
    )


def _sqs_event(*bodies: str) -> dict[str, Any]:
    return {
        "Records": [
            {"messageId": f"m{n}", "body": body, "attributes": {}}
            for n, body in enumerate(bodies)
        ]
    }


POISON = {
    # Warehouse reads the lines: none is refused by the schema and its model
    WAREHOUSE: _confirmed(lines=[]),
    # Payments checks the total against the lines
    PAYMENTS: _confirmed(total="9.99"),
}
"""An event each service parks."""


@pytest.fixture
def service_tables(
    dynamodb_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The services' tables (made), and the functions' environment."""
    env = _indexed(dynamodb_env)
    for service in SERVICES:
        inbox = _inbox_of(service, env)
        inbox.application.recorder.idempotency.create_table()
        if service == WAREHOUSE:
            inbox.application.stock(TEA, 10)
    for key, value in INDEXED.items():
        monkeypatch.setenv(key, value)
    return {**env, "CREATE_TABLE": "no"}


@pytest.mark.parametrize("service", SERVICES)
def test_each_services_role_allows_every_call_its_handler_makes(  # noqa: PLR0917
    service_tables, template, recorded_requests, dynamodb_env, service, caplog
):
    handler = lambda_handler(functools.partial(_inbox_of, service, service_tables))
    recorded_requests.clear()

    with caplog.at_level("WARNING", logger="ledger.inbox"):
        response = handler(_sqs_event(_confirmed(), POISON[service]), None)

    assert response == {"batchItemFailures": []}
    parked = [r for r in caplog.records if getattr(r, "outcome", "") == "parked"]
    assert len(parked) == 1  # the poison only
    stack = _stack(template, dynamodb_env["DYNAMODB_TABLE_PREFIX"], "indexed")
    prefix = dynamodb_env["DYNAMODB_TABLE_PREFIX"]
    # What the run must have exercised: a keyed save, and a dead letter.
    assert ("dynamodb:PutItem", _table_arn(f"{prefix}{service}_events")) in (
        recorded_requests
    )
    assert ("dynamodb:PutItem", _table_arn(f"{prefix}{service}_idempotency")) in (
        recorded_requests
    )
    assert ("dynamodb:PutItem", _table_arn(f"{prefix}{service}_inbox")) in (
        recorded_requests
    )
    refused = stack.refused(
        _role_statements(stack, template["Resources"], f"{service}Inbox"),
        recorded_requests,
    )
    assert refused == []


@pytest.mark.parametrize("service", SERVICES)
def test_each_inbox_parked_filter_matches_what_the_inbox_logs_when_it_parks(
    service_tables, resources, service, caplog
):
    filter_properties = resources[f"{service}InboxParkedMetricFilter"]["Properties"]
    [phrase] = re.findall(r'"([^"]+)"', filter_properties["FilterPattern"])
    handler = lambda_handler(functools.partial(_inbox_of, service, service_tables))

    with caplog.at_level("DEBUG", logger="ledger.inbox"):
        handler(_sqs_event(_confirmed(), POISON[service], POISON[service]), None)

    matched = [r for r in caplog.records if phrase in r.getMessage()]
    assert len(matched) == 2  # each park, not the event applied
    assert filter_properties["LogGroupName"] == {"Ref": f"{service}InboxLogGroup"}


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_alarms_on_its_dead_letters_and_parked_events(resources, service):
    depth = {
        str(alarm["Dimensions"])
        for alarm in _alarms_on(
            resources, "AWS/SQS", "ApproximateNumberOfMessagesVisible"
        )
        if alarm["Threshold"] == 0
        and alarm["ComparisonOperator"] == "GreaterThanThreshold"
    }
    parked_metric = resources[f"{service}InboxParkedMetricFilter"]["Properties"][
        "MetricTransformations"
    ][0]
    parked = _alarms_on(resources, NAMESPACE, parked_metric["MetricName"])

    for queue in (f"{service}QueueDeadLetterQueue", f"{service}RuleDeadLetterQueue"):
        dimension = [
            {"Name": "QueueName", "Value": {"Fn::GetAtt": [queue, "QueueName"]}}
        ]
        assert str(dimension) in depth, queue
    assert parked_metric["MetricNamespace"] == NAMESPACE
    [alarm] = parked
    assert (alarm["Statistic"], alarm["Threshold"]) == ("Sum", 0)


def test_the_projector_alarms_on_its_lag(template, resources):
    alarm = _lag_alarm(resources, DIMENSION)

    # the metric's one dimension, valued the projector's name
    assert alarm["Dimensions"] == [
        {"Name": DIMENSION, "Value": {"Ref": "ProjectionName"}}
    ]
    assert template["Parameters"]["ProjectionName"]["Default"] == OrderProjector.name
    assert alarm["Statistic"] == "Maximum"
    assert alarm["Threshold"] == {"Ref": "FollowerLagAlarmEvents"}
    assert alarm["TreatMissingData"] == "notBreaching"


def test_the_publisher_and_the_saga_alarm_on_their_lag_as_the_projector_does(
    template, resources
):
    projector = _lag_alarm(resources, DIMENSION)
    publisher = _lag_alarm(resources, PUBLICATION_DIMENSION)
    saga = _alarms(resources)["FulfilmentLagAlarm"]

    # the publisher's one dimension, valued the publication's name
    assert publisher["Dimensions"] == [
        {"Name": PUBLICATION_DIMENSION, "Value": {"Ref": "PublicationName"}}
    ]
    assert template["Parameters"]["PublicationName"]["Default"] == OrderEvents.name
    # the saga: the largest Lag of every feed its runners record, by the names
    # they record it under (a leader's, its steps', its timeouts')
    [watched] = [query for query in saga["Metrics"] if query["ReturnData"]]
    stats = [query for query in saga["Metrics"] if "MetricStat" in query]
    assert watched["Expression"] == (
        "MAX([" + ", ".join(query["Id"] for query in stats) + "])"
    )
    application = template["Parameters"]["ApplicationName"]["Default"]
    values = set()
    for query in stats:
        metric = query["MetricStat"]["Metric"]
        assert (metric["Namespace"], metric["MetricName"]) == (NAMESPACE, LAG)
        [dimension] = metric["Dimensions"]
        assert dimension["Name"] == SAGA_DIMENSION
        value = dimension["Value"]
        if isinstance(value, dict):
            value = value["Fn::Sub"].replace("${ApplicationName}", application)
        values.add(value)
        assert query["MetricStat"]["Stat"] == projector["Statistic"]
        assert query["MetricStat"]["Period"] == projector["Period"]
    feeds = [Orders.name, Warehouse.name, Payments.name, "steps", "timeouts"]
    assert values == {f"{OrderFulfilment.name}/{feed}" for feed in feeds}
    same = ("EvaluationPeriods", "DatapointsToAlarm")
    for alarm in (publisher, saga):
        assert {k: alarm[k] for k in same} == {k: projector[k] for k in same}
        assert alarm["Threshold"] == {"Ref": "FollowerLagAlarmEvents"}
        assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
        assert alarm["TreatMissingData"] == "notBreaching"
    assert publisher["Statistic"] == projector["Statistic"]


def test_the_publisher_writes_the_lag_its_alarm_watches(
    indexed_publishing_stack, resources, capsys
):
    alarm = _lag_alarm(resources, PUBLICATION_DIMENSION)
    orders = indexed_publishing_stack.orders
    _place_and_confirm(orders)
    _index(orders)
    handler = publication_handler(OrderEvents, Orders, indexed_publishing_stack.env)
    capsys.readouterr()

    handler(SCHEDULED, with_time_to_work(30))

    documents = [
        json.loads(line)
        for line in capsys.readouterr().out.splitlines()
        if line.startswith('{"_aws"')
    ]
    [written] = [d for d in documents if LAG in d]
    [metrics] = written["_aws"]["CloudWatchMetrics"]
    assert metrics["Namespace"] == alarm["Namespace"]
    assert metrics["Dimensions"] == [[d["Name"] for d in alarm["Dimensions"]]]
    assert written[PUBLICATION_DIMENSION] == OrderEvents.name
    assert written[LAG] == 0  # the index published to its head


def _function_variables(
    template: dict[str, Any], stack: _Stack, function: str
) -> dict[str, str]:
    """The environment the template gives a function, parameters resolved.

    Variables naming another resource (a topic) are left out: none is made here.
    """
    variables = {}
    for name, value in template["Resources"][function]["Properties"]["Environment"][
        "Variables"
    ].items():
        if isinstance(value, str):
            variables[name] = value
            continue
        [(kind, ref)] = value.items()
        assert kind == "Ref", (name, value)
        if ref in template["Parameters"]:
            default = template["Parameters"][ref].get("Default")
            # A Ref gives a Number parameter as a string, as environments hold.
            variables[name] = str(stack.parameters.get(ref, default))
    return variables


@pytest.mark.parametrize("function", INDEXERS)
def test_each_indexer_writes_the_age_its_lag_alarm_watches(  # noqa: PLR0917
    function, template, resources, dynamodb_env, monkeypatch, capsys
):
    table = _table_name(resources[INDEXERS[function]])
    lag_alarm = resources[function.removesuffix("Indexer") + "IndexLagAlarm"]
    alarm = lag_alarm["Properties"]
    stack = _stack(template, dynamodb_env["DYNAMODB_TABLE_PREFIX"], "indexed")
    variables = _function_variables(template, stack, function)
    for key, value in INDEXED.items():
        monkeypatch.setenv(key, value)
    app = resolve_topic(variables["LEDGER_APP"])(env=_indexed(dynamodb_env))
    # The indexer reads no event's state: any one saved leaves a record behind.
    app.recorder.insert_events([StoredEvent(uuid.uuid4(), 1, "tests:Happened", b"")])
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    index_consumers.reset()  # the function's handler, made from this environment
    capsys.readouterr()

    written: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    try:
        while not written:  # until a round finds the record unindexed
            assert time.monotonic() < deadline, "the stream did not show the save"
            indexer_lambda_handler(SCHEDULED, with_time_to_work(0.5))
            written = [
                document
                for line in capsys.readouterr().out.splitlines()
                if line.startswith('{"_aws"')
                and INDEX_OLDEST_UNINDEXED_AGE in (document := json.loads(line))
            ]
    finally:
        index_consumers.reset()
        app.close()

    [metrics] = written[0]["_aws"]["CloudWatchMetrics"]
    assert metrics["Namespace"] == alarm["Namespace"]
    assert alarm["MetricName"] in [metric["Name"] for metric in metrics["Metrics"]]
    assert metrics["Dimensions"] == [[d["Name"] for d in alarm["Dimensions"]]]
    [dimension] = alarm["Dimensions"]
    assert written[0][dimension["Name"]] == stack.sub(dimension["Value"]["Fn::Sub"])
    assert dimension["Value"] == {"Fn::Sub": table}  # the table it reads


def test_the_replay_into_a_services_rule_names_the_archive_and_the_rule(template):
    outputs = template["Outputs"]
    text = README.read_text()

    assert outputs["IntegrationEventArchiveArn"]["Value"] == {
        "Fn::GetAtt": ["IntegrationEventArchive", "Arn"]
    }
    for service in SERVICES:
        assert outputs[f"{service}InboxRuleArn"]["Value"] == {
            "Fn::GetAtt": [f"{service}Rule", "Arn"]
        }
    [replay] = re.findall(r"^aws events start-replay .*?(?<!\\)$", text, re.M | re.S)
    assert "--event-source-arn" in replay
    assert "IntegrationEventArchiveArn" in text
    assert "FilterArns=" in replay


def test_the_projector_writes_the_lag_its_alarm_watches(
    indexed_tables, dynamodb_env, resources, capsys
):
    alarm = _lag_alarm(resources, DIMENSION)
    handler = projection_handler(
        OrderProjector, Orders, {**_indexed(dynamodb_env), "CREATE_TABLE": "no"}
    )
    capsys.readouterr()

    handler(SCHEDULED, with_time_to_work(30))

    documents = [
        json.loads(line)
        for line in capsys.readouterr().out.splitlines()
        if line.startswith('{"_aws"')
    ]
    [written] = [d for d in documents if LAG in d]
    [metrics] = written["_aws"]["CloudWatchMetrics"]
    assert metrics["Namespace"] == alarm["Namespace"]
    assert metrics["Dimensions"] == [[d["Name"] for d in alarm["Dimensions"]]]
    assert written[DIMENSION] == OrderProjector.name
    assert written[LAG] == 0  # the index read to its head


def _package_install_command() -> list[str]:
    """Return the arguments of the README's ``pip install --target`` command."""
    [command] = re.findall(
        r"^python -m pip install --target .*?(?<!\\)$", README.read_text(), re.M | re.S
    )
    return shlex.split(command.replace("\\\n", " "))


def test_the_package_holds_what_the_inboxes_check_events_with(
    service_tables, monkeypatch
):
    installed = _package_install_command()
    # The inboxes check each event against its schema file with jsonschema,
    # which ledger's wheel does not require: without it every event fails.
    monkeypatch.setitem(sys.modules, "jsonschema", None)
    handler = lambda_handler(functools.partial(_inbox_of, WAREHOUSE, service_tables))

    assert handler(_sqs_event(_confirmed()), None) == {
        "batchItemFailures": [{"itemIdentifier": "m0"}]
    }
    assert "jsonschema" in installed
