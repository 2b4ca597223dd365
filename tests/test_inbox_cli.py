"""``ledger inbox|publisher dead-letters``, each run in a process of its own."""

from __future__ import annotations

import json
import uuid

from aggregates.inbox_example import make_inbox, make_publisher
from ledger.inbox import handle_sqs_event
from ledger.publishing import event_id
from ledger.publishing.deadletters import DeadLetter, store_dead_letter
from projections.integration import SOURCE
from tests.test_inbox_sqs import place_body, record
from tests.test_publisher import local_eventbridge

INBOX = "--inbox=aggregates.inbox_example:make_inbox"
PUBLISHER = "--publisher=aggregates.inbox_example:make_publisher"


def test_inbox_dead_letters_are_listed_redriven_and_purged(
    ledger, dynamodb_env: dict[str, str]
) -> None:
    inbox = make_inbox(dynamodb_env)
    handle_sqs_event(
        {
            "Records": [
                record("m1", place_body(uuid.uuid4(), quantity="many"), "PlaceOrder"),
                record("m2", "{}", "Unknown"),
            ]
        },
        inbox,
    )

    listed = ledger("inbox", "dead-letters", "list", INBOX, "--json")
    redriven = ledger("inbox", "dead-letters", "redrive", "sqs:m1", INBOX)
    purged = ledger("inbox", "dead-letters", "purge", "sqs:m1", INBOX, "--yes")
    after = ledger("inbox", "dead-letters", "list", INBOX)

    assert listed.returncode == 0, listed.stderr
    letters = json.loads(listed.stdout)
    assert [(each["key"], each["body"]) for each in letters] == [
        ("sqs:m1", False),
        ("sqs:m2", False),
    ]
    assert "quantity: int_parsing" in letters[0]["reason"]
    assert "many" not in listed.stdout
    assert redriven.returncode == 1
    assert "sqs:m1: no body" in redriven.stdout
    assert purged.returncode == 0, purged.stderr
    assert "purged 1 dead letters" in purged.stdout
    assert "sqs:m2" in after.stdout
    assert "sqs:m1" not in after.stdout


def test_publisher_dead_letters_are_listed_redriven_and_purged(
    ledger, dynamodb_env: dict[str, str]
) -> None:
    with local_eventbridge() as endpoint:
        env = {**dynamodb_env, "EVENTBRIDGE_ENDPOINT_URL": endpoint}
        publisher = make_publisher(env)
        orders = publisher.application
        placed = orders.place_order(uuid.uuid4(), [])
        gone = uuid.uuid4()  # an event the events table does not hold
        for aggregate_id in (placed, gone):
            store_dead_letter(
                publisher.connection,
                publisher.table_name,
                DeadLetter(
                    aggregate_id=str(aggregate_id),
                    version=1,
                    detail_type="OrderPlaced.v1",
                    event_id=str(event_id(SOURCE, "OrderPlaced.v1", aggregate_id, 1)),
                    topic="aggregates.order:Order.OrderPlaced",
                    error="InternalFailure",
                    attempts=4,
                ),
            )

        listed = ledger("publisher", "dead-letters", "list", PUBLISHER, **env)
        redriven = ledger("publisher", "dead-letters", "redrive", PUBLISHER, **env)
        purged = ledger("publisher", "dead-letters", "purge", PUBLISHER, "--yes", **env)
        after = ledger("publisher", "dead-letters", "list", PUBLISHER, **env)

    assert listed.returncode == 0, listed.stderr
    assert str(placed) in listed.stdout
    assert "InternalFailure" in listed.stdout
    assert redriven.returncode == 1  # one is missing from the events table
    assert f"{placed}#0000000001#OrderPlaced.v1: published" in redriven.stdout
    assert f"{gone}#0000000001#OrderPlaced.v1: missing" in redriven.stdout
    assert "purged 1 dead letters" in purged.stdout
    assert "no dead letters" in after.stdout
