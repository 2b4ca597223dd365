"""The Order story end to end on DynamoDB, printing what each step cost.

Run it from a checkout with ``make demo`` (``python demo.py --local``: starts
DynamoDB Local for it) or ``python demo.py`` against ``DYNAMODB_ENDPOINT_URL``.
It uses the example domain in ``aggregates/`` (the Order aggregate and the
``Orders`` application) and ``projections/`` (its read models), and writes to
tables under a fresh prefix of its own. It runs on the ``indexed`` ordering
unless ``DYNAMODB_ORDERING`` says otherwise: its read models then follow the
index, which an indexer in this process appends from the events table's
stream (in ``sequence`` or ``stream`` ordering they follow the stream).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from decimal import Decimal
from typing import Any, TypeVar

from eventsourcing.persistence import IntegrityError, StoredEvent
from eventsourcing.utils import Environment
from rich.console import Console

from ledger.dynamodb import Meter, measure

T = TypeVar("T")


class Story:
    """Prints numbered steps, each with the DynamoDB work it did."""

    def __init__(self, app: Any, console: Console) -> None:
        self.app = app
        self.console = console
        self.step = 0
        self.metered: list[Any] = [app]
        """What the chapters meter: the application, then projection views too."""
        self.total = Meter()
        """What the whole story cost."""

    @contextmanager
    def chapter(self, title: str) -> Iterator[Meter]:
        """Meter one step of the story and print its cost after it."""
        self.step += 1
        self.console.print(f"\n[bold]{self.step}. {title}[/bold]")
        meter = Meter()
        with ExitStack() as stack:
            parts = [stack.enter_context(measure(obj)) for obj in self.metered]
            yield meter
        for part in parts:
            meter.add(part)
        self.total.add(meter)
        # Two lines, so that neither wraps at 80 columns.
        self.console.print(
            f"   [dim]cost: {meter.round_trips} round trips; "
            f"{meter.estimated_read_units:g} RCU, {meter.estimated_write_units:g} WCU "
            "by DynamoDB's pricing rules[/dim]"
        )
        self.console.print(
            f"   [dim]({meter.read_units:g} RCU / {meter.write_units:g} WCU as the "
            "server reported)[/dim]"
        )

    def say(self, text: str) -> None:
        """Print a line of the story."""
        self.console.print(f"   {text}")


def retry_on_conflict(command: Callable[[], T], story: Story) -> T:
    """Run a load-decide-save command, reloading and retrying on a conflict."""
    for attempt in range(1, 6):
        try:
            return command()
        except IntegrityError as conflict:
            story.say(f"[yellow]conflict on attempt {attempt}:[/yellow] {conflict}")
    return command()


def run_demo(env: Environment, console: Console) -> None:
    """Tell the story against the DynamoDB that ``env`` points at."""
    from aggregates.application import Orders  # noqa: PLC0415 - example domain
    from aggregates.order import Order  # noqa: PLC0415
    from ledger.snapshots import EveryNEvents  # noqa: PLC0415

    settings = dict(env)
    settings.setdefault("DYNAMODB_TABLE_PREFIX", f"demo{uuid.uuid4().hex[:6]}_")
    settings.setdefault("DYNAMODB_ORDERING", "indexed")
    settings["DYNAMODB_EVENTS_STREAM"] = "yes"  # the story reads the stream
    app = Orders(env=settings, snapshot_strategies={Order: EveryNEvents(5)})
    story = Story(app, console)
    factory: Any = app.factory
    console.print(
        f"Tables: {factory.table_name('events')} and friends "
        f"at {factory.connection.endpoint_url or 'AWS'}"
    )
    console.print(f"ordering: {factory.ordering} (DYNAMODB_ORDERING)")
    customer = uuid.uuid4()
    order_id = place_and_change(story, customer)
    race(story, order_id)
    snapshot_and_load(story, order_id)
    upcast(story, customer)
    rejected(story, order_id)
    project(story, settings, customer, order_id)
    console.print(f"\n[bold]Whole demo:[/bold] {story.total.summary()}")


def place_and_change(story: Story, customer: uuid.UUID) -> uuid.UUID:
    """Place an order, then change its items."""
    app = story.app
    with story.chapter("Place an order with two items"):
        order_id: uuid.UUID = app.place_order(
            customer,
            [
                {"product_id": "sku-tea", "quantity": 2, "price": Decimal("4.50")},
                {"product_id": "sku-mug", "quantity": 1, "price": Decimal("12.00")},
            ],
            currency="EUR",
        )
        order = app.get_order(order_id)
        story.say(f"order {order_id}: {order.status}, total {order.total} EUR")

    with story.chapter("Change it: add a teapot, drop the mug"):
        app.add_item(order_id, "sku-pot", 1, Decimal("30.00"))
        app.remove_item(order_id, "sku-mug")
        order = app.get_order(order_id)
        story.say(f"lines {sorted(order.lines)}, total {order.total} EUR")
    return order_id


def race(story: Story, order_id: uuid.UUID) -> None:
    """Two writers change one order at once: one wins, the other retries."""
    app = story.app
    with story.chapter("Two writers change the order at once; one must retry"):
        first = app.get_order(order_id)
        second = app.get_order(order_id)
        first.add_item("sku-tea", 1, Decimal("4.50"))
        app.save(first)
        story.say(f"writer A saved version {first.version}")
        second.add_item("sku-cup", 2, Decimal("3.00"))
        try:
            app.save(second)
        except IntegrityError as conflict:
            story.say(f"writer B [yellow]conflicted[/yellow]: {conflict}")

        def writer_b() -> int:
            fresh = app.get_order(order_id)
            fresh.add_item("sku-cup", 2, Decimal("3.00"))
            app.save(fresh)
            return int(fresh.version)

        version = retry_on_conflict(writer_b, story)
        story.say(f"writer B reloaded, decided again, saved version {version}")


def snapshot_and_load(story: Story, order_id: uuid.UUID) -> None:
    """Finish the order (a snapshot is taken on the way), then load it."""
    app = story.app
    with story.chapter("Confirm and ship (snapshot strategy: every 5 events)"):
        app.confirm(order_id)
        app.ship(order_id, "TRACK-0042")
        snapshots = list(app.snapshots.get(order_id)) if app.snapshots else []
        versions = [s.originator_version for s in snapshots]
        story.say(f"snapshots stored at versions {versions}")

    with story.chapter("Load the order (snapshot + the events after it)") as load:
        order = app.get_order(order_id)
        story.say(
            f"{order.status} with tracking {order.tracking_number}, total "
            f"{order.total} EUR, version {order.version}"
        )
    story.say(f"that load took {load.round_trips} round trips")


def upcast(story: Story, customer: uuid.UUID) -> None:
    """Store an OrderPlaced in its version-1 shape and load it today."""
    app = story.app
    with story.chapter("Load an order stored years ago as OrderPlaced v1"):
        old_id = uuid.uuid4()
        v1_state = {
            "timestamp": "2025-03-14T09:00:00.123456Z",
            "originator_topic": "aggregates.order:Order",
            "customer_id": str(customer),
        }
        app.recorder.insert_events(
            [
                StoredEvent(
                    originator_id=old_id,
                    originator_version=1,
                    topic="aggregates.order:Order.OrderPlaced",
                    state=json.dumps(v1_state).encode(),
                )
            ]
        )
        story.say("stored a v1 event (no currency field) directly in the table")
        old = app.get_order(old_id)
        story.say(f"loaded through the v1->v2 upcaster: currency {old.currency}")


def rejected(story: Story, order_id: uuid.UUID) -> None:
    """Show that a command the rules reject saves nothing."""
    app = story.app
    with story.chapter("A rejected command appends nothing"):
        try:
            app.add_item(order_id, "sku-late", 1, Decimal("1.00"))
        except ValueError as error:
            story.say(f"[red]rejected:[/red] {error}")
        story.say(f"still version {app.get_order(order_id).version}")


def feed_of(app: Any, projector: Any) -> tuple[str, Callable[[], int]]:
    """Return what feeds the projector and a call that applies what is new.

    The index on the indexed ordering (its indexer, the one reader of the
    events table's stream, catches up first), else the stream.
    """
    from ledger.dynamodb import DynamoDBIndexedApplicationRecorder  # noqa: PLC0415
    from ledger.indexer import Indexer  # noqa: PLC0415
    from ledger.projections.sequence import SequenceFeed  # noqa: PLC0415
    from ledger.projections.streams import StreamPoller  # noqa: PLC0415

    if not isinstance(app.recorder, DynamoDBIndexedApplicationRecorder):
        return "the events table's stream", StreamPoller(projector, app).poll
    indexer, feed = Indexer(app.recorder), SequenceFeed(projector, app)

    def apply() -> int:
        indexer.catch_up()
        applied = 0
        while page := feed.poll():
            applied += page
        return applied

    return "the index", apply


def project(
    story: Story, settings: dict[str, str], customer: uuid.UUID, order_id: uuid.UUID
) -> None:
    """Build read models, park and redrive a poison event, rebuild.

    On the indexed ordering the read models follow the index (an indexer
    catches up, then a sequence feed applies it), since the indexer is the
    one reader of the events table's stream; otherwise they follow the stream.
    """
    from aggregates.order import Order  # noqa: PLC0415
    from ledger.projections import Session, event_loader, handles  # noqa: PLC0415
    from ledger.projections.dynamodb import open_view  # noqa: PLC0415
    from ledger.projections.rebuild import rebuild  # noqa: PLC0415
    from projections.orders import (  # noqa: PLC0415
        OrderProjector,
        get_order_summary,
        list_customer_orders,
    )

    class FussyOrderProjector(OrderProjector):
        """The Order read models, with a bug: items named sku-poison crash it."""

        retry_delays = (0.05, 0.1)
        broken = True

        @handles(Order.ItemAdded)
        def item_added(self, event: Any, models: Session) -> None:
            if self.broken and event.product_id == "sku-poison":
                msg = "handler bug: cannot price sku-poison"
                raise RuntimeError(msg)
            super().item_added(event, models)

    app = story.app
    view = open_view(FussyOrderProjector, settings)
    projector = FussyOrderProjector(view, event_loader(app))
    story.metered.append(view)
    source, apply = feed_of(app, projector)
    with story.chapter(f"Project {source} into read models"):
        story.say(f"applied {apply()} events")
        summary = get_order_summary(view, order_id)
        assert summary is not None  # noqa: S101 - the order was projected above
        story.say(
            f"OrderSummary: {summary.status}, {summary.line_count} lines, total "
            f"{summary.total} {summary.currency}, tracking {summary.tracking_number}"
        )
        history = list_customer_orders(view, customer)
        count = 0 if history is None else history.order_count
        value = {} if history is None else history.lifetime_value
        story.say(f"CustomerOrders: {count} orders, lifetime value {value}")

    with story.chapter("A poison event is parked; other orders go on"):
        poisoned = app.place_order(customer, [])
        app.add_item(poisoned, "sku-poison", 1, Decimal("1.00"))
        app.confirm(poisoned)
        healthy = app.place_order(uuid.uuid4(), [])
        story.say(f"applied {apply()} new events")
        for parked in projector.parked():
            story.say(
                f"[red]parked[/red] {parked.aggregate_id} v{parked.version} after "
                f"{parked.attempts} attempts:"
            )
            story.say(f"   {parked.error}")
        waiting = get_order_summary(view, poisoned)
        story.say(
            f"its order waits at {waiting.status if waiting else None}; another "
            f"order was projected: {get_order_summary(view, healthy) is not None}"
        )

    with story.chapter("Fix the handler and redrive the parked event"):
        FussyOrderProjector.broken = False
        outcomes = projector.redrive()
        story.say(
            f"redrive: {{{', '.join(f'{k}: {v.value}' for k, v in outcomes.items())}}}"
        )
        fixed = get_order_summary(view, poisoned)
        story.say(f"the order caught up: {fixed.status if fixed else None}")

    with story.chapter("Rebuild the read models blue/green from the full history"):
        before = get_order_summary(view, order_id)
        result = rebuild(app, FussyOrderProjector, view)
        after = get_order_summary(view, order_id)
        story.say(
            f"built v{result.table_version} from {result.events} events, switched "
            f"readers to it; same summary as before: {before == after}"
        )


def main(argv: list[str] | None = None) -> None:
    """Run the demo: ``--local`` starts DynamoDB Local for it and stops it after."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument(
        "--local",
        action="store_true",
        help="start DynamoDB Local on a free port for the demo; stop it after",
    )
    arguments = parser.parse_args(argv)
    # The story tells of the retries and parked events it causes itself:
    # ledger's log lines about them would only interrupt it (a failure the
    # story does not expect raises).
    logging.getLogger("ledger").setLevel(logging.CRITICAL)
    # Long lines are left to the terminal to wrap, not cut at 80 columns.
    console = Console(highlight=False, soft_wrap=True)
    env = {**os.environ, "PERSISTENCE_MODULE": "ledger.dynamodb"}
    if arguments.local:
        from ledger.dynamodb.local import DynamoDBLocal  # noqa: PLC0415

        with DynamoDBLocal() as server:
            console.print(f"Started DynamoDB Local at {server.endpoint_url}")
            env["DYNAMODB_ENDPOINT_URL"] = server.endpoint_url
            run_demo(Environment("Orders", env), console)
    else:
        run_demo(Environment("Orders", env), console)


if __name__ == "__main__":
    main()
