"""The `ledger` command end to end: real processes against DynamoDB Local."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from faults import SERVER_ERROR, FaultProxy

from aggregates.application import Orders

ROOT = Path(__file__).parent.parent
SOURCE_PATH = {"PYTHONPATH": os.pathsep.join((str(ROOT / "src"), str(ROOT)))}
"""For `ledger` processes started here: this checkout's ledger."""


@pytest.fixture
def order_id(dynamodb_env: dict[str, str]) -> uuid.UUID:
    """An order with three events: placed, an item added, confirmed."""
    orders = Orders()
    placed = orders.place_order(
        uuid.uuid4(), [{"product_id": "tea", "quantity": 2, "price": Decimal("4.50")}]
    )
    orders.confirm(placed)
    return placed


def test_help_lists_every_command(ledger):
    done = ledger("--help")

    assert done.returncode == 0
    for command in ("local", "tables", "events", "projections", "bench"):
        assert command in done.stdout


def test_tables_create_describe_delete(streamed, ledger):
    created = ledger("tables", "create", "--name", "Shop")
    described = ledger("tables", "describe", "--name", "Shop")
    deleted = ledger("tables", "delete", "--name", "Shop", "--yes")
    after = ledger("tables", "describe", "--name", "Shop")

    assert created.returncode == 0
    assert "ready:" in created.stdout
    assert "Shop_events" in created.stdout
    assert described.returncode == 0
    assert "ACTIVE" in described.stdout
    assert "NEW_IMAGE" in described.stdout
    assert deleted.returncode == 0
    assert deleted.stdout.count("deleted:") == 5
    assert "missing" in after.stdout
    assert "round trips" in created.stdout


def test_events_show_decodes_and_upcasts(ledger, order_id):
    done = ledger("events", "show", str(order_id))

    assert done.returncode == 0, done.stderr
    assert "Order.OrderPlaced" in done.stdout
    assert "currency=USD" in done.stdout
    assert "Order.OrderConfirmed" in done.stdout
    assert "round trip" in done.stdout


def test_events_show_of_unknown_aggregate_fails_with_one_line(ledger, order_id):
    done = ledger("events", "show", str(uuid.uuid4()))

    assert done.returncode == 1
    assert "no events stored for aggregate" in done.stderr


def test_unreachable_endpoint_is_one_line_and_exit_code_one(ledger):
    done = ledger(
        "--endpoint", "http://127.0.0.1:9", "tables", "describe", "--name", "Shop"
    )

    assert done.returncode == 1
    assert done.stderr.startswith("ledger: OperationalError: Could not reach DynamoDB")
    assert "Traceback" not in done.stderr


def test_usage_error_exits_two(ledger):
    done = ledger("events", "show")

    assert done.returncode == 2
    assert "Missing argument" in done.stderr


def test_projections_run_status_rebuild_and_dlq(ledger, order_id):
    ran = ledger("projections", "run", "OrderViews", "--feed", "sequence", "--once")
    status = ledger("projections", "status", "OrderViews")
    rebuilt = ledger("projections", "rebuild", "OrderViews")
    parked = ledger("projections", "dlq", "list", "OrderViews")

    assert ran.returncode == 0, ran.stderr
    assert "processed 3 events from the sequence" in ran.stdout
    assert status.returncode == 0, status.stderr
    assert "v1" in status.stdout
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "rebuilt OrderViews as v2: 3 events" in rebuilt.stdout
    assert parked.returncode == 0
    assert "no parked events" in parked.stdout


def test_projections_run_from_the_stream(streamed, ledger, order_id):
    done = ledger("projections", "run", "OrderViews", "--feed", "stream", "--once")

    assert done.returncode == 0, done.stderr
    assert "processed 3 events from the stream" in done.stdout


def test_projections_run_once_waits_out_dynamodb_unavailable_and_goes_on(
    streamed, ledger, order_id, dynamodb_endpoint
):
    with FaultProxy(dynamodb_endpoint) as proxy:
        # Reading the stream is refused once, past the client's one attempt.
        reading = proxy.on("GetRecords", fault=SERVER_ERROR, times=1)
        done = ledger(
            "projections",
            "run",
            "OrderViews",
            "--feed",
            "stream",
            "--once",
            DYNAMODB_ENDPOINT_URL=proxy.endpoint_url,
            DYNAMODB_MAX_ATTEMPTS="1",
        )

    assert reading.fired == 1
    assert done.returncode == 0, done.stderr
    assert "processed 3 events from the stream" in done.stdout


