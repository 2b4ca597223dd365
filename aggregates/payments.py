"""The Payments application: requests payments, takes the gateway's answers, refunds."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import ClassVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.utils import get_topic

from aggregates.payment import Payment, PaymentError
from ledger.commands import IdempotentApplication
from ledger.persistence import PydanticMapper

__all__ = ["Payments"]


class Payments(IdempotentApplication):
    """Keeps one payment per order.

    ``request`` asks the gateway for the amount; the gateway answers later,
    calling ``settle`` (a webhook: here, tests and the demo play the
    gateway). Every command takes an optional ``idempotency_key``: repeated
    with the same key it stores nothing more and is not refused. Rejected
    commands raise :class:`~aggregates.payment.PaymentError`.
    """

    env: ClassVar[dict[str, str]] = {"MAPPER_TOPIC": get_topic(PydanticMapper)}

    def request(
        self,
        order_id: UUID,
        amount: Decimal,
        currency: str,
        *,
        idempotency_key: str | None = None,
    ) -> None:
        """Ask for an order's payment; nothing more if it was asked for before."""
        if self.get_payment(order_id) is not None:
            return
        if self.first_outcome(idempotency_key) is not None:
            return
        payment = Payment.request(order_id, amount, currency)
        self.save_once(payment, idempotency_key=idempotency_key)

    def settle(
        self,
        order_id: UUID,
        *,
        approved: bool,
        reason: str = "declined by the card issuer",
        idempotency_key: str | None = None,
    ) -> None:
        """Record the gateway's answer to an order's payment."""
        self._change(
            order_id,
            lambda payment: payment.settle(approved=approved, reason=reason),
            idempotency_key,
        )

    def refund(self, order_id: UUID, *, idempotency_key: str | None = None) -> None:
        """Give an order's charged payment back."""
        self._change(order_id, lambda payment: payment.refund(), idempotency_key)

    def get_payment(self, order_id: UUID) -> Payment | None:
        """Return an order's payment, or None if none was requested."""
        try:
            payment: Payment = self.repository.get(Payment.id_for(order_id))
        except AggregateNotFoundError:
            return None
        return payment

    def _change(
        self,
        order_id: UUID,
        decide: Callable[[Payment], None],
        idempotency_key: str | None,
    ) -> None:
        """Load an order's payment, let it decide, save: once per idempotency key."""
        if self.first_outcome(idempotency_key) is not None:
            return
        payment = self.get_payment(order_id)
        if payment is None:
            msg = f"order {order_id} has no payment"
            raise PaymentError(msg)
        try:
            decide(payment)
        except PaymentError:
            # A twin of this command (same key) may have been applied since
            # the key was read: then this one is done, not refused.
            if self.first_outcome(idempotency_key) is not None:
                return
            raise
        self.save_once(payment, idempotency_key=idempotency_key)
