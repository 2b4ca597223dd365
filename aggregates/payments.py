"""The Payments application: requests payments, takes the gateway's answers, refunds."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import ClassVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.utils import get_topic

from aggregates.payment import Payment, PaymentError
from ledger.commands import Decision, IdempotentApplication, keyed_command
from ledger.persistence import PydanticMapper

__all__ = ["Payments"]


class Payments(IdempotentApplication):
    """Keeps one payment per order.

    ``request`` asks the gateway for the amount; the gateway answers later,
    calling ``settle`` (a webhook: here, tests and the demo play the
    gateway). Every command takes an optional ``idempotency_key``: repeated
    with the same key, even by a twin running at the same time, it stores
    nothing more and is not refused (see :mod:`ledger.commands`). Rejected
    commands raise :class:`~aggregates.payment.PaymentError`.
    """

    env: ClassVar[dict[str, str]] = {"MAPPER_TOPIC": get_topic(PydanticMapper)}

    @keyed_command()
    def request(
        self,
        order_id: UUID,
        amount: Decimal,
        currency: str,
        *,
        idempotency_key: str | None = None,
    ) -> Decision[None]:
        """Ask for an order's payment; nothing more if it was asked for before."""
        if self.get_payment(order_id) is not None:
            return Decision(None)
        return Decision(None, Payment.request(order_id, amount, currency))

    @keyed_command()
    def settle(
        self,
        order_id: UUID,
        *,
        approved: bool,
        reason: str = "declined by the card issuer",
        idempotency_key: str | None = None,
    ) -> Decision[None]:
        """Record the gateway's answer to an order's payment."""
        return self._change(
            order_id,
            lambda payment: payment.settle(approved=approved, reason=reason),
        )

    @keyed_command()
    def refund(
        self, order_id: UUID, *, idempotency_key: str | None = None
    ) -> Decision[None]:
        """Give an order's charged payment back."""
        return self._change(order_id, lambda payment: payment.refund())

    def get_payment(self, order_id: UUID) -> Payment | None:
        """Return an order's payment, or None if none was requested."""
        try:
            payment: Payment = self.repository.get(Payment.id_for(order_id))
        except AggregateNotFoundError:
            return None
        return payment

    def _change(
        self, order_id: UUID, decide: Callable[[Payment], None]
    ) -> Decision[None]:
        """Load an order's payment and let it decide (refusals: ``PaymentError``)."""
        payment = self.get_payment(order_id)
        if payment is None:
            msg = f"order {order_id} has no payment"
            raise PaymentError(msg)
        decide(payment)
        return Decision(None, payment)
