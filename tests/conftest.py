"""Shared fixtures: a real DynamoDB Local server and hypothesis profiles."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from eventsourcing.utils import Environment
from hypothesis import HealthCheck, settings

from aggregates.application import Orders
from ledger.dynamodb import DynamoDBFactory
from ledger.dynamodb.local import DynamoDBLocal
from ledger.projections import DynamoDBView
from ledger.projections.dynamodb import open_view
from projections.orders import OrderProjector

# A fast default for local runs; `HYPOTHESIS_PROFILE=ci` is more thorough.
settings.register_profile(
    "default",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


NO_STREAM = {"DYNAMODB_EVENTS_STREAM": "no"}
"""Tests' events tables have no stream unless a test feeds from it (``streamed``):
DynamoDB Local slows writes into a table with a stream about tenfold once
other tables with streams hold records, and every test makes tables."""


@pytest.fixture
def streamed(dynamodb_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Create this test's events tables with a stream (the default outside tests)."""
    dynamodb_env["DYNAMODB_EVENTS_STREAM"] = "yes"
    monkeypatch.setenv("DYNAMODB_EVENTS_STREAM", "yes")


@pytest.fixture(scope="session")
def dynamodb_local() -> Iterator[DynamoDBLocal]:
    """One DynamoDB Local server on a free loopback port for the whole run."""
    with DynamoDBLocal() as server:
        yield server


@pytest.fixture(scope="session")
def dynamodb_endpoint(dynamodb_local: DynamoDBLocal) -> str:
    """The endpoint URL of the test server."""
    return dynamodb_local.endpoint_url


@pytest.fixture
def table_prefix() -> str:
    """A table-name prefix of its own for each test, so tests never share state."""
    return f"t{uuid.uuid4().hex[:12]}_"


@pytest.fixture
def dynamodb_env(
    monkeypatch: pytest.MonkeyPatch, dynamodb_endpoint: str, table_prefix: str
) -> dict[str, str]:
    """Point ``eventsourcing`` applications at the test server.

    Sets the environment an application reads (``PERSISTENCE_MODULE`` and the
    ``DYNAMODB_*`` keys) and returns it, for tests that pass ``env=`` instead.
    """
    env = {
        "PERSISTENCE_MODULE": "ledger.dynamodb",
        "DYNAMODB_ENDPOINT_URL": dynamodb_endpoint,
        "DYNAMODB_TABLE_PREFIX": table_prefix,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": "us-east-1",
        **NO_STREAM,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def orders(dynamodb_env: dict[str, str]) -> Iterator[Orders]:
    """The example Orders application on this test's tables."""
    app = Orders(env=dynamodb_env)
    yield app
    app.close()


@pytest.fixture
def view(dynamodb_env: dict[str, str]) -> DynamoDBView:
    """The active view of the Order read models, on this test's tables."""
    made: DynamoDBView = open_view(OrderProjector, dynamodb_env)
    return made


@pytest.fixture
def factory(dynamodb_endpoint: str, table_prefix: str) -> Iterator[DynamoDBFactory]:
    """A DynamoDB factory for application ``ledger_test``, on fresh tables."""
    made = DynamoDBFactory(
        Environment(
            "ledger_test",
            {
                "DYNAMODB_ENDPOINT_URL": dynamodb_endpoint,
                "DYNAMODB_TABLE_PREFIX": table_prefix,
                **NO_STREAM,
            },
        )
    )
    yield made
    made.close()


@pytest.fixture
def ledger(dynamodb_env: dict[str, str]):
    """Run `ledger ARGS...` in a process of its own; return the completed process."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **dynamodb_env, "COLUMNS": "250", "NO_COLOR": "1"}
        return subprocess.run(  # noqa: S603 - our own command, fixed argv
            [sys.executable, "-c", "from ledger.cli import main; main()", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=Path(__file__).parent.parent,
            timeout=120,
            check=False,
        )

    return run
