"""Lambda entry points of the Order fulfilment saga (``deploy/template.yaml``).

One function per feed, all in the projector's package:

* ``follow_orders``, ``follow_warehouse``, ``follow_payments``: a
  :class:`~ledger.projections.followers.StreamFollower` of
  :class:`~aggregates.fulfilment.OrderFulfilment` on each leader's events
  stream (the saga *decides*; the partial-batch response names the records
  that failed);
* ``send_steps``: a ``StreamFollower(fulfilment, fulfilment)`` on the saga's
  own events stream, which sends each decided step to its application (in
  this process, with the step's idempotency key);
* ``fire_timeouts``: :meth:`~ledger.sagas.TimeoutPoller.drain`, invoked by an
  EventBridge Scheduler schedule;
* ``follow_index``: the saga on every application's index
  (``DYNAMODB_ORDERING=indexed``, the saga application's own included): it
  decides on the leaders' events and sends its steps, reading each index
  from its tracking position (:func:`ledger.index_consumers.follow_leaders`),
  woken by the indexers' wake-ups and a schedule. This is how
  ``deploy/template.yaml`` runs the saga: the streams are the indexers'.
  The stream followers above serve stacks in ``stream`` ordering.

The applications are built at the first invocation, not at import, from the
function's environment (``PERSISTENCE_MODULE``, ``DYNAMODB_TABLE_PREFIX``,
``DYNAMODB_ORDERING`` of the leaders, ``CREATE_TABLE=no``,
``PAYMENT_TIMEOUT_SECONDS``), and kept for the invocations that follow.
``follow_index`` and ``fire_timeouts`` record each feed's ``Lag`` behind its
index's head (namespace ``ledger``, dimension ``SagaApplication``: the values
``OrderFulfilment/Orders``, ``/Warehouse``, ``/Payments``, ``/steps`` and
``/timeouts``) in CloudWatch embedded metric format on their logs
(:func:`ledger.sagas.metrics_in_lambda`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aggregates.application import Orders
    from aggregates.fulfilment import OrderFulfilment
    from aggregates.payments import Payments
    from aggregates.warehouse import Warehouse
    from ledger.projections.followers import StreamFollower
    from ledger.sagas import TimeoutPoller

__all__ = [
    "fire_timeouts",
    "follow_index",
    "follow_orders",
    "follow_payments",
    "follow_warehouse",
    "send_steps",
]

BatchResponse = dict[str, list[dict[str, str]]]
"""A partial-batch response: ``{"batchItemFailures": [{"itemIdentifier": …}]}``."""


@dataclass(frozen=True)
class FulfilmentApps:
    """The saga application, connected to the applications it sends commands to."""

    orders: Orders
    warehouse: Warehouse
    payments: Payments
    fulfilment: OrderFulfilment


@functools.cache
def _apps() -> FulfilmentApps:
    # Lambda-only path: nothing is built, or imported, until the first call.
    from aggregates.application import Orders  # noqa: PLC0415
    from aggregates.fulfilment import OrderFulfilment  # noqa: PLC0415
    from aggregates.payments import Payments  # noqa: PLC0415
    from aggregates.warehouse import Warehouse  # noqa: PLC0415

    orders, warehouse, payments = Orders(), Warehouse(), Payments()
    fulfilment = OrderFulfilment()
    fulfilment.connect(orders, warehouse, payments)
    return FulfilmentApps(orders, warehouse, payments, fulfilment)


@functools.cache
def _follower(leader: str) -> StreamFollower:
    from ledger.projections.followers import StreamFollower  # noqa: PLC0415

    apps = _apps()
    leader_app: Any = getattr(apps, leader)
    return StreamFollower(apps.fulfilment, leader_app)


@functools.cache
def _poller() -> TimeoutPoller:
    from ledger.sagas import TimeoutPoller, metrics_in_lambda  # noqa: PLC0415

    fulfilment = _apps().fulfilment
    return TimeoutPoller(fulfilment, metrics=metrics_in_lambda(fulfilment))


@functools.cache
def _following() -> FulfilmentApps:
    apps = _apps()
    # The saga reads each leader's notification log, and its own (its steps).
    for app in (apps.orders, apps.warehouse, apps.payments, apps.fulfilment):
        apps.fulfilment.follow(app.name, app.notification_log)
    return apps


def follow_index(event: Any, context: Any) -> dict[str, int]:
    """Let the sagas decide on, and send the steps of, what the indexes hold now.

    Invoked by an indexer's wake-up or the schedule; works until every index
    is read or the invocation's time is nearly up. Returns how many events
    it processed. The indexers run in their own functions, not here.
    """
    from ledger.index_consumers import deadline_of, follow_leaders  # noqa: PLC0415

    apps = _following()
    leaders = (apps.orders, apps.warehouse, apps.payments)
    processed = follow_leaders(apps.fulfilment, leaders, deadline_of(context))
    return {"processed": processed}


def follow_orders(event: Mapping[str, Any], context: Any) -> BatchResponse:
    """Let the sagas decide on a batch of the Orders events stream."""
    return _follower("orders").handle(event)


def follow_warehouse(event: Mapping[str, Any], context: Any) -> BatchResponse:
    """Let the sagas decide on a batch of the Warehouse events stream."""
    return _follower("warehouse").handle(event)


def follow_payments(event: Mapping[str, Any], context: Any) -> BatchResponse:
    """Let the sagas decide on a batch of the Payments events stream."""
    return _follower("payments").handle(event)


def send_steps(event: Mapping[str, Any], context: Any) -> BatchResponse:
    """Send the steps in a batch of the saga's own stream (other events are skipped)."""
    return _follower("fulfilment").handle(event)


def fire_timeouts(event: Any, context: Any) -> dict[str, int]:
    """Fire the sagas' due timeouts (a scheduled invocation); return how many fired.

    Reads the timeout events to the end of the index, or until the
    invocation's time is nearly up, riding out DynamoDB being unavailable
    until then.
    """
    from ledger.index_consumers import deadline_of  # noqa: PLC0415

    return {"fired": _poller().drain(deadline_of(context))}


def reset() -> None:
    """Forget the applications built so far (tests; a new environment)."""
    for cached in (_poller, _follower, _following, _apps):
        cached.cache_clear()
