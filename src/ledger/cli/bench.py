"""``ledger bench``: run the benchmark scripts in a checkout's ``benchmarks/``.

The scripts and the example domain they use are not in the wheel: the
command is listed only when run inside a ledger checkout.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from ledger.cli.options import settings

bench_cli = typer.Typer(help="Run the benchmarks in benchmarks/ (from a checkout).")

QuickOption = Annotated[
    bool, typer.Option("--quick", help="The short version of the benchmark.")
]


def checkout_root(start: Path | None = None) -> Path | None:
    """Return the ledger checkout holding ``start`` (default: cwd), or None."""
    folder = (start or Path.cwd()).resolve()
    for candidate in (folder, *folder.parents):
        if (candidate / "benchmarks" / "bench_store.py").is_file():
            return candidate
    return None


def _run_benchmark(script: str, arguments: list[str]) -> None:
    """Run a benchmark script against the chosen endpoint; exit with its code."""
    root = checkout_root()
    if root is None:
        raise typer.BadParameter(
            "the benchmarks are not installed with ledger: run `ledger bench` "
            "inside a ledger checkout (git clone, then `make install`)."
        )
    path = root / "benchmarks" / script
    if settings.endpoint_url:
        arguments = [*arguments, "--endpoint", settings.endpoint_url]
    completed = subprocess.run(  # noqa: S603 - our own script, fixed argv
        [sys.executable, str(path), *arguments], check=False
    )
    raise typer.Exit(completed.returncode)


@bench_cli.command("append")
def bench_append(quick: QuickOption = False) -> None:
    """Time appends and loads beside raw boto3 (benchmarks/bench_store.py)."""
    _run_benchmark("bench_store.py", ["--repeat", "10" if quick else "50"])


@bench_cli.command("snapshots")
def bench_snapshots(quick: QuickOption = False) -> None:
    """Compare snapshot strategies over long histories (bench_snapshots.py)."""
    _run_benchmark("bench_snapshots.py", ["--quick"] if quick else [])


@bench_cli.command("rebuild")
def bench_rebuild(quick: QuickOption = False) -> None:
    """Time a projection rebuild beside raw reads and writes (bench_projections.py)."""
    _run_benchmark("bench_projections.py", ["--quick"] if quick else [])
