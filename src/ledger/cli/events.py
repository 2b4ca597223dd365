"""``ledger events``: read an aggregate's stored events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.table import Table

from ledger.cli.options import (
    JsonOutput,
    console,
    errors,
    metered,
    print_json,
    settings,
)
from ledger.dynamodb import DynamoDBFactory, schema
from ledger.dynamodb.limits import item_size

events_cli = typer.Typer(help="Read an aggregate's stored events.")


@events_cli.command("show")
def events_show(
    aggregate_id: Annotated[str, typer.Argument(help="The aggregate's id.")],
    as_json: JsonOutput = False,
) -> None:
    """Show an aggregate's events, decoded and upcast, with versions, times, sizes."""
    app = settings.application(CREATE_TABLE="no")
    factory = app.factory
    if not isinstance(factory, DynamoDBFactory):
        raise TypeError(f"{type(app).__name__} does not use ledger.dynamodb")
    rows: list[dict[str, Any]] = []
    with metered(factory, to_stderr=as_json):
        stored = app.recorder.select_events(aggregate_id)
        for record in stored:
            event = app.mapper.to_domain_event(record)
            size = item_size(
                {
                    schema.AGGREGATE_ID: {"S": aggregate_id},
                    schema.VERSION: {"N": str(record.originator_version)},
                    schema.TOPIC: {"S": record.topic},
                    schema.STATE: {"B": record.state},
                }
            )
            rows.append(
                {
                    "version": record.originator_version,
                    "event": type(event).__qualname__,
                    "time": getattr(event, "timestamp", None),
                    "bytes": size,
                    "fields": _fields(event),
                }
            )
    if not stored:
        errors.print(f"ledger: no events stored for aggregate {aggregate_id}")
        raise typer.Exit(1)
    if as_json:
        print_json({"aggregate_id": aggregate_id, "events": rows})
        return
    table = Table("version", "event", "time", "bytes", "fields")
    for row in rows:
        table.add_row(
            str(row["version"]),
            row["event"],
            str(row["time"] or ""),
            str(row["bytes"]),
            ", ".join(f"{k}={v}" for k, v in row["fields"].items()),
        )
    console.print(table)


def _fields(event: object) -> dict[str, Any]:
    """Return an event's own fields, without its id, version and time."""
    dump: Callable[[], dict[str, Any]] | None = getattr(event, "model_dump", None)
    values = dump() if dump is not None else dict(vars(event))
    for key in ("originator_id", "originator_version", "timestamp"):
        values.pop(key, None)
    return values
