"""The ``eventsourcing`` infrastructure factory for DynamoDB.

Select it with ``PERSISTENCE_MODULE=ledger.dynamodb``. Like every
``eventsourcing`` setting, each key below can be prefixed with the upper-cased
application name (``ORDERS_DYNAMODB_TABLE_PREFIX``) to apply to one
application only.

``DYNAMODB_ORDERING`` chooses an application's recorders: ``sequence``
gives :class:`~ledger.dynamodb.sequence_recorders.DynamoDBApplicationRecorder`
and ``DynamoDBProcessRecorder``; ``stream`` gives
:class:`~ledger.dynamodb.stream_recorders.DynamoDBStreamApplicationRecorder`
and ``DynamoDBStreamProcessRecorder``; ``indexed`` gives
:class:`~ledger.dynamodb.indexed_recorders.DynamoDBIndexedApplicationRecorder`
and ``DynamoDBIndexedProcessRecorder``. Each says which as its ``ordering``.
"""

from __future__ import annotations

import importlib
import re
import typing
from typing import TypeVar, cast

from eventsourcing.domain import TAggregateID
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    Mapper,
    ProcessRecorder,
    Transcoder,
)
from eventsourcing.utils import Environment, EnvType, resolve_topic, strtobool

from ledger.dynamodb import schema
from ledger.dynamodb.batches import FORMAT, WRITTEN_FORMATS
from ledger.dynamodb.client import DynamoDBConnection
from ledger.dynamodb.idempotency import DEFAULT_TTL_SECONDS, IdempotencyKeys
from ledger.dynamodb.indexed_recorders import (
    DynamoDBIndexedApplicationRecorder,
    DynamoDBIndexedProcessRecorder,
)
from ledger.dynamodb.recorders import (
    DynamoDBAggregateRecorder,
    DynamoDBTrackingRecorder,
    Ordering,
    OriginatorIDType,
)
from ledger.dynamodb.sequence_recorders import (
    DynamoDBApplicationRecorder,
    DynamoDBProcessRecorder,
)
from ledger.dynamodb.stream_recorders import (
    DynamoDBStreamApplicationRecorder,
    DynamoDBStreamProcessRecorder,
)
from ledger.persistence import PydanticMapper

_TABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")
_Recorder = TypeVar("_Recorder", bound=ApplicationRecorder)


