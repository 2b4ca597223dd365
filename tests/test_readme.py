"""The README's Python examples run, in order, against DynamoDB Local."""

from __future__ import annotations

import sys
import types

import pytest

from tests.readme_blocks import README, blocks


def python_blocks() -> list[str]:
    return [
        block.code
        for block in blocks(README)
        if block.language == "python" and block.not_run is None
    ]


def test_readme_has_an_example() -> None:
    assert python_blocks()


def test_readme_examples_run_on_dynamodb(
    dynamodb_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # eventsourcing finds event classes by module topic: give the examples a
    # real module to live in.
    module = types.ModuleType("readme_examples")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for block in python_blocks():
        exec(compile(block, str(README), "exec"), module.__dict__)  # noqa: S102 - our own README
