"""``make demo``'s Order story runs on the ``indexed`` ordering by default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_the_demo_runs_on_the_indexed_ordering_unless_told(dynamodb_env):
    env = {**os.environ, **dynamodb_env}
    env.pop("DYNAMODB_ORDERING", None)
    # This checkout's code, whichever ledger the environment installed.
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])

    done = subprocess.run(
        [sys.executable, "demo.py"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    told = done.stdout
    assert "ordering: indexed" in told
    assert "Project the index into read models" in told
    assert "applied 10 events" in told  # every event, read from the index
    assert "OrderSummary: shipped, 3 lines" in told
    assert "redrive: {" in told
    assert "same summary as before: True" in told
    assert done.stderr == ""  # the story is not broken up by log records