class DynamoDBFactory(InfrastructureFactory[DynamoDBTrackingRecorder]):
    """Makes DynamoDB recorders for an ``eventsourcing`` application."""

    DYNAMODB_ENDPOINT_URL = "DYNAMODB_ENDPOINT_URL"
    """DynamoDB endpoint URL. Default: ``AWS_ENDPOINT_URL_DYNAMODB`` if set, else
    boto3's own resolution (the AWS regional endpoint)."""
    AWS_ENDPOINT_URL_DYNAMODB = "AWS_ENDPOINT_URL_DYNAMODB"
    """boto3's standard key for the DynamoDB endpoint (read if the above is unset)."""
    DYNAMODB_REGION = "DYNAMODB_REGION"
    """AWS region. Default: boto3's (``AWS_DEFAULT_REGION``, ~/.aws/config); for a
    local endpoint with none configured, ``us-east-1``."""
    DYNAMODB_TABLE_PREFIX = "DYNAMODB_TABLE_PREFIX"
    """Prepended to every table name. Default: empty. Tables are named
    ``{prefix}{application name}_{events|snapshots|notifications|tracking}``."""
    DYNAMODB_MAX_ATTEMPTS = "DYNAMODB_MAX_ATTEMPTS"
    """Attempts per request on throttling and transient errors (botocore's
    standard retry mode, exponential backoff with jitter). Default: 10."""
    DYNAMODB_POLL_INTERVAL = "DYNAMODB_POLL_INTERVAL"
    """Seconds between polls of a subscription for other processes' saves.
    Default: 0.1. Each idle poll is one strongly consistent GetItem (1 RCU)."""
    DYNAMODB_ORDERING = "DYNAMODB_ORDERING"
    """How the application's saves are ordered. Default: ``sequence``.

    ``sequence``: a gap-free application sequence, so notification logs,
    ``select_notifications``, subscriptions and process applications work.
    Each save is one transaction of its events, a notification batch item and
    an update of the one sequence item (2 WCU per event plus about 4; 98
    events per save at most); every writer of the application races on that
    item, which caps the write rate however many processes write.

    ``stream``: no sequence (no notifications table). One event is one
    conditional PutItem (1 round trip, 1 WCU per KB); several are one
    transaction of their puts (2 WCU per KB each; 100 events per save at
    most). Writers of different aggregates never contend. Readers follow the
    events table's DynamoDB stream (``ledger.projections.streams``);
    reading the sequence raises ``SequenceDisabledError``. Process recorders
    track per upstream aggregate (``aggregate_tracking``).

    ``indexed``: saves as ``stream`` (events only; a save of several events
    marks them with three small attributes), and an indexer (``ledger index
    run``, :mod:`ledger.indexer`), the one reader of the events
    table's stream, appends them to the notifications table in the
    ``sequence`` format: the sequence's readers work unchanged, about a poll
    interval behind. Saves return no notification ids. Needs the events
    table's stream (``DYNAMODB_EVENTS_STREAM=yes``)."""
    DYNAMODB_BATCH_FORMAT = "DYNAMODB_BATCH_FORMAT"
    """The layout of the notification batches written (``sequence`` saves, the
    ``indexed`` ordering's indexer): ``3`` (default: topics and ids once per
    batch, compressed when smaller; about a fifth of format 2's bytes for the
    example's events, so a fifth of its write units) or ``2``, for as long as
    a ledger older than format 3 reads the table (it stops at a format 3
    batch, reporting it as corrupt). Every format is read whatever this is."""
    DYNAMODB_EVENTS_STREAM = "DYNAMODB_EVENTS_STREAM"
    """Give the events table a DynamoDB stream of new images, which stream-fed
    projections read (the Lambda handler, ``ledger projections run``): ``yes``
    (default) or ``no``. Read only when the table is created."""
    CREATE_TABLE = "CREATE_TABLE"
    """Create missing tables (never changes existing ones). Default: yes."""
    ORIGINATOR_ID_TYPE = "ORIGINATOR_ID_TYPE"
    """``uuid`` (default) or ``text``: the type of aggregate ids read back."""
    DYNAMODB_IDEMPOTENCY_TTL = "DYNAMODB_IDEMPOTENCY_TTL"
    """Seconds an idempotency key is remembered (``save(...,
    idempotency_key=...)``; table ``{prefix}{application}_idempotency``).
    Default: 86400 (a day). Costs nothing until keys are used: the table is
    created at the first use of a key (unless ``CREATE_TABLE=no``), and each
    keyed save also puts its key (2 WCU per KB, in the save's transaction)."""

    TOPIC_MODULES = "TOPIC_MODULES"
    """Comma-separated modules to import before reading, so the event classes
    they define resolve from stored topics. Stored topics resolve only to
    classes of modules already imported (an application imports its own) or
    registered with ``register_topic``: stored data never chooses what code
    is imported. Use it for events of classes the application does not
    import itself (a tool reading another application's events). Default:
    none."""

    # MAPPER_TOPIC, eventsourcing's key, defaults here to
    # ledger.persistence:PydanticMapper and must name it or a subclass: the
    # mapper is where stored topics are checked (see ``mapper``).

    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        self._import_topic_modules()
        endpoint_url = (
            self.env.get(self.DYNAMODB_ENDPOINT_URL)
            or self.env.get(self.AWS_ENDPOINT_URL_DYNAMODB)
            or None
        )
        max_attempts = self._int_setting(self.DYNAMODB_MAX_ATTEMPTS, "10")
        self.poll_interval = self._float_setting(self.DYNAMODB_POLL_INTERVAL, "0.1")
        self.batch_format = self._int_setting(self.DYNAMODB_BATCH_FORMAT, str(FORMAT))
        if self.batch_format not in WRITTEN_FORMATS:
            raise OSError(
                f"Invalid {self.DYNAMODB_BATCH_FORMAT} {self.batch_format}: use "
                f"{' or '.join(map(str, WRITTEN_FORMATS))}."
            )
        id_type = (self.env.get(self.ORIGINATOR_ID_TYPE) or "uuid").lower()
        if id_type not in ("uuid", "text"):
            raise OSError(
                f"Invalid {self.ORIGINATOR_ID_TYPE} {id_type!r}: use 'uuid' or 'text'."
            )
        self.originator_id_type = cast(OriginatorIDType, id_type)
        self.table_prefix = self.env.get(self.DYNAMODB_TABLE_PREFIX) or ""
        self.events_stream = self._bool_setting(self.DYNAMODB_EVENTS_STREAM, "yes")
        ordering = (self.env.get(self.DYNAMODB_ORDERING) or "sequence").lower()
        if ordering not in ("sequence", "stream", "indexed"):
            raise OSError(
                f"Invalid {self.DYNAMODB_ORDERING} {ordering!r}: use 'sequence' (a "
                "gap-free application sequence, the default), 'indexed' (saves "
                "as below; an indexer appends them to the sequence) or 'stream' "
                "(no sequence; readers follow the events table's DynamoDB stream)."
            )
        if ordering == "indexed" and not self.events_stream:
            raise OSError(
                f"{self.DYNAMODB_ORDERING}=indexed needs the events table's DynamoDB "
                f"stream, which the indexer reads, but {self.DYNAMODB_EVENTS_STREAM} "
                "is 'no': set it to 'yes' (and enable the stream on an existing table)."
            )
        self.ordering: Ordering = cast(Ordering, ordering)
        """``sequence``, ``stream`` or ``indexed``: which recorders it makes."""
        self.connection = DynamoDBConnection(
            endpoint_url=endpoint_url,
            region_name=self.env.get(self.DYNAMODB_REGION) or None,
            max_attempts=max_attempts,
        )

    def mapper(
        self,
        transcoder: Transcoder | None = None,
        mapper_class: type[Mapper[TAggregateID]] | None = None,
    ) -> Mapper[TAggregateID]:
        """Return a ``PydanticMapper``, or the subclass ``MAPPER_TOPIC`` names.

        ``eventsourcing``'s own ``Mapper`` resolves a stored topic by importing
        whatever module it names; ``PydanticMapper`` resolves only classes
        already imported (and maps dataclass events as ``Mapper`` does), so
        it is the default and any other mapper is refused.
        """
        if mapper_class is None:
            topic = self.env.get(self.MAPPER_TOPIC)
            mapper_class = resolve_topic(topic) if topic else PydanticMapper
        origin = typing.get_origin(mapper_class) or mapper_class
        if not (isinstance(origin, type) and issubclass(origin, PydanticMapper)):
            raise OSError(
                f"Mapper class {mapper_class!r} (from {self.MAPPER_TOPIC} or the "
                "application) does not check stored topics before importing what "
                "they name. On DynamoDB, ledger maps events with "
                "ledger.persistence:PydanticMapper, which maps dataclass events "
                f"too: set {self.MAPPER_TOPIC} to it or a subclass, or leave it unset."
            )
        return super().mapper(transcoder, mapper_class)

    def _import_topic_modules(self) -> None:
        for name in (self.env.get(self.TOPIC_MODULES) or "").split(","):
            if not name.strip():
                continue
            try:
                importlib.import_module(name.strip())
            except ImportError as error:
                raise OSError(
                    f"{self.TOPIC_MODULES} names module {name.strip()!r}, which "
                    f"cannot be imported ({error}). Give importable module names, "
                    "separated by commas."
                ) from error

    def _int_setting(self, key: str, default: str) -> int:
        value = self.env.get(key) or default
        try:
            number = int(value)
        except ValueError:
            number = 0
        if number < 1:
            raise OSError(f"Invalid {key} {value!r}: use a whole number of at least 1.")
        return number

    def _bool_setting(self, key: str, default: str) -> bool:
        value = self.env.get(key) or default
        try:
            return bool(strtobool(value))
        except ValueError:
            raise OSError(f"Invalid {key} {value!r}: use 'yes' or 'no'.") from None

    def _float_setting(self, key: str, default: str) -> float:
        value = self.env.get(key) or default
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if number <= 0:
            raise OSError(f"Invalid {key} {value!r}: use a number of seconds above 0.")
        return number

    def table_name(self, kind: str) -> str:
        """Return the name of one of this application's tables (``"events"``...)."""
        name = f"{self.table_prefix}{self.env.name or 'ledger'}_{kind}"
        if not _TABLE_NAME.match(name):
            raise OSError(
                f"DynamoDB table name {name!r} is invalid: names are 3 to 255 of "
                "A-Z a-z 0-9 _ . - . Change DYNAMODB_TABLE_PREFIX or the "
                "application name."
            )
        return name

    def env_create_table(self) -> bool:
        """Return True unless ``CREATE_TABLE`` says no."""
        return bool(strtobool(self.env.get(self.CREATE_TABLE) or "yes"))

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        """Return a recorder for events without a sequence, or for snapshots."""
        recorder = DynamoDBAggregateRecorder(
            self.connection,
            self.table_name(purpose),
            originator_id_type=self.originator_id_type,
            with_stream=purpose == schema.EVENTS_TABLE and self.events_stream,
        )
        if self.env_create_table():
            recorder.create_table()
        return recorder

    def application_recorder(self) -> ApplicationRecorder:
        """Return a recorder for events, and the sequence in ``sequence`` ordering."""
        recorder: DynamoDBApplicationRecorder | DynamoDBStreamApplicationRecorder
        if self.ordering == "stream":
            stream_class = self._recorder_class(
                self.APPLICATION_RECORDER_TOPIC, DynamoDBStreamApplicationRecorder
            )
            recorder = stream_class(
                self.connection,
                self.table_name(schema.EVENTS_TABLE),
                originator_id_type=self.originator_id_type,
                with_stream=self.events_stream,
            )
        else:  # both read the sequence; indexed saves as stream does
            sequence_class = self._recorder_class(
                self.APPLICATION_RECORDER_TOPIC,
                DynamoDBIndexedApplicationRecorder
                if self.ordering == "indexed"
                else DynamoDBApplicationRecorder,
            )
            recorder = sequence_class(
                self.connection,
                self.table_name(schema.EVENTS_TABLE),
                self.table_name(schema.NOTIFICATIONS_TABLE),
                originator_id_type=self.originator_id_type,
                poll_interval=self.poll_interval,
                with_stream=self.events_stream,
            )
            recorder.batch_format = self.batch_format
        recorder.idempotency = self._idempotency_keys()
        if self.env_create_table():
            recorder.create_table()
        return recorder

    def _recorder_class(
        self, topic_key: str, default: type[_Recorder]
    ) -> type[_Recorder]:
        """Return the class a ``*_RECORDER_TOPIC`` names, if it suits the ordering."""
        topic = self.env.get(topic_key)
        if not topic:
            return default
        recorder_class = resolve_topic(topic)
        if not (
            isinstance(recorder_class, type) and issubclass(recorder_class, default)
        ):
            raise OSError(
                f"{topic_key} {topic!r} is not a {default.__name__}, which "
                f"{self.DYNAMODB_ORDERING}={self.ordering} needs: name a subclass "
                "of it, or change the ordering."
            )
        return recorder_class

    def tracking_recorder(
        self, tracking_recorder_class: type[DynamoDBTrackingRecorder] | None = None
    ) -> DynamoDBTrackingRecorder:
        """Return a recorder of positions processed in upstream applications."""
        if tracking_recorder_class is None:
            topic = self.env.get(self.TRACKING_RECORDER_TOPIC)
            tracking_recorder_class = (
                resolve_topic(topic) if topic else DynamoDBTrackingRecorder
            )
        recorder = tracking_recorder_class(
            self.connection,
            self.table_name(schema.TRACKING_TABLE),
            originator_id_type=self.originator_id_type,
        )
        if self.env_create_table():
            recorder.create_table()
        return recorder

    def process_recorder(self) -> ProcessRecorder:
        """Return a recorder of events (and sequence) and tracking, all or nothing."""
        recorder: (
            DynamoDBProcessRecorder
            | DynamoDBStreamProcessRecorder
            | DynamoDBIndexedProcessRecorder
        )
        if self.ordering == "stream":
            stream_class = self._recorder_class(
                self.PROCESS_RECORDER_TOPIC, DynamoDBStreamProcessRecorder
            )
            recorder = stream_class(
                self.connection,
                self.table_name(schema.EVENTS_TABLE),
                self.table_name(schema.TRACKING_TABLE),
                originator_id_type=self.originator_id_type,
                with_stream=self.events_stream,
            )
        else:  # both read the sequence; indexed saves as stream does
            default: type[DynamoDBProcessRecorder | DynamoDBIndexedProcessRecorder] = (
                DynamoDBIndexedProcessRecorder
                if self.ordering == "indexed"
                else DynamoDBProcessRecorder
            )
            sequence_class = self._recorder_class(self.PROCESS_RECORDER_TOPIC, default)
            recorder = sequence_class(
                self.connection,
                self.table_name(schema.EVENTS_TABLE),
                self.table_name(schema.NOTIFICATIONS_TABLE),
                self.table_name(schema.TRACKING_TABLE),
                originator_id_type=self.originator_id_type,
                poll_interval=self.poll_interval,
                with_stream=self.events_stream,
            )
            recorder.batch_format = self.batch_format
        recorder.idempotency = self._idempotency_keys()
        if self.env_create_table():
            recorder.create_table()
        return recorder

    def _idempotency_keys(self) -> IdempotencyKeys:
        return IdempotencyKeys(
            self.connection,
            self.table_name(schema.IDEMPOTENCY_TABLE),
            self._int_setting(self.DYNAMODB_IDEMPOTENCY_TTL, str(DEFAULT_TTL_SECONDS)),
            create_table=self.env_create_table(),
        )

    def close(self) -> None:
        """Close the DynamoDB client."""
        self.connection.close()
