"""Shared fixtures: a real DynamoDB Local server and hypothesis profiles."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
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


def pytest_configure(config: pytest.Config) -> None:
    """Let xdist hand out test files in the order of the collection (below).

    By default xdist's ``--dist loadfile`` orders files by their number of
    tests, which puts the files of a few long tests (the wheel's install, the
    sixty-second outage, the saga property) last, where one worker runs them
    alone while the other has nothing left to do.
    """
    if hasattr(config.option, "loadscopereorder"):  # xdist is installed
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the files holding ``slow`` tests first, the most of them first.

    Longest first is what keeps two workers busy to the end; the ``slow``
    mark (a test of more than about 30 s) is the measure of a file's length.
    The other files follow by number of tests, as xdist would order them;
    a file's tests keep their order.
    """
    slow: dict[Path, int] = {}
    tests: dict[Path, int] = {}
    for item in items:
        tests[item.path] = tests.get(item.path, 0) + 1
        if item.get_closest_marker("slow") is not None:
            slow[item.path] = slow.get(item.path, 0) + 1
    items.sort(key=lambda item: (-slow.get(item.path, 0), -tests[item.path]))


SOURCE_PATH = {
    "PYTHONPATH": os.pathsep.join(
        str(Path(__file__).parent.parent / folder) for folder in ("src", ".")
    )
}
"""For a test's subprocesses: this checkout's ledger, not an installed one."""

NO_STREAM = {"DYNAMODB_EVENTS_STREAM": "no"}
"""Tests' events tables have no stream unless a test feeds from it (``streamed``):
DynamoDB Local slows writes into a table with a stream about tenfold once
other tables with streams hold records, and every test makes tables."""


STARTUP_ALLOWANCE = 180.0
"""Seconds DynamoDB Local may take to listen. `make test`'s two workers start
Java at the same moment: on a busy 2-core machine (load average 15) both
missed the library's default allowance of 30 s, where one start alone took 11 s."""


JAVA_OPTIONS = "-XX:TieredStopAtLevel=1"
"""The tests' DynamoDB Local compiles with Java's quick compiler only. On this
2-core machine, where two servers and two test workers share the cores, the
optimizing compiler's work costs more than it wins back: a run of 25,000
requests (writes, queries, reads) took 38 s with this option, 70 s without."""


STREAMS_BEFORE_RESTART = 10
"""Streams the server may hold when a test file starts before it is restarted.

DynamoDB Local slows every write into a table with a stream as the records
of all streams pile up, and deleting a table does not drop them: a test
writing 2,500 events took 6 s on a fresh server, 24 s after two files of
indexed tests, 220 s late in `make test`. A restart (about 3 s) empties it;
no test's tables outlive its file."""


_servers: list[DynamoDBLocal] = []
"""This process's server while it runs (``dynamodb_local``)."""

_last_module: list[object] = [None]
"""The module of the last test set up in this process."""


def _start(server: DynamoDBLocal) -> None:
    """Start ``server`` with ``JAVA_OPTIONS``.

    ``JDK_JAVA_OPTIONS`` is read by the ``java`` command only, and set for
    this start only.
    """
    with pytest.MonkeyPatch.context() as patch:
        given = os.environ.get("JDK_JAVA_OPTIONS", "")
        patch.setenv("JDK_JAVA_OPTIONS", f"{given} {JAVA_OPTIONS}".strip())
        server.start()


def _streams_held(server: DynamoDBLocal) -> int:
    """Return how many streams ``server`` holds, counting up to one page (100)."""
    streams = boto3.client(
        "dynamodbstreams",
        endpoint_url=server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 - DynamoDB Local takes any
    )
    return len(streams.list_streams(Limit=100)["Streams"])


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Restart this process's server at a test file's start if streams piled up.

    Before the file's fixtures are made, after the last file's are gone (see
    ``STREAMS_BEFORE_RESTART``). The server keeps its port, so its endpoint
    stays the session's.
    """
    if not _servers or getattr(item, "module", None) is _last_module[0]:
        return
    _last_module[0] = getattr(item, "module", None)
    [server] = _servers
    if _streams_held(server) >= STREAMS_BEFORE_RESTART:
        server.stop()
        _start(server)


@pytest.fixture(scope="session")
def dynamodb_local() -> Iterator[DynamoDBLocal]:
    """ledger's plugin's server (``ledger.pytest_plugin``), with a longer allowance.

    One per pytest process: each xdist worker has its own server. Started
    with ``JAVA_OPTIONS``, and started again when streams pile up
    (``STREAMS_BEFORE_RESTART``).
    """
    server = DynamoDBLocal(startup_timeout=STARTUP_ALLOWANCE)
    _start(server)
    _servers.append(server)
    try:
        yield server
    finally:
        _servers.remove(server)
        server.stop()


@pytest.fixture
def streamed(dynamodb_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Create this test's events tables with a stream (the default outside tests)."""
    dynamodb_env["DYNAMODB_EVENTS_STREAM"] = "yes"
    monkeypatch.setenv("DYNAMODB_EVENTS_STREAM", "yes")


@pytest.fixture
def dynamodb_env(
    dynamodb_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """ledger's plugin's environment (``ledger.pytest_plugin``), with no streams.

    See ``NO_STREAM``; a test that feeds from a stream asks for ``streamed``.
    """
    for key, value in NO_STREAM.items():
        monkeypatch.setenv(key, value)
    return {**dynamodb_env, **NO_STREAM}


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
    """Run `ledger ARGS...` in a process of its own; return the completed process.

    Keyword arguments are extra environment variables.
    """

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            **dynamodb_env,
            "COLUMNS": "250",
            "NO_COLOR": "1",
            **SOURCE_PATH,
            **extra,
        }
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
