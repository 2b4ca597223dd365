"""``ledger events``: read an aggregate's stored events."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Annotated, Any

import typer

from ledger.cli.options import (
    JsonOutput,
    console,
    errors,
    metered,
    output_table,
    print_json,
    settings,
)
from ledger.dynamodb import DynamoDBFactory, schema
from ledger.dynamodb.limits import item_size
from ledger.metadata import EventMetadata

events_cli = typer.Typer(help="Read an aggregate's stored events.")


@events_cli.command("show")
def events_show(
    aggregate_id: Annotated[str, typer.Argument(help="The aggregate's id.")],
    as_json: JsonOutput = False,
) -> None:
    """Show an aggregate's events, decoded and upcast, with versions, times, sizes.

    Each event's metadata (correlation id, causation id, headers) is shown
    beside its fields.
    """
    app = settings.application(CREATE_TABLE="no")
    factory = app.factory
    if not isinstance(factory, DynamoDBFactory):
        raise TypeError(f"{type(app).__name__} does not use ledger.dynamodb")
    if factory.originator_id_type == "uuid":
        aggregate_id = _canonical_uuid(aggregate_id)
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
                    "metadata": _metadata(event),
                }
            )
    if not stored:
        errors.print(f"ledger: no events stored for aggregate {aggregate_id}")
        raise typer.Exit(1)
    if as_json:
        print_json({"aggregate_id": aggregate_id, "events": rows})
        return
    table = output_table("version", "event", "time", "bytes", "fields")
    # Ids are copied whole to find the events they name: never wrapped.
    table.add_column("correlation", no_wrap=True)
    table.add_column("causation", no_wrap=True)
    table.add_column("headers")
    for row in rows:
        metadata = row["metadata"] or {}
        table.add_row(
            str(row["version"]),
            row["event"],
            str(row["time"] or ""),
            str(row["bytes"]),
            _pairs(row["fields"]),
            metadata.get("correlation_id") or "",
            metadata.get("causation_id") or "",
            _pairs(metadata.get("headers", {})),
        )
    console.print(table)


def _pairs(values: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in values.items())


def _metadata(event: object) -> dict[str, Any] | None:
    """Return an event's metadata as JSON values; None for an event without any."""
    metadata = getattr(event, "metadata", None)
    if not isinstance(metadata, EventMetadata):
        return None
    return metadata.model_dump(mode="json")


def _fields(event: object) -> dict[str, Any]:
    """Return an event's own fields, without its id, version and time."""
    dump: Callable[[], dict[str, Any]] | None = getattr(event, "model_dump", None)
    values = dump() if dump is not None else dict(vars(event))
    for key in ("originator_id", "originator_version", "timestamp"):
        values.pop(key, None)
    return values


def _canonical_uuid(aggregate_id: str) -> str:
    """Return a UUID as stored (lower case, hyphens), however it was written.

    Accepts upper case, braces, a ``urn:uuid:`` prefix and no hyphens, as
    ``uuid.UUID`` does.
    """
    try:
        return str(uuid.UUID(aggregate_id.strip()))
    except ValueError:
        raise typer.BadParameter(
            f"{aggregate_id!r} is not a UUID, and this application's aggregate "
            "ids are UUIDs (like 6f1c2a9e-0b4d-4a8e-9c3f-2d5e7a1b8c90). If its "
            "ids are text, set ORIGINATOR_ID_TYPE=text.",
            param_hint="AGGREGATE_ID",
        ) from None
