"""The AWS template passes cfn-lint and wires the projector as the docs say."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import lint_file
from cfnlint.decode import decode

TEMPLATE = Path(__file__).parent.parent / "deploy" / "template.yaml"


@pytest.fixture(scope="module")
def resources() -> dict[str, Any]:
    template, problems = decode(str(TEMPLATE))
    assert problems == []
    return dict(template["Resources"])


def test_template_passes_cfn_lint() -> None:
    assert [str(match) for match in lint_file(TEMPLATE)] == []


def test_events_table_streams_new_images_and_is_retained(resources):
    events = resources["EventsTable"]
    assert events["DeletionPolicy"] == "Retain"
    assert events["Properties"]["StreamSpecification"] == {
        "StreamViewType": "NEW_IMAGE"
    }


def test_stream_mapping_bisects_reports_partial_failures_and_parks_the_rest(
    resources,
):
    mapping = resources["ProjectorStreamMapping"]["Properties"]
    assert mapping["BisectBatchOnFunctionError"] is True
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert "OnFailure" in mapping["DestinationConfig"]


def test_projector_role_grants_no_wildcard_actions(resources):
    statements = [
        statement
        for policy in resources["ProjectorRole"]["Properties"]["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]
    ]
    actions = [a for s in statements for a in _as_list(s["Action"])]
    assert all("*" not in action for action in actions)
    wildcard_resources = [s["Action"] for s in statements if s["Resource"] == "*"]
    assert wildcard_resources == ["dynamodb:ListStreams"]


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def test_projector_handler_named_by_the_template_exists() -> None:
    template, _ = decode(str(TEMPLATE))
    handler = template["Parameters"]["ProjectorHandler"]["Default"]
    module_name, _, function_name = handler.rpartition(".")

    module = importlib.import_module(module_name)

    assert callable(getattr(module, function_name))
