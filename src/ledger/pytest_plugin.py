"""A pytest plugin for your own tests: DynamoDB Local, and a fresh store per test.

Installed with ``pip install 'ledger-dynamodb[testing]'``; pytest loads it by itself
(entry point ``pytest11``). It starts DynamoDB Local only for tests that ask
for it. DynamoDB Local needs Java, and is found as ``ledger local`` finds it
(``$DYNAMODB_LOCAL_JAR``, a checkout's ``.local/dynamodb``, or
``ledger local --install``, which installs it into ``~/.cache/ledger``).
Fixtures:

``dynamodb_local`` (session)
    A :class:`~ledger.dynamodb.local.DynamoDBLocal` on a free loopback port,
    stopped after the run.
``dynamodb_endpoint`` (session)
    Its endpoint URL.
``table_prefix``
    A table-name prefix of this test's own, so tests never share tables.
``dynamodb_env``
    The environment of an application stored on that server under that
    prefix (``PERSISTENCE_MODULE=ledger.dynamodb`` and the ``DYNAMODB_*``
    keys), also set in ``os.environ`` for the test. Pass it as ``env=`` or
    rely on the environment::

        def test_an_order_is_placed(dynamodb_env):
            app = Orders(env=dynamodb_env)

``new_dynamodb_env`` (session)
    A function returning such an environment under a new prefix at each
    call, without touching ``os.environ``. For hypothesis ``@given`` tests:
    hypothesis refuses function-scoped fixtures such as ``dynamodb_env``
    (its ``function_scoped_fixture`` health check), since one fixture value
    would serve every example; call this in the test for tables of the
    example's own::

        @given(st.integers(min_value=1))
        def test_any_quantity_is_stored(new_dynamodb_env, quantity):
            app = Orders(env=new_dynamodb_env())
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from ledger.dynamodb.local import DynamoDBLocal


@pytest.fixture(scope="session")
def dynamodb_local() -> Iterator[DynamoDBLocal]:
    """One DynamoDB Local server on a free loopback port for the whole run."""
    with DynamoDBLocal() as server:
        yield server


@pytest.fixture(scope="session")
def dynamodb_endpoint(dynamodb_local: DynamoDBLocal) -> str:
    """Return the endpoint URL of the test server."""
    return dynamodb_local.endpoint_url


def _new_prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}_"


def _environment(endpoint: str, prefix: str) -> dict[str, str]:
    """Return the environment of an application on ``endpoint`` under ``prefix``."""
    return {
        "PERSISTENCE_MODULE": "ledger.dynamodb",
        "DYNAMODB_ENDPOINT_URL": endpoint,
        "DYNAMODB_TABLE_PREFIX": prefix,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@pytest.fixture
def table_prefix() -> str:
    """Return a table-name prefix of this test's own: tests never share tables."""
    return _new_prefix()


@pytest.fixture(scope="session")
def new_dynamodb_env(dynamodb_endpoint: str) -> Callable[[], dict[str, str]]:
    """Return a function giving the environment of a store of its own at each call.

    Session-scoped, so hypothesis ``@given`` tests may use it; it leaves
    ``os.environ`` alone (pass the environment as ``env=``).
    """
    return lambda: _environment(dynamodb_endpoint, _new_prefix())


@pytest.fixture
def dynamodb_env(
    monkeypatch: pytest.MonkeyPatch, dynamodb_endpoint: str, table_prefix: str
) -> dict[str, str]:
    """Point applications at the test server, under this test's table prefix.

    Returns that environment, which is also set in ``os.environ``. Under
    hypothesis ``@given``, use ``new_dynamodb_env`` instead.
    """
    env = _environment(dynamodb_endpoint, table_prefix)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env
