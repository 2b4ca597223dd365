"""``ledger demo``: tell the Order story (:mod:`ledger.demo`) on DynamoDB."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

import typer

from ledger.cli.options import console, settings
from ledger.dynamodb.local import DynamoDBLocal


def demo(
    use_local: Annotated[
        bool,
        typer.Option(
            "--local",
            help="Start DynamoDB Local for the demo on a free port; stop it after.",
        ),
    ] = False,
) -> None:
    """Tell the Order story end to end on DynamoDB, with what each step cost."""
    from ledger.demo import run_demo  # noqa: PLC0415 - needs the example domain

    if use_local:
        with DynamoDBLocal() as server:
            console.print(f"Started DynamoDB Local at {server.endpoint_url}")
            on_local = replace(settings, endpoint_url=server.endpoint_url)
            run_demo(on_local.environment("Orders"), console)
    else:
        run_demo(settings.environment("Orders"), console)
