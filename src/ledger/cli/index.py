"""``ledger index``: run and inspect the indexer of ``DYNAMODB_ORDERING=indexed``."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from typing import TYPE_CHECKING, Annotated

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
from ledger.index_consumers import ROUND_INTERVAL

if TYPE_CHECKING:
    from ledger.indexer import Indexer, IndexStatus

index_cli = typer.Typer(
    help="Run and inspect the indexer of an application in DYNAMODB_ORDERING=indexed "
    "(it appends the events table's stream to the application sequence)."
)


def open_indexer(readers: int = 0) -> Indexer:
    """Return an indexer of the application the commands work on."""
    from ledger.indexer import Indexer  # noqa: PLC0415

    application = settings.application()
    return Indexer(application.recorder, readers=readers)  # type: ignore[arg-type]


@index_cli.command("run")
def index_run(
    once: Annotated[
        bool, typer.Option("--once", help="Catch up with the stream, then stop.")
    ] = False,
    interval: Annotated[
        float, typer.Option(help="Seconds to wait when a round found nothing.")
    ] = 1.0,
    round_interval: Annotated[
        float,
        typer.Option(
            help="Seconds from a round that indexed something to the next, at "
            "least: fewer, larger commits under steady writes, for that much "
            "more lag."
        ),
    ] = ROUND_INTERVAL,
    readers: Annotated[
        int,
        typer.Option(
            min=0,
            help="Reader processes that read the stream's shards (GetRecords and "
            "parsing), one core each, while this process commits: for an "
            "indexer that one core no longer keeps up with. 0: read in this "
            "process.",
        ),
    ] = 0,
) -> None:
    """Append the events stream to the sequence until Ctrl-C (or once, with --once).

    Run one indexer per application (a second one is harmless: of two
    rounds racing, one commits and the other reads again). While DynamoDB is
    unavailable it waits and tries again.
    """
    from ledger.indexer import freeze_start_up, paced  # noqa: PLC0415
    from ledger.projections.streams import run_polls  # noqa: PLC0415

    indexer = open_indexer(readers)
    freeze_start_up()  # the command's process runs the indexer only
    # Closed however the run ends (Ctrl-C included): no reader outlives it.
    with contextlib.closing(indexer), metered(indexer.recorder):
        if once:
            total = indexer.catch_up(timeout=3600)
            console.print(
                f"indexed {total} stream records; head at position "
                f"{indexer.recorder.max_notification_id() or 0}"
            )
            return
        total = 0
        with console.status("indexing: following the events stream") as line:
            poll = paced(indexer.poll, round_interval)

            def poll_and_show() -> int:
                nonlocal total
                consumed = poll()
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


@index_cli.command("reindex")
def index_reindex(
    as_json: JsonOutput = False,
    segments: Annotated[
        int, typer.Option(help="Scan segments (read one after another).", min=1)
    ] = 1,
) -> None:
    """Re-index from the events table, appending only what the index lacks.

    The indexer does this itself when its stream lost records it had not
    indexed (stopped past the stream's 24 hours); run it by hand to check an
    index against the table. Resumes an unfinished re-index. Costs a Scan of
    the events table, one transaction per page of it, and a read of the
    index (its aggregates' last versions are held in memory). With --json:
    one line per round on stderr, the summary on stdout.
    """
    indexer = open_indexer()
    indexer.scan_segments = segments
    started = time.monotonic()
    with (
        metered(indexer.recorder, to_stderr=as_json),
        console.status("re-indexing from the events table") as line,
    ):

        def show(rounds: int, appended: int) -> None:
            if as_json:
                typer.echo(
                    json.dumps({"rounds": rounds, "appended": appended}),
                    err=True,
                )
            else:
                line.update(f"re-indexing: {rounds} pages scanned, {appended} appended")

        appended = indexer.reindex(timeout=24 * 3600, progress=show)
    summary = {
        "appended": appended,
        "head": indexer.recorder.max_notification_id() or 0,
        "seconds": round(time.monotonic() - started, 3),
    }
    if as_json:
        print_json(summary)
        return
    console.print(
        f"re-indexed: {appended} events appended; head at position "
        f"{summary['head']} ({summary['seconds']:.1f}s)"
    )


@index_cli.command("repage")
def index_repage(
    as_json: JsonOutput = False,
    remove_old: Annotated[
        bool,
        typer.Option(
            "--remove-old-pages",
            help="Then delete the batches' items under their old keys, halving "
            "the table's storage. Only once every process that read the table "
            "before the move has been restarted (or has read its head since): "
            "one still holding the old page size would find batches missing. "
            "Refused in the run that moves the table.",
        ),
    ] = False,
) -> None:
    """Move a notifications table from pages of 100,000 positions onto pages of 1,000.

    For tables first written before page sizes were recorded (`sequence`
    and `indexed` orderings): their batches share one partition key per
    100,000 positions. Positions do not change. Each batch item is copied
    under its new key, then the table's page size is switched, on condition
    that nothing was appended since the last copy (else the new batches are
    copied and it tries again). Writers and readers need not stop: until the
    switch they use the old keys, which keep every batch; from it, every
    writer files by the new size (a writer holding the old one fails its
    condition and re-reads it). Killed, it resumes where it stopped; a table
    moved already is left as it is. Costs: reads of the whole table, a write
    of each batch item again (the table's bytes, in write units), a
    progress write per 250 items; the table holds twice its bytes until
    --remove-old-pages. With --json: the summary on stdout.
    """
    from ledger.dynamodb.repaging import remove_old_pages, repage  # noqa: PLC0415
    from ledger.dynamodb.sequence_recorders import (  # noqa: PLC0415
        DynamoDBApplicationRecorder,
    )

    application = settings.application()
    recorder = application.recorder
    if not isinstance(recorder, DynamoDBApplicationRecorder):
        raise typer.BadParameter(
            f"{type(recorder).__name__} has no notifications table (stream "
            "ordering): there are no pages to move."
        )
    with (
        metered(recorder, to_stderr=as_json),
        console.status("moving onto pages of 1,000 positions") as line,
    ):
        moved = repage(
            recorder,
            progress=lambda through, last: line.update(
                f"moving: batches copied through position {through} of {last}"
            ),
        )
        # Not in the run that switched: the processes reading the table
        # then still hold the old page size.
        removing = remove_old and moved.already
        removed = (
            remove_old_pages(
                recorder,
                progress=lambda count: line.update(
                    f"removing old keys: {count} items deleted"
                ),
            )
            if removing
            else 0
        )
    summary = dataclasses.asdict(moved) | {"removed": removed}
    if as_json:
        print_json(summary)
        _refused_removal(remove_old and not removing)
        return
    if moved.already:
        console.print(
            f"already on pages of {moved.page_size} positions; nothing copied"
        )
    else:
        console.print(
            f"moved onto pages of {moved.page_size} positions: {moved.copied} "
            f"batch items copied; switched at position {moved.last_position}"
        )
    if removing:
        console.print(f"removed {removed} items under old keys")
    _refused_removal(remove_old and not removing)


def _refused_removal(refused: bool) -> None:
    """Say why the old keys stay, and exit 1, if the removal was refused."""
    if not refused:
        return
    errors.print(
        "ledger: the old keys were not removed: this run switched the page "
        "size, and processes that read the table before it may still use the "
        "old keys. Once each has restarted (or read the head), run `ledger "
        "index repage --remove-old-pages` again.",
        soft_wrap=True,
    )
    raise typer.Exit(1)


@index_cli.command("status")
def index_status(as_json: JsonOutput = False) -> None:
    """Show the head of the sequence and how far the index is behind the stream.

    ``behind``: stream records after the indexer's checkpoints (counted up to
    10,000); ``oldest_age``: seconds since the oldest of them was written;
    ``reindexing``: a re-index from the events table is under way;
    ``reindex_pass``: which pass of it (a pass that began more than the
    stream's 24 hours before the indexer is back on the stream is followed by
    another; 0 once every shard the stream lists has a checkpoint);
    ``trimmed``: a checkpoint is past the stream's retention (the indexer
    will re-index).
    Bounded cost: two GetItems, a DescribeStream, per shard
    a GetShardIterator, and at most 10 GetRecords plus one per shard.
    """
    indexer = open_indexer()
    with metered(indexer.recorder, to_stderr=as_json):
        found = indexer.status()
    if as_json:
        print_json(dataclasses.asdict(found))
        return
    table = Table(
        "head", "behind (records)", "oldest unindexed (s)", "shards", "re-index"
    )
    table.add_row(
        str(found.head),
        str(found.behind),
        "-" if found.oldest_age is None else f"{found.oldest_age:.1f}",
        str(found.shards),
        _reindex_state(found),
    )
    console.print(table)


def _reindex_state(found: IndexStatus) -> str:
    """Say where a re-index stands, for the status table."""
    if found.reindexing:
        return f"pass {found.reindex_pass} under way"
    if found.trimmed:
        return "due"
    if found.reindex_pass:
        return f"pass {found.reindex_pass} done; on the stream"
    return "-"