def test_projections_run_from_a_table_without_a_stream_says_what_to_do(
    ledger, order_id
):
    done = ledger("projections", "run", "OrderViews", "--feed", "stream", "--once")

    assert done.returncode == 1
    assert "has no DynamoDB stream" in done.stderr
    assert "--feed sequence" in done.stderr
    assert "Traceback" not in done.stderr


def test_unknown_projection_is_a_usage_error(ledger):
    done = ledger("projections", "status", "Nope")

    assert done.returncode == 2
    assert "unknown projection 'Nope'" in done.stderr


@pytest.mark.parametrize("ordering", ["sequence", "stream"])
def test_demo_tells_the_whole_story(ledger, dynamodb_env, ordering):
    dynamodb_env["DYNAMODB_ORDERING"] = ordering

    env = {**os.environ, **dynamodb_env, **SOURCE_PATH, "COLUMNS": "80"}
    done = subprocess.run(
        [sys.executable, "demo.py"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    for step in ("conflicted", "upcaster: currency USD", "parked", "Rebuild"):
        assert step in done.stdout
    assert "Whole demo:" in done.stdout
    assert f"ordering: {ordering}" in done.stdout
    # Not cut at 80 columns (each cost is told whole, on two lines), and no
    # log lines inside the story.
    lines = done.stdout.splitlines()
    assert "…" not in done.stdout
    assert any(
        "cost:" in line and "as the server reported)" in after
        for line, after in itertools.pairwise(lines)
    )
    assert "handler failed" not in done.stderr
    assert "parked version" not in done.stderr


@pytest.mark.parametrize("command", [("status",), ("dlq", "list")])
def test_read_only_commands_create_no_tables(ledger, dynamodb_env, command):
    done = ledger("projections", *command, "OrderViews")

    assert done.returncode == 1
    assert "Table " in done.stderr
    assert "DYNAMODB_TABLE_PREFIX" in done.stderr
    prefix = dynamodb_env["DYNAMODB_TABLE_PREFIX"]
    client = Orders(env={**dynamodb_env, "CREATE_TABLE": "no"}).factory.connection
    names = client.call("list_tables", ExclusiveStartTableName=prefix)["TableNames"]
    assert [n for n in names if n.startswith(prefix)] == []


def test_the_sequence_feed_parks_an_event_it_cannot_decode_goes_on_and_says_so(
    ledger, dynamodb_env
):
    orders = Orders()
    tea = {"product_id": "tea", "quantity": 1, "price": Decimal("4.50")}
    stuck = orders.place_order(uuid.uuid4(), [tea])
    order = orders.get_order(stuck)
    order.confirm()
    [confirmed] = [orders.mapper.to_stored_event(e) for e in order.collect_events()]
    unknown = dataclasses.replace(confirmed, topic="tests.gone:OrderConfirmed")
    orders.recorder.insert_events([unknown])
    healthy = orders.place_order(uuid.uuid4(), [tea])

    ran = ledger("projections", "run", "OrderViews", "--feed", "sequence", "--once")
    parked = ledger("projections", "dlq", "list", "OrderViews")

    assert ran.returncode == 1, ran.stderr
    assert "processed 5 events from the sequence" in ran.stdout
    assert "1 event was parked: see `ledger projections dlq list OrderViews`" in (
        " ".join(ran.stderr.split())
    )
    assert str(stuck) in parked.stdout
    assert str(healthy) not in parked.stdout


def tables_named(env: dict[str, str], prefix: str) -> list[str]:
    """The names of the tables on the test server that start with ``prefix``."""
    client = Orders(env={**env, "CREATE_TABLE": "no"}).factory.connection
    names = client.call("list_tables", ExclusiveStartTableName=prefix)["TableNames"]
    return [name for name in names if name.startswith(prefix)]


@pytest.mark.parametrize(
    "command",
    [("run", "OrderViews", "--feed", "sequence", "--once"), ("rebuild", "OrderViews")],
    ids=["run", "rebuild"],
)
def test_a_mistyped_prefix_creates_no_tables(ledger, dynamodb_env, order_id, command):
    typo = "typo" + dynamodb_env["DYNAMODB_TABLE_PREFIX"]

    done = ledger("--prefix", typo, "projections", *command)

    assert done.returncode == 1
    assert f"Table {typo}Orders_events (the events of" in done.stderr
    assert "--prefix" in done.stderr
    assert tables_named(dynamodb_env, typo) == []


def test_run_follows_the_application_ordering_so_status_shows_no_lag(
    streamed, ledger, order_id
):
    ran = ledger("projections", "run", "OrderViews", "--once")
    status = ledger("projections", "status", "OrderViews", "--json")

    assert ran.returncode == 0, ran.stderr
    assert "processed 3 events from the sequence" in ran.stdout
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["lag"] == 0


def test_help_shows_bracketed_text_and_flags_without_a_type(ledger):
    done = ledger("--help")

    assert done.returncode == 0
    assert "[tool.ledger] app in pyproject.toml" in " ".join(done.stdout.split())
    assert "$LEDGER_PROJECTORS, comma-separated" in " ".join(done.stdout.split())
    assert "<bool>" not in done.stdout


def test_projections_list_shows_where_the_application_came_from(ledger):
    done = ledger("projections", "list")

    assert done.returncode == 0, done.stderr
    assert "(from [tool.ledger] app in " in done.stdout


def test_piped_tables_are_never_cut(ledger, order_id):
    done = ledger("events", "show", str(order_id), COLUMNS="80")

    assert done.returncode == 0, done.stderr
    assert "…" not in done.stdout
    assert "Order.OrderPlaced" in done.stdout
    assert max(len(line) for line in done.stdout.splitlines()) > 80


def test_a_projector_given_as_the_app_is_a_usage_error_saying_where_it_goes(ledger):
    done = ledger("--app", "projections.orders:OrderProjector", "projections", "list")

    assert done.returncode == 2
    text = " ".join(done.stderr.split())
    assert "is not an eventsourcing Application class" in text
    assert "name it with --projector" in text


def test_an_application_given_as_a_projector_is_a_usage_error(ledger):
    done = ledger("--projector", "aggregates.application:Orders", "projections", "list")

    assert done.returncode == 2
    assert "is not a ledger.projections.Projector class" in " ".join(
        done.stderr.split()
    )


def test_events_show_finds_an_id_written_in_upper_case_with_braces(ledger, order_id):
    done = ledger("events", "show", "{" + str(order_id).upper() + "}")

    assert done.returncode == 0, done.stderr
    assert "Order.OrderPlaced" in done.stdout


def test_events_show_of_a_malformed_id_says_what_an_id_looks_like(ledger, order_id):
    done = ledger("events", "show", "6f1c-not-an-id")

    assert done.returncode == 2
    text = " ".join(done.stderr.split())
    assert "'6f1c-not-an-id' is not a UUID" in text
    assert "ORIGINATOR_ID_TYPE=text" in text


def test_an_old_projection_version_is_dropped_and_the_active_one_refused(
    ledger, order_id
):
    ledger("projections", "run", "OrderViews", "--feed", "sequence", "--once")
    ledger("projections", "rebuild", "OrderViews")

    old = ledger("projections", "drop-version", "OrderViews", "1", "--yes")
    active = ledger("projections", "drop-version", "OrderViews", "2", "--yes")
    status = ledger("projections", "status", "OrderViews", "--json")

    assert old.returncode == 0, old.stderr
    assert "dropped v1 of OrderViews" in old.stdout
    assert active.returncode == 1
    assert "active or being rebuilt" in active.stderr
    assert json.loads(status.stdout)["versions"] == [2]


def test_tables_describe_and_delete_include_the_projections_tables(
    ledger, dynamodb_env, order_id
):
    ledger("projections", "run", "OrderViews", "--feed", "sequence", "--once")
    prefix = dynamodb_env["DYNAMODB_TABLE_PREFIX"]

    described = ledger("tables", "describe")
    deleted = ledger("tables", "delete", "--yes")

    assert described.returncode == 0, described.stderr
    for kind in ("control", "parked", "v1"):
        assert f"{prefix}OrderViews_{kind}" in described.stdout
    assert deleted.returncode == 0, deleted.stderr
    assert f"deleted: {prefix}OrderViews_v1" in deleted.stdout
    assert tables_named(dynamodb_env, prefix) == []


def test_bench_is_listed_only_inside_a_checkout(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", "from ledger.cli import main; main()", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, **SOURCE_PATH},
        cwd=tmp_path,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert "projections" in done.stdout
    assert "bench" not in done.stdout
