"""Versioned integration events received: checked against the shipped schema, upcast.

The consumer's model of an order placed is at version 2 (it adds the sales
channel); the publisher ships ``OrderPlaced.v1`` and its JSON Schema file
(``schemas/integration/ledger.orders/OrderPlaced.v1.json``). The inbox
validates each v1 detail against that file, then upcasts it with the
model's ``upcast_v1_v2``, as stored domain events are upcast.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import ConfigDict

from aggregates.application import Orders
from ledger.inbox import InboundMessage, Inbox, Outcome
from ledger.inbox.messages import envelopes_of
from projections.integration import SOURCE, OrderPlacedV1

SCHEMAS = Path(__file__).parent.parent / "schemas" / "integration"


class OrderPlaced(InboundMessage):
    """What this consumer reads of an order placed (a tolerant reader).

    Version 2 added the sales channel.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    message_type: ClassVar[str] = "OrderPlaced.v2"
    class_version: ClassVar[int] = 2
    versions: ClassVar[dict[str, int]] = {"OrderPlaced.v1": 1, "OrderPlaced.v2": 2}

    order_id: uuid.UUID
    customer_id: uuid.UUID
    currency: str
    sales_channel: str

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        """Version 1 had no channel: every order then was placed on the web shop."""
        state["sales_channel"] = "web"


@pytest.fixture
def received(orders: Orders, dynamodb_env: dict[str, str]) -> tuple[Inbox, list[Any]]:
    inbox = Inbox("Warehouse", orders, env=dynamodb_env, schemas=SCHEMAS)
    got: list[OrderPlaced] = []
    inbox.route(OrderPlaced, lambda message, key: got.append(message))
    return inbox, got


def delivered(detail_type: str, detail: dict[str, Any]) -> Any:
    body = json.dumps(
        {
            "id": str(uuid.uuid4()),
            "source": SOURCE,
            "detail-type": detail_type,
            "detail": detail,
        }
    )
    (envelope,) = envelopes_of(str(uuid.uuid4()), body)
    return envelope


def placed_v1() -> dict[str, Any]:
    """The detail the publisher sends for an order placed."""
    return OrderPlacedV1(
        id=uuid.uuid4(),
        aggregate_version=1,
        occurred_at=datetime.now(UTC),
        order_id=uuid.uuid4(),
        customer_id=uuid.uuid4(),
        currency="EUR",
    ).model_dump(mode="json")


def test_a_v1_event_is_upcast_to_the_consumers_v2(
    received: tuple[Inbox, list[OrderPlaced]],
) -> None:
    inbox, got = received
    detail = placed_v1()

    assert inbox.handle(delivered("OrderPlaced.v1", detail)) is Outcome.APPLIED

    assert got == [
        OrderPlaced(
            order_id=detail["order_id"],
            customer_id=detail["customer_id"],
            currency="EUR",
            sales_channel="web",
        )
    ]


def test_a_v2_event_is_taken_as_it_is(
    received: tuple[Inbox, list[OrderPlaced]],
) -> None:
    inbox, got = received
    detail = {**placed_v1(), "sales_channel": "phone"}

    assert inbox.handle(delivered("OrderPlaced.v2", detail)) is Outcome.APPLIED

    assert [message.sales_channel for message in got] == ["phone"]


def test_an_event_not_matching_the_shipped_schema_is_parked_without_its_data(
    received: tuple[Inbox, list[OrderPlaced]],
) -> None:
    inbox, got = received
    detail = placed_v1()
    del detail["aggregate_version"]
    detail["card_number"] = "4111-1111-1111-1111"
    envelope = delivered("OrderPlaced.v1", detail)

    assert inbox.handle(envelope) is Outcome.PARKED  # the model alone takes it

    assert got == []
    (letter,) = inbox.dead_letters()
    assert letter.key == f"event:{SOURCE}:{detail['id']}"
    assert letter.reason == (
        "not OrderPlaced.v1 as its schema file says: "
        "(detail): additionalProperties; (detail): required"
    )


def test_a_model_taking_a_version_it_cannot_upcast_is_refused(
    orders: Orders, dynamodb_env: dict[str, str]
) -> None:
    class Broken(OrderPlaced):
        versions: ClassVar[dict[str, int]] = {"OrderPlaced.v3": 3}

    inbox = Inbox("Warehouse", orders, env=dynamodb_env)
    with pytest.raises(TypeError, match=r"outside its class_version 1\.\.2"):
        inbox.route(Broken, lambda message, key: None)


def test_a_redriven_event_is_checked_against_its_schema_file_again(
    orders: Orders, dynamodb_env: dict[str, str]
) -> None:
    inbox = Inbox(
        "Warehouse", orders, env=dynamodb_env, schemas=SCHEMAS, store_bodies=True
    )
    got: list[OrderPlaced] = []
    inbox.route(OrderPlaced, lambda message, key: got.append(message))
    detail = {**placed_v1(), "card_number": "4111-1111-1111-1111"}
    inbox.handle(delivered("OrderPlaced.v1", detail))

    assert inbox.redrive() == {f"event:{SOURCE}:{detail['id']}": "parked"}
    assert got == []


def test_an_inbox_given_a_missing_schemas_folder_refuses_to_start(
    orders: Orders, dynamodb_env: dict[str, str], tmp_path: Path
) -> None:
    """A package built without its schema files fails loudly, not by skipping checks."""
    missing = tmp_path / "schemas-not-shipped"
    with pytest.raises(FileNotFoundError, match="not a folder"):
        Inbox("Warehouse", orders, env=dynamodb_env, schemas=missing)
