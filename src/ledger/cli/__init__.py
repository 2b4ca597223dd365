"""The ``ledger`` command: local DynamoDB, tables, events, projections.

Its output needs the ``cli`` extra: ``pip install 'ledger-dynamodb[cli]'``.
Every command that talks to DynamoDB ends by printing the round trips and
capacity units it used. Errors are one line on stderr with a non-zero exit
code; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Run the ``ledger`` command."""
    try:
        from ledger.cli.app import run  # noqa: PLC0415 - optional dependency
    except ModuleNotFoundError as error:
        if error.name in ("typer", "rich", "click"):
            sys.stderr.write(
                "ledger: the command needs the 'cli' extra: "
                "pip install 'ledger-dynamodb[cli]'\n"
            )
            raise SystemExit(2) from None
        raise
    run()
