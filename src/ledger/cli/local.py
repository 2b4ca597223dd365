"""``ledger local``: run DynamoDB Local for development."""

from __future__ import annotations

import signal
from typing import Annotated

import typer

from ledger.cli.options import console
from ledger.dynamodb.local import DynamoDBLocal


def local(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Run DynamoDB Local in memory until Ctrl-C (for development only)."""
    server = DynamoDBLocal(port=port)
    server.start()
    console.print(
        f"DynamoDB Local is running at {server.endpoint_url} (in memory; data is lost "
        "on exit).\nIt listens on every network interface: run it only on a machine "
        "you trust.\nUse it with: export DYNAMODB_ENDPOINT_URL="
        f"{server.endpoint_url}\nPress Ctrl-C to stop."
    )
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        console.print("DynamoDB Local stopped.")
