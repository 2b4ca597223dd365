"""The README's Python examples run, in order, against DynamoDB Local."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_examples() -> None:
    assert len(python_blocks()) >= 3


def test_readme_examples_run_on_dynamodb(
    dynamodb_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # eventsourcing finds event classes by module topic: give the examples a
    # real module to live in.
    module = types.ModuleType("readme_examples")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for block in python_blocks():
        exec(compile(block, str(README), "exec"), module.__dict__)  # noqa: S102 - our own README
