"""``ledger inbox|publisher dead-letters``: list, redrive and purge dead letters.

An inbox is named by ``--inbox`` (or ``LEDGER_INBOX``, or ``[tool.ledger]
inbox`` in pyproject.toml) as ``module:function``: a function taking
``env`` (the environment, a mapping) that returns the
:class:`~ledger.inbox.Inbox` with its handlers (a redrive runs them). A
publisher is named the same way by ``--publisher`` (``LEDGER_PUBLISHER``,
``[tool.ledger] publisher``): a function taking ``env`` that returns the
:class:`~ledger.publishing.Publisher`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from ledger.cli.options import (
    JsonOutput,
    console,
    metered,
    output_table,
    print_json,
    settings,
)
from ledger.cli.project import _pyproject_config, load_object

LEDGER_INBOX = "LEDGER_INBOX"
"""Environment key: the function making the inbox, as ``module:function``."""
LEDGER_PUBLISHER = "LEDGER_PUBLISHER"
"""Environment key: the function making the publisher, as ``module:function``."""

inbox_cli = typer.Typer(help="Inspect an inbox's messages refused for good.")
inbox_letters_cli = typer.Typer(
    help="List, redrive and purge an inbox's dead letters: messages that failed "
    "validation, had no handler, or whose command the domain refused."
)
inbox_cli.add_typer(inbox_letters_cli, name="dead-letters")

publisher_cli = typer.Typer(help="Inspect a publisher's events not published.")
publisher_letters_cli = typer.Typer(
    help="List, redrive and purge a publisher's dead letters: integration events "
    "EventBridge kept refusing, or domain events that could not be translated."
)
publisher_cli.add_typer(publisher_letters_cli, name="dead-letters")

InboxOption = Annotated[
    str | None,
    typer.Option(
        "--inbox",
        help="A function taking env and returning the inbox, as module:function. "
        "Default: $LEDGER_INBOX, then [tool.ledger] inbox in pyproject.toml.",
    ),
]
PublisherOption = Annotated[
    str | None,
    typer.Option(
        "--publisher",
        help="A function taking env and returning the publisher, as "
        "module:function. Default: $LEDGER_PUBLISHER, then [tool.ledger] "
        "publisher in pyproject.toml.",
    ),
]
Keys = Annotated[
    list[str] | None,
    typer.Argument(help="Dead letters' keys, as listed (default: all)."),
]
Yes = Annotated[bool, typer.Option("--yes", help="Do not ask to confirm.")]


def _made(option: str | None, env_key: str, config_key: str, what: str) -> Any:
    config, _ = _pyproject_config(Path.cwd().resolve())
    named = option or os.environ.get(env_key) or str(config.get(config_key, ""))
    if not named:
        raise typer.BadParameter(
            f"no {what}: give --{config_key} module:function, set {env_key}, or add "
            f'[tool.ledger] {config_key} = "module:function" to your pyproject.toml.'
        )
    settings.project()  # makes the working directory importable
    found = load_object(named, f"--{config_key}")
    if isinstance(found, type) or not callable(found):
        raise typer.BadParameter(
            f"--{config_key} {named!r} is not a function taking env and returning "
            f"the {what}."
        )
    return found(env=dict(settings.environment("")))


def open_inbox(option: str | None) -> Any:
    """Return the inbox the ``inbox`` commands work on."""
    from ledger.inbox import Inbox  # noqa: PLC0415

    made = _made(option, LEDGER_INBOX, "inbox", "inbox")
    if not isinstance(made, Inbox):
        raise typer.BadParameter(
            f"--inbox returned {type(made).__name__}, not an Inbox."
        )
    return made


def open_publisher(option: str | None) -> Any:
    """Return the publisher the ``publisher`` commands work on."""
    from ledger.publishing import Publisher  # noqa: PLC0415

    made = _made(option, LEDGER_PUBLISHER, "publisher", "publisher")
    if not isinstance(made, Publisher):
        raise typer.BadParameter(
            f"--publisher returned {type(made).__name__}, not a Publisher."
        )
    return made


# --- the inbox ---------------------------------------------------------------------


@inbox_letters_cli.command("list")
def inbox_list(inbox: InboxOption = None, as_json: JsonOutput = False) -> None:
    """List dead letters: key, type, source, reason (never the body)."""
    made = open_inbox(inbox)
    with metered(made.connection, to_stderr=as_json):
        letters = made.dead_letters()
    if as_json:
        print_json(
            [
                {**dataclasses.asdict(letter), "body": letter.body is not None}
                for letter in letters
            ]
        )
        return
    table = output_table("type", "source", "reason", "body kept", "parked at")
    table.add_column("key", no_wrap=True)
    for letter in letters:
        table.add_row(
            letter.message_type or "-",
            letter.source,
            letter.reason,
            "yes" if letter.body is not None else "no",
            letter.dead_lettered_at,
            letter.key,
        )
    console.print(table if letters else "no dead letters")


@inbox_letters_cli.command("redrive")
def inbox_redrive(keys: Keys = None, inbox: InboxOption = None) -> None:
    """Handle dead letters again with the handlers deployed now (after the fix).

    Each keeps its key: a command applied meanwhile is not applied again.
    Letters stored without their body cannot be redriven (replay them from
    their source, then purge them). Exits 1 if any was not applied.
    """
    made = open_inbox(inbox)
    with metered(made.connection):
        outcomes = made.redrive(keys or None)
        for key, outcome in outcomes.items():
            console.print(f"{key}: {outcome}")
        if not outcomes:
            console.print("no dead letters")
    if any(outcome != "applied" for outcome in outcomes.values()):
        raise typer.Exit(1)


@inbox_letters_cli.command("purge")
def inbox_purge(keys: Keys = None, inbox: InboxOption = None, yes: Yes = False) -> None:
    """Delete dead letters: their messages are never applied."""
    made = open_inbox(inbox)
    if not yes:
        typer.confirm(
            f"Delete {'all' if not keys else len(keys)} dead letters of inbox "
            f"{made.name}?",
            abort=True,
        )
    with metered(made.connection):
        deleted = made.purge(keys or None)
        console.print(f"purged {len(deleted)} dead letters")


# --- the publisher -----------------------------------------------------------------


@publisher_letters_cli.command("list")
def publisher_list(
    publisher: PublisherOption = None, as_json: JsonOutput = False
) -> None:
    """List dead letters: aggregate, version, detail-type, error (never event data)."""
    made = open_publisher(publisher)
    with metered(made.connection, to_stderr=as_json):
        letters = made.dead_letters()
    if as_json:
        print_json(
            [{**dataclasses.asdict(letter), "key": letter.key} for letter in letters]
        )
        return
    table = output_table("detail-type", "error", "attempts", "parked at")
    table.add_column("key", no_wrap=True)
    for letter in letters:
        table.add_row(
            letter.detail_type,
            letter.error,
            str(letter.attempts),
            letter.dead_lettered_at,
            letter.key,
        )
    console.print(table if letters else "no dead letters")


@publisher_letters_cli.command("redrive")
def publisher_redrive(publisher: PublisherOption = None) -> None:
    """Publish every dead letter's event again, read from the events table.

    Translated by the code deployed now, with the same ids as before.
    Exits 1 if any was not published.
    """
    made = open_publisher(publisher)
    with metered(made.connection):
        outcomes = made.redrive()
        for key, outcome in outcomes.items():
            console.print(f"{key}: {outcome}")
        if not outcomes:
            console.print("no dead letters")
    if any(outcome != "published" for outcome in outcomes.values()):
        raise typer.Exit(1)


@publisher_letters_cli.command("purge")
def publisher_purge(
    keys: Keys = None, publisher: PublisherOption = None, yes: Yes = False
) -> None:
    """Delete dead letters: their events are not published (republish by hand)."""
    from ledger.publishing.deadletters import purge_dead_letters  # noqa: PLC0415

    made = open_publisher(publisher)
    if not yes:
        typer.confirm(
            f"Delete {'all' if not keys else len(keys)} dead letters of publisher "
            f"{made.publication.name}?",
            abort=True,
        )
    with metered(made.connection):
        deleted = purge_dead_letters(made.connection, made.table_name, keys or None)
        console.print(f"purged {len(deleted)} dead letters")
