"""What the `ledger` command prints: brackets kept, nothing cut, plain help."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from ledger.cli.options import output_table, run_with_one_line_errors
from ledger.dynamodb import Meter


def test_an_error_message_keeps_its_brackets(capsys):
    message = "1 validation error\nstatus\n  Field required [type=missing, input={}]"

    def fails() -> None:
        raise ValueError(message)

    with pytest.raises(SystemExit):
        run_with_one_line_errors(fails)

    assert "[type=missing, input={}]" in capsys.readouterr().err


def test_a_table_at_80_columns_folds_long_values_instead_of_cutting_them():
    value = "Order.OrderPlaced:" + "x" * 150
    shown = output_table("version", "event", "fields")
    shown.add_row("1", value, "currency=USD")
    screen = io.StringIO()

    Console(file=screen, width=80).print(shown)

    assert "…" not in screen.getvalue()
    assert "".join(screen.getvalue().split()).count("x") == 150


@pytest.mark.parametrize(
    ("trips", "said"), [(1, "1 round trip,"), (2, "2 round trips")]
)
def test_the_cost_line_counts_round_trips_in_good_english(trips, said):
    assert Meter(round_trips=trips).summary().startswith(said)
