"""ledger's pytest plugin as a user's tests meet it, in a pytest run of their own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ledger.dynamodb.local import DYNAMODB_LOCAL_JAR, find_jar

ROOT = Path(__file__).parent.parent

A_USERS_PROPERTY_TEST = """
import uuid
from decimal import Decimal

from hypothesis import given, settings, strategies as st

from aggregates.application import Orders


@settings(max_examples=3, deadline=None)
@given(st.integers(min_value=1, max_value=5))
def test_an_order_of_any_quantity_is_stored(new_dynamodb_env, quantity):
    orders = Orders(env=new_dynamodb_env())
    tea = {"product_id": "tea", "quantity": quantity, "price": Decimal(1)}
    order_id = orders.place_order(uuid.uuid4(), [tea])
    assert orders.get_order(order_id).id == order_id
    assert orders.recorder.max_notification_id() == 2
"""


def test_a_hypothesis_test_gets_a_fresh_store_per_example(tmp_path):
    (tmp_path / "test_property.py").write_text(A_USERS_PROPERTY_TEST)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join((str(ROOT / "src"), str(ROOT))),
        DYNAMODB_LOCAL_JAR: str(find_jar(ROOT)),
        "DYNAMODB_EVENTS_STREAM": "no",
    }

    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=240,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
