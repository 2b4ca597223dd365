"""The Orders inbox: orders placed from queue messages, S3 files and Step Functions.

Three ways in, one rule: each message is applied once, because each command
is called with the key the inbox derives from the message.

* ``PlaceOrder`` messages (raw SQS, or a Step Functions task of that type):
  one ``place_order``; a task's output is ``{"order_id": ...}``.
* ``AddItem`` messages: one ``add_item``; sent to a FIFO queue grouped by
  order, an order's lines are added in the order they were sent.
* a CSV file written to S3 (``customer_id,product_id,quantity,price,currency``
  with a header row): one ``place_order`` per row, keyed by the object's
  identity (bucket, key and etag) and the row's number. Importing the same
  file twice, or again after a crash halfway, places each order once.

A refused order (:class:`~aggregates.order.OrderError`) or a row that fails
validation parks the message (for a file: the rows before it stay placed;
after a fix, a redrive or a new delivery places the rest).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, ClassVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from aggregates.application import Orders
from aggregates.order import DEFAULT_CURRENCY, OrderError
from ledger.inbox import InboundMessage, Inbox, S3ObjectCreated
from ledger.publishing import Publisher

__all__ = [
    "AddItem",
    "OrderRow",
    "PlaceOrder",
    "make_inbox",
    "make_publisher",
    "orders_inbox",
    "row_key",
]


class PlaceOrder(InboundMessage):
    """Place an order with one line."""

    message_type: ClassVar[str] = "PlaceOrder"

    customer_id: UUID
    product_id: str
    quantity: int = Field(ge=1)
    price: Decimal = Field(ge=0)
    currency: str = DEFAULT_CURRENCY


class AddItem(InboundMessage):
    """Add a quantity of a product to an order."""

    message_type: ClassVar[str] = "AddItem"

    order_id: UUID
    product_id: str
    quantity: int = Field(ge=1)
    price: Decimal = Field(ge=0)


class OrderRow(BaseModel):
    """One row of an order file: one order of one line."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    customer_id: UUID
    product_id: str
    quantity: int = Field(ge=1)
    price: Decimal = Field(ge=0)
    currency: str = DEFAULT_CURRENCY


def row_key(file: S3ObjectCreated, number: int) -> str:
    """Return the idempotency key of a file's row (rows count from 1)."""
    return f"row:{file.identity}#{number}"


def orders_inbox(
    orders: Orders,
    *,
    s3_client: Any = None,
    env: Mapping[str, str] | None = None,
    store_bodies: bool | None = None,
    retry_delays: tuple[float, ...] | None = None,
    stepfunctions_client: Any = None,
) -> Inbox:
    """Return the inbox that places orders (``s3_client`` reads order files)."""
    inbox = Inbox(
        "OrderIntake",
        orders,
        refusals=(OrderError,),
        env=env,
        store_bodies=store_bodies,
        retry_delays=retry_delays,
        stepfunctions_client=stepfunctions_client,
    )

    @inbox.handles(PlaceOrder)
    def place(message: PlaceOrder, key: str) -> dict[str, UUID]:
        item = {
            "product_id": message.product_id,
            "quantity": message.quantity,
            "price": message.price,
        }
        order_id = orders.place_order(
            message.customer_id, [item], message.currency, idempotency_key=key
        )
        return {"order_id": order_id}

    @inbox.handles(AddItem)
    def add(message: AddItem, key: str) -> None:
        orders.add_item(
            message.order_id,
            message.product_id,
            message.quantity,
            message.price,
            idempotency_key=key,
        )

    @inbox.handles(S3ObjectCreated)
    def import_file(file: S3ObjectCreated, key: str) -> None:
        del key  # each row has its own key: a crash halfway redoes no row
        if s3_client is None:
            raise OrderError("this inbox reads no files: give it an s3_client")
        # IfMatch: the content this event announced, not a later write.
        text = s3_client.get_object(
            Bucket=file.bucket, Key=file.object_key, IfMatch=file.etag
        )["Body"].read()
        rows = csv.DictReader(io.StringIO(text.decode("utf-8")))
        for number, raw in enumerate(rows, start=1):
            row = OrderRow.model_validate(raw)
            orders.place_order(
                row.customer_id,
                [
                    {
                        "product_id": row.product_id,
                        "quantity": row.quantity,
                        "price": row.price,
                    }
                ],
                row.currency,
                idempotency_key=row_key(file, number),
            )

    return inbox


def make_inbox(env: Mapping[str, str]) -> Inbox:
    """Return the Orders inbox on its own Orders application (for ``ledger inbox``).

    ``ledger inbox dead-letters list --inbox aggregates.inbox_example:make_inbox``
    """
    return orders_inbox(Orders(env=dict(env)), env=env)


def make_publisher(env: Mapping[str, str]) -> Publisher:
    """Return the Orders publisher (for ``ledger publisher``).

    Used as ``--publisher aggregates.inbox_example:make_publisher``.
    """
    from projections.integration import OrderEvents  # noqa: PLC0415

    return Publisher(OrderEvents(), Orders(env=dict(env)), env=env)
