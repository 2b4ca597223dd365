"""`ledger index reindex`: re-indexing from the events table, from the CLI."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

from aggregates.application import Orders
from tests.test_indexed_cli import indexed, this_checkout

__all__ = ["indexed", "this_checkout"]  # fixtures, used by name


def place_and_confirm(orders: Orders) -> int:
    """Save an order and its confirmation; return how many events that was."""
    placed = orders.place_order(
        uuid.uuid4(), [{"product_id": "tea", "quantity": 2, "price": Decimal("4.50")}]
    )
    orders.confirm(placed)
    return len(orders.recorder.select_events(placed))


def test_index_reindex_appends_what_the_index_lacks_once(indexed, ledger):
    orders = Orders()
    saved = place_and_confirm(orders)

    first = ledger("index", "reindex", "--json")
    again = ledger("index", "reindex", "--json")
    status = ledger("index", "status", "--json")

    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["appended"] == saved
    assert json.loads(first.stdout)["head"] == saved
    progress = [
        json.loads(line) for line in first.stderr.splitlines() if line.startswith("{")
    ]
    assert progress
    assert progress[-1]["appended"] == saved
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["appended"] == 0
    assert orders.recorder.max_notification_id() == saved
    assert json.loads(status.stdout)["reindexing"] is False
    # Until every shard of the stream has a checkpoint again, the last pass is shown.
    assert json.loads(status.stdout)["reindex_pass"] == 1
    assert "pass 1 done; on the stream" in ledger("index", "status").stdout
