"""`ledger index`: the indexer of ``DYNAMODB_ORDERING=indexed``, from the CLI."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from aggregates.application import Orders

ROOT = Path(__file__).parent.parent


@pytest.fixture(autouse=True)
def this_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The `ledger` process imports this checkout's code, not an installed copy."""
    monkeypatch.setenv("PYTHONPATH", f"{ROOT / 'src'}:{ROOT}")


@pytest.fixture
def indexed(
    streamed: None, dynamodb_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """This test's applications and `ledger` processes use the indexed ordering."""
    dynamodb_env["DYNAMODB_ORDERING"] = "indexed"
    monkeypatch.setenv("DYNAMODB_ORDERING", "indexed")


def test_index_run_once_indexes_what_status_shows_behind(indexed, ledger):
    orders = Orders()
    placed = orders.place_order(
        uuid.uuid4(), [{"product_id": "tea", "quantity": 2, "price": Decimal("4.50")}]
    )
    orders.confirm(placed)
    saved = len(orders.recorder.select_events(placed))

    before = ledger("index", "status", "--json")
    ran = ledger("index", "run", "--once")
    after = ledger("index", "status", "--json")

    assert before.returncode == 0, before.stderr
    assert json.loads(before.stdout)["head"] == 0
    assert json.loads(before.stdout)["behind"] == saved
    assert json.loads(before.stdout)["oldest_age"] >= 0
    assert ran.returncode == 0, ran.stderr
    assert f"indexed {saved} stream records; head at position {saved}" in ran.stdout
    assert json.loads(after.stdout) | {"shards": 1} == {
        "head": saved,
        "behind": 0,
        "oldest_age": None,
        "shards": 1,
        "reindexing": False,
        "trimmed": False,
        "reindex_pass": 0,
    }
    assert orders.recorder.max_notification_id() == saved


def test_index_run_on_an_application_not_indexed_says_what_to_do(streamed, ledger):
    done = ledger("index", "run", "--once")

    assert done.returncode == 1
    assert "set DYNAMODB_ORDERING=indexed" in done.stderr
