"""Gaps: reading an aggregate's missing events exactly in version order.

A feed that meets an event after a gap (earlier versions of its aggregate
not yet applied) reads the missing versions from the events table. A
version may not be there: removed (a TTL, an erasure) or not yet replicated
(a global table's stream can deliver version 3 before version 2 reached the
region). :func:`in_version_order` refuses such a read with
:class:`~ledger.projections.models.GapError`, so no feed passes over a
version: a projector parks it, a stream follower fails the record.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ledger.projections.models import GapError


def in_version_order(
    aggregate_id: str,
    events: Sequence[Any],
    after: int,
    up_to: int | None,
    *,
    advice: str | None = None,
) -> Sequence[Any]:
    """Return ``events`` if they are exactly versions ``after`` + 1 to ``up_to``.

    ``up_to`` None: to the last one read, and at least ``after`` + 1. Raises
    :class:`GapError` naming the aggregate and the versions missing (a TTL
    or an erasure on the events table, or a global table's replica that has
    not received them yet), with ``advice`` (by default, a projector's).
    """
    versions = [event.originator_version for event in events]
    last = max([after + 1, *versions]) if up_to is None else up_to
    expected = list(range(after + 1, last + 1))
    if versions == expected:
        return events
    missing = sorted(set(expected) - set(versions))
    what = (
        f"{describe_versions(missing)} missing from the events table"
        if missing
        else f"versions {versions} read where {after + 1} to {last} were expected"
    )
    raise GapError(
        f"Aggregate {aggregate_id}: {what} (reading versions {after + 1} to "
        f"{last}). They may not be readable yet (a global table still "
        "replicating) or may have been removed (a TTL, an erasure). "
        + (advice or _PROJECTOR_GAP_ADVICE)
    )


_PROJECTOR_GAP_ADVICE = (
    "Nothing was skipped: the first missing version is parked and the "
    "aggregate's later events wait behind it. Once it can be read, redrive the "
    "aggregate (ledger projections dlq redrive NAME --aggregate ID); if it is "
    "gone for good, rebuild the projection."
)


def describe_versions(versions: Sequence[int]) -> str:
    """Name versions for people: ``version 2``, ``versions 2 to 4, 7``."""
    runs: list[list[int]] = []
    for version in versions:
        if runs and version == runs[-1][-1] + 1:
            runs[-1].append(version)
        else:
            runs.append([version])
    named = ", ".join(
        str(run[0]) if len(run) == 1 else f"{run[0]} to {run[-1]}" for run in runs
    )
    return f"version {named}" if len(versions) == 1 else f"versions {named}"


def leading_run(events: Sequence[Any], after: int) -> list[Any]:
    """Return the events that are versions ``after`` + 1, + 2, ... without a gap."""
    run: list[Any] = []
    for event in sorted(events, key=lambda e: int(e.originator_version)):
        if event.originator_version != after + len(run) + 1:
            break
        run.append(event)
    return run


def gap_reason(version: int) -> str:
    """Say, in a dead letter, that ``version`` could not be read (no event data)."""
    return f": version {version} not in the events table; redrive once it can be read"


__all__ = ["describe_versions", "gap_reason", "in_version_order", "leading_run"]
