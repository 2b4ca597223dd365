"""A read-model item over DynamoDB's 400 KB: its event is parked, the others go on."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from aggregates.application import Orders
from aggregates.order import Order
from ledger.projections import Outcome, Session, event_loader, handles
from ledger.projections.dynamodb import open_view
from ledger.projections.sequence import SequenceFeed
from tests.test_projections_gaps import AuditLine, AuditProjector

NOTE_BYTES = 410 * 1024
"""A note's length: over DynamoDB's 400 KB per item on its own."""


class NoteProjector(AuditProjector):
    """Writes an audit line per event, and a note over 400 KB for a confirmed order."""

    name = "Notes"

    @handles(Order.OrderConfirmed)
    def confirmed(self, event: Any, models: Session) -> None:
        line_id = f"{event.originator_id}/note"
        models.put(AuditLine(line_id=line_id, topic="x" * NOTE_BYTES, times=1))


def placed(orders: Orders) -> uuid.UUID:
    tea = {"product_id": "tea", "quantity": 1, "price": Decimal("4.50")}
    return orders.place_order(uuid.uuid4(), [tea], "EUR")


def test_an_event_writing_an_item_over_400_kb_is_parked_and_others_go_on(
    orders, dynamodb_env
):
    oversized = placed(orders)
    orders.confirm(oversized)
    healthy = placed(orders)
    view = open_view(NoteProjector, dynamodb_env)
    projector = NoteProjector(view, event_loader(orders))
    feed = SequenceFeed(projector, orders)

    while feed.poll():
        pass

    [parked] = projector.parked()
    assert (parked.aggregate_id, parked.version) == (str(oversized), 3)
    assert parked.error.startswith("ItemTooLargeError in confirmed")
    assert AuditLine.storage_key(f"{oversized}/note") in parked.error
    assert "400 KB" in parked.error
    assert feed.blocked is None
    assert view.max_tracking_id(orders.name) == orders.recorder.max_notification_id()
    assert view.load(AuditLine.storage_key(f"{healthy}/1")) is not None
    assert projector.redrive() == {str(oversized): Outcome.PARKED}
