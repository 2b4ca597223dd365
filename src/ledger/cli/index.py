"""``ledger index``: run and inspect the indexer of ``DYNAMODB_ORDERING=indexed``."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from ledger.cli.options import JsonOutput, console, metered, print_json, settings

if TYPE_CHECKING:
    from ledger.indexer import Indexer

index_cli = typer.Typer(
    help="Run and inspect the indexer of an application in DYNAMODB_ORDERING=indexed "
    "(it appends the events table's stream to the application sequence)."
)


def open_indexer() -> Indexer:
    """Return an indexer of the application the commands work on."""
    from ledger.indexer import Indexer  # noqa: PLC0415

    application = settings.application()
    return Indexer(application.recorder)  # type: ignore[arg-type]


@index_cli.command("run")
def index_run(
    once: Annotated[
        bool, typer.Option("--once", help="Catch up with the stream, then stop.")
    ] = False,
    interval: Annotated[
        float, typer.Option(help="Seconds to wait when a round found nothing.")
    ] = 1.0,
) -> None:
    """Append the events stream to the sequence until Ctrl-C (or once, with --once).

    Run one indexer per application (a second one is harmless: of two
    rounds racing, one commits and the other reads again). While DynamoDB is
    unavailable it waits and tries again.
    """
    from ledger.projections.streams import run_polls  # noqa: PLC0415

    indexer = open_indexer()
    with metered(indexer.recorder):
        if once:
            total = indexer.catch_up(timeout=3600)
            console.print(
                f"indexed {total} stream records; head at position "
                f"{indexer.recorder.max_notification_id() or 0}"
            )
            return
        total = 0
        with console.status("indexing: following the events stream") as line:

            def poll_and_show() -> int:
                nonlocal total
                consumed = indexer.poll()
                total += consumed
                line.update(f"indexing: {total} stream records indexed")
                return consumed

            with contextlib.suppress(KeyboardInterrupt):
                run_polls(
                    poll_and_show,
                    threading.Event(),
                    interval=interval,
                    on_unavailable=lambda error, wait: line.update(
                        f"indexing: DynamoDB unavailable ({type(error).__name__}); "
                        f"trying again in {wait:.0f}s"
                    ),
                )
        console.print(f"stopped; indexed {total} stream records")


@index_cli.command("status")
def index_status(as_json: JsonOutput = False) -> None:
    """Show the head of the sequence and how far the index is behind the stream.

    ``behind``: stream records after the indexer's checkpoints (counted up to
    10,000); ``oldest_age``: seconds since the oldest of them was written.
    """
    indexer = open_indexer()
    with metered(indexer.recorder, to_stderr=as_json):
        found = indexer.status()
    if as_json:
        print_json(dataclasses.asdict(found))
        return
    table = Table("head", "behind (records)", "oldest unindexed (s)", "shards")
    table.add_row(
        str(found.head),
        str(found.behind),
        "-" if found.oldest_age is None else f"{found.oldest_age:.1f}",
        str(found.shards),
    )
    console.print(table)
