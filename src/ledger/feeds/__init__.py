"""One way to consume events: a source, a checkpoint and a consumer, run by a runner.

Every consumer of an application's total order (its ``sequence``, or the
index of an ``indexed`` application) is the same three parts, so a new
consumer is a class, not a new loop:

* a **source** (:class:`Source`) hands over the events after a position a
  batch at a time (:class:`IndexSource`: pages of the application sequence,
  the next page read while one is handled);
* a **checkpoint** (:class:`Checkpoint`) keeps the consumer's one position;
  an *atomic* consumer commits it with its effects in one transaction, any
  other one has the runner save it after the effects (at least once);
* the **consumer** (:class:`Consumer`) handles a batch and says how far it
  got (:class:`Progress`).

:class:`Runner` is the only loop: it polls the source from the checkpoint
to the tail, hands each batch to the consumer, records the consumer's lag
behind the head, stops at a batch it cannot read (:attr:`Runner.blocked`),
reads again after another runner got in first (:class:`Raced`) and rides
out DynamoDB being unavailable. It runs in-process (:meth:`Runner.start`,
:meth:`Runner.wait` for read-your-writes), as a long-running poller
(:meth:`Runner.run`), or in a Lambda invocation (:meth:`Runner.drain`,
:func:`drain_handler`).
"""

from ledger.feeds.base import (
    Batch,
    Checkpoint,
    Consumer,
    Item,
    Progress,
    Raced,
    Source,
)
from ledger.feeds.checkpoints import TrackingCheckpoint
from ledger.feeds.index import DEFAULT_PAGE_SIZE, IndexSource
from ledger.feeds.runner import Runner, drain_handler

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "Batch",
    "Checkpoint",
    "Consumer",
    "IndexSource",
    "Item",
    "Progress",
    "Raced",
    "Runner",
    "Source",
    "TrackingCheckpoint",
    "drain_handler",
]
