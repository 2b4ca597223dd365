"""The aggregates guide's domain example runs as written, read from its page."""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

PAGE = Path(__file__).parent.parent / "docs" / "guide" / "aggregates.md"
SNIPPET = next(
    block
    for block in re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)
    if "class AccountState" in block
)


@pytest.fixture(scope="module")
def example() -> Iterator[types.ModuleType]:
    """The snippet, run once: eventsourcing registers each topic only once."""
    module = types.ModuleType("readme_domain_example")
    # A real module, so eventsourcing can resolve the example's topics.
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, module.__name__, module)
        exec(compile(SNIPPET, str(PAGE), "exec"), module.__dict__)  # noqa: S102 - our own docs' code
        yield module


def test_readme_domain_example_saves_and_loads_an_account(example):
    assert example.bank.repository.get(example.account.id).balance == Decimal("10.00")


def test_readme_domain_example_snapshots_every_100_events(example):
    account = example.bank.repository.get(example.account.id)
    for _ in range(100 - account.version):
        account.deposit(Decimal(1))

    example.bank.save(account)

    snapshots = list(example.bank.snapshots.get(account.id))
    assert [s.originator_version for s in snapshots] == [100]
