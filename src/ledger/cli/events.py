"""``ledger events``: read an aggregate's stored events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.table import Table

from ledger.cli.options import (
    DEFAULT_APPLICATION,
    ApplicationTopic,
    console,
    errors,
    metered,
    settings,
)
from ledger.dynamodb import DynamoDBFactory, schema
from ledger.dynamodb.limits import item_size

events_cli = typer.Typer(help="Read an aggregate's stored events.")


@events_cli.command("show")
def events_show(
    aggregate_id: Annotated[str, typer.Argument(help="The aggregate's id.")],
    application: ApplicationTopic = DEFAULT_APPLICATION,
) -> None:
    """Show an aggregate's events, decoded and upcast, with versions, times, sizes."""
    app = settings.application(application, CREATE_TABLE="no")
    factory = app.factory
    if not isinstance(factory, DynamoDBFactory):
        raise TypeError(f"{application} does not use ledger.dynamodb")
    table = Table("version", "event", "time", "bytes", "fields")
    with metered(factory):
        stored = app.recorder.select_events(aggregate_id)
        for record in stored:
            event = app.mapper.to_domain_event(record)
            fields = _fields(event)
            size = item_size(
                {
                    schema.AGGREGATE_ID: {"S": aggregate_id},
                    schema.VERSION: {"N": str(record.originator_version)},
                    schema.TOPIC: {"S": record.topic},
                    schema.STATE: {"B": record.state},
                }
            )
            table.add_row(
                str(record.originator_version),
                type(event).__qualname__,
                str(getattr(event, "timestamp", "")),
                str(size),
                ", ".join(f"{k}={v}" for k, v in fields.items()),
            )
    if not stored:
        errors.print(f"ledger: no events stored for aggregate {aggregate_id}")
        raise typer.Exit(1)
    console.print(table)


def _fields(event: object) -> dict[str, Any]:
    """Return an event's own fields, without its id, version and time."""
    dump: Callable[[], dict[str, Any]] | None = getattr(event, "model_dump", None)
    values = dump() if dump is not None else dict(vars(event))
    for key in ("originator_id", "originator_version", "timestamp"):
        values.pop(key, None)
    return values
