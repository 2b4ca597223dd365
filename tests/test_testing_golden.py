"""ledger.testing: golden events (stored forms recorded once, checked on every run).

And, without hypothesis, an import error naming the extra to install.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from aggregates.order import Order
from ledger.testing import check_golden_events

REPOSITORY_GOLDENS = Path(__file__).parent / "golden"


def order_events() -> list[object]:
    """An order's events, one of each class: placed, item added, confirmed."""
    order = Order.place(uuid.uuid4(), currency="EUR")
    order.add_item("tea", 2, Decimal("4.50"))
    order.confirm()
    return list(order.collect_events())


def test_each_class_version_is_recorded_once_and_then_checked(tmp_path):
    first = check_golden_events(tmp_path, order_events())
    again = check_golden_events(tmp_path, order_events())

    assert sorted(path.name for path in first) == [
        "aggregates.order.Order.ItemAdded_v1.json",
        "aggregates.order.Order.OrderConfirmed_v1.json",
        "aggregates.order.Order.OrderPlaced_v2.json",
    ]
    assert again == []


def test_a_class_whose_stored_form_changed_without_a_new_class_version_fails(
    tmp_path,
):
    [item_added] = check_golden_events(tmp_path, order_events()[1:2])
    golden = json.loads(item_added.read_text())
    state = json.loads(golden["state"])
    # As if ItemAdded had called the field "qty" when it was recorded.
    state["qty"] = state.pop("quantity")
    golden["state"] = json.dumps(state)
    item_added.write_text(json.dumps(golden))

    with pytest.raises(AssertionError, match=r"ItemAdded_v1\.json: does not load"):
        check_golden_events(tmp_path, order_events())


def test_a_new_field_without_a_new_class_version_fails_saying_what_to_do(tmp_path):
    [item_added] = check_golden_events(tmp_path, order_events()[1:2])
    golden = json.loads(item_added.read_text())
    # As if the class had gained a field with a default since it was recorded.
    golden["loads_as"]["gift_wrapped"] = False
    item_added.write_text(json.dumps(golden))

    with pytest.raises(
        AssertionError, match=r"give it class_version 2 and an upcaster"
    ):
        check_golden_events(tmp_path, [])


def test_events_of_older_class_versions_load_through_their_upcasters(tmp_path):
    for path in REPOSITORY_GOLDENS.glob("*.json"):
        shutil.copy(path, tmp_path)

    assert check_golden_events(tmp_path, []) == []


def test_without_hypothesis_the_import_error_names_the_testing_extra():
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['hypothesis'] = None; import ledger.testing",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent / "src")},
        timeout=60,
        check=False,
    )

    assert done.returncode == 1
    assert "pip install 'ledger-dynamodb[testing]'" in done.stderr
