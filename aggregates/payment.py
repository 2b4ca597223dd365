"""The Payment aggregate: one order's payment, requested, answered, maybe refunded.

Rules (each rejection raises :class:`PaymentError` and records nothing):

* an order has at most one payment (its id follows from the order's);
* the amount is a finite Decimal above zero, in a three-letter currency;
* a requested payment is answered once, by the gateway: charged or declined;
* only a charged payment can be refunded, once.
"""

from __future__ import annotations

import re
import uuid
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Final
from uuid import UUID

from ledger.domain import Aggregate
from ledger.metadata import Reply, Request

__all__ = ["Payment", "PaymentError", "PaymentStatus"]

_NAMESPACE: Final = uuid.UUID("2d7e5b90-41c3-5a6f-8e2d-9b0c1a3f4e57")
"""UUID namespace of payment ids. Never change it."""
_CURRENCY_CODE: Final = re.compile(r"[A-Z]{3}")


class PaymentError(ValueError):
    """A command broke one of the Payment rules; the message says which."""


class PaymentStatus(StrEnum):
    """Where a payment is."""

    REQUESTED = "requested"
    CHARGED = "charged"
    DECLINED = "declined"
    REFUNDED = "refunded"


class Payment(Aggregate):
    """The payment of one order, in the gateway's hands once requested."""

    if TYPE_CHECKING:  # eventsourcing would make class annotations fields
        order_id: UUID
        amount: Decimal
        currency: str
        status: PaymentStatus
        decline_reason: str | None

    class Requested(Aggregate.Created, Request):
        """The order's amount was asked of the customer's card."""

        order_id: UUID
        amount: Decimal
        currency: str

        def apply(self, aggregate: Payment) -> None:
            """Start the payment, waiting for the gateway."""
            aggregate.order_id = self.order_id
            aggregate.amount = self.amount
            aggregate.currency = self.currency
            aggregate.status = PaymentStatus.REQUESTED
            aggregate.decline_reason = None

    class Charged(Aggregate.Event, Reply):
        """The gateway took the amount (an answer: continues the request's chain)."""

        order_id: UUID

        def apply(self, aggregate: Payment) -> None:
            """Mark the payment charged."""
            aggregate.status = PaymentStatus.CHARGED

    class Declined(Aggregate.Event, Reply):
        """The gateway refused the charge (an answer: continues the request's chain)."""

        order_id: UUID
        reason: str

        def apply(self, aggregate: Payment) -> None:
            """Mark the payment declined."""
            aggregate.status = PaymentStatus.DECLINED
            aggregate.decline_reason = self.reason

    class Refunded(Aggregate.Event):
        """The amount charged went back to the customer."""

        order_id: UUID

        def apply(self, aggregate: Payment) -> None:
            """Mark the payment refunded."""
            aggregate.status = PaymentStatus.REFUNDED

    @staticmethod
    def id_for(order_id: UUID) -> UUID:
        """Return the id of an order's payment."""
        return uuid.uuid5(_NAMESPACE, f"payment/{order_id}")

    @classmethod
    def request(cls, order_id: UUID, amount: Decimal, currency: str) -> Payment:
        """Ask for ``amount`` in ``currency`` for an order."""
        if not isinstance(amount, Decimal) or not amount.is_finite() or amount <= 0:
            msg = f"amount must be a finite Decimal above zero, got {amount!r}"
            raise PaymentError(msg)
        if not (isinstance(currency, str) and _CURRENCY_CODE.fullmatch(currency)):
            msg = f"currency must be a three-letter ISO 4217 code, got {currency!r}"
            raise PaymentError(msg)
        return cls._create(
            cls.Requested,
            id=cls.id_for(order_id),
            order_id=order_id,
            amount=amount,
            currency=currency,
        )

    def settle(
        self, *, approved: bool, reason: str = "declined by the card issuer"
    ) -> None:
        """Record the gateway's answer: charged if ``approved``, else declined."""
        if self.status is not PaymentStatus.REQUESTED:
            msg = f"the payment was answered already: it is {self.status}"
            raise PaymentError(msg)
        if approved:
            self.trigger_event(self.Charged, order_id=self.order_id)
        else:
            self.trigger_event(self.Declined, order_id=self.order_id, reason=reason)

    def refund(self) -> None:
        """Give the amount charged back."""
        if self.status is not PaymentStatus.CHARGED:
            msg = f"only a charged payment can be refunded, and it is {self.status}"
            raise PaymentError(msg)
        self.trigger_event(self.Refunded, order_id=self.order_id)
