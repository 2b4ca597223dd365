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

:class:`Runner` polls the source from the checkpoint to the tail, hands
each batch to the consumer, records the consumer's lag behind the head,
stops at a batch it cannot read (:attr:`Runner.blocked`) and reads again
after another runner got in first (:class:`Raced`). It runs in-process
(:meth:`Runner.start`, :meth:`Runner.wait` for read-your-writes), as a
long-running poller (:meth:`Runner.run`), or in a Lambda invocation
(:meth:`Runner.drain`, :func:`drain_handler`).

The events table's DynamoDB stream (per-aggregate order, 24 hours; read
only by the indexer and the legacy ``stream`` feed) is a source too
(:class:`StreamSource`): a batch is one shard's records, an item's position
its record's sequence number. Its consumers are consumers as above (a
publisher is one class on either source); what differs is the position,
one per shard (a :class:`ShardConsumer`'s ``shard_checkpoints``), and the
order, per aggregate only, so each keeps what it applied per aggregate
itself. A :class:`StreamPoller` feeds them, or in Lambda
:func:`stream_handler` (records pushed by an event source mapping, answered
with a partial-batch response: every record from the first not done on).

Both pollers are one loop (:class:`Polling`: ``run``, ``drain``,
``start``/``stop``), which rides out DynamoDB being unavailable in one place
(:func:`keep_polling`, also behind :func:`run_polls` and :func:`stream_handler`).
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
from ledger.feeds.polling import Polling, StoppedShortError, keep_polling, run_polls
from ledger.feeds.runner import Runner, drain_handler
from ledger.feeds.stream import (
    BatchHandler,
    ShardCheckpoints,
    ShardConsumer,
    StreamItem,
    StreamPoller,
    StreamSource,
    decode_record,
    feed_records,
    from_table,
    sequence_number,
    stream_handler,
)

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "Batch",
    "BatchHandler",
    "Checkpoint",
    "Consumer",
    "IndexSource",
    "Item",
    "Polling",
    "Progress",
    "Raced",
    "Runner",
    "ShardCheckpoints",
    "ShardConsumer",
    "Source",
    "StoppedShortError",
    "StreamItem",
    "StreamPoller",
    "StreamSource",
    "TrackingCheckpoint",
    "decode_record",
    "drain_handler",
    "feed_records",
    "from_table",
    "keep_polling",
    "run_polls",
    "sequence_number",
    "stream_handler",
]
