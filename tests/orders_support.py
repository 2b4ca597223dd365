"""The application environments the Order tests run on: in memory and DynamoDB.

Test modules import ``orders_env_fixture`` to get the ``orders_env`` fixture.
"""

from __future__ import annotations

from typing import Any

import pytest

from aggregates.application import Orders

BACKENDS = ["popo", "dynamodb"]


@pytest.fixture(name="orders_env", params=BACKENDS)
def orders_env_fixture(request: pytest.FixtureRequest) -> dict[str, str]:
    """The ``env`` of an Orders application on each backend, in turn."""
    if request.param == "popo":
        return {"PERSISTENCE_MODULE": "eventsourcing.popo"}
    env: dict[str, str] = request.getfixturevalue("dynamodb_env")
    return env


def make_orders(env: dict[str, str], **kwargs: Any) -> Orders:
    """An Orders application on the given environment."""
    return Orders(env=env, **kwargs)
