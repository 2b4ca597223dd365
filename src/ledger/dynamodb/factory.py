"""The ``eventsourcing`` infrastructure factory for DynamoDB.

Select it with ``PERSISTENCE_MODULE=ledger.dynamodb``. Like every
``eventsourcing`` setting, each key below can be prefixed with the upper-cased
application name (``ORDERS_DYNAMODB_TABLE_PREFIX``) to apply to one
application only.
"""

from __future__ import annotations

import re
from typing import cast

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    ProcessRecorder,
)
from eventsourcing.utils import Environment, EnvType, resolve_topic, strtobool

from ledger.dynamodb import schema
from ledger.dynamodb.client import DynamoDBConnection
from ledger.dynamodb.recorders import (
    DynamoDBAggregateRecorder,
    DynamoDBApplicationRecorder,
    DynamoDBProcessRecorder,
    DynamoDBTrackingRecorder,
    OriginatorIDType,
)

_TABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")


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
    DYNAMODB_EVENTS_STREAM = "DYNAMODB_EVENTS_STREAM"
    """Give the events table a DynamoDB stream of new images, which stream-fed
    projections read (the Lambda handler, ``ledger projections run``): ``yes``
    (default) or ``no``. Read only when the table is created."""
    CREATE_TABLE = "CREATE_TABLE"
    """Create missing tables (never changes existing ones). Default: yes."""
    ORIGINATOR_ID_TYPE = "ORIGINATOR_ID_TYPE"
    """``uuid`` (default) or ``text``: the type of aggregate ids read back."""

    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        endpoint_url = (
            self.env.get(self.DYNAMODB_ENDPOINT_URL)
            or self.env.get(self.AWS_ENDPOINT_URL_DYNAMODB)
            or None
        )
        max_attempts = self._int_setting(self.DYNAMODB_MAX_ATTEMPTS, "10")
        self.poll_interval = self._float_setting(self.DYNAMODB_POLL_INTERVAL, "0.1")
        id_type = (self.env.get(self.ORIGINATOR_ID_TYPE) or "uuid").lower()
        if id_type not in ("uuid", "text"):
            raise OSError(
                f"Invalid {self.ORIGINATOR_ID_TYPE} {id_type!r}: use 'uuid' or 'text'."
            )
        self.originator_id_type = cast(OriginatorIDType, id_type)
        self.table_prefix = self.env.get(self.DYNAMODB_TABLE_PREFIX) or ""
        self.events_stream = self._bool_setting(self.DYNAMODB_EVENTS_STREAM, "yes")
        self.connection = DynamoDBConnection(
            endpoint_url=endpoint_url,
            region_name=self.env.get(self.DYNAMODB_REGION) or None,
            max_attempts=max_attempts,
        )

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
        """Return a recorder for events and the application sequence."""
        topic = self.env.get(self.APPLICATION_RECORDER_TOPIC)
        recorder_class: type[DynamoDBApplicationRecorder] = (
            resolve_topic(topic) if topic else DynamoDBApplicationRecorder
        )
        recorder = recorder_class(
            self.connection,
            self.table_name(schema.EVENTS_TABLE),
            self.table_name(schema.NOTIFICATIONS_TABLE),
            originator_id_type=self.originator_id_type,
            poll_interval=self.poll_interval,
            with_stream=self.events_stream,
        )
        if self.env_create_table():
            recorder.create_table()
        return recorder

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
        """Return a recorder of events, sequence and tracking in one transaction."""
        topic = self.env.get(self.PROCESS_RECORDER_TOPIC)
        recorder_class: type[DynamoDBProcessRecorder] = (
            resolve_topic(topic) if topic else DynamoDBProcessRecorder
        )
        recorder = recorder_class(
            self.connection,
            self.table_name(schema.EVENTS_TABLE),
            self.table_name(schema.NOTIFICATIONS_TABLE),
            self.table_name(schema.TRACKING_TABLE),
            originator_id_type=self.originator_id_type,
            poll_interval=self.poll_interval,
            with_stream=self.events_stream,
        )
        if self.env_create_table():
            recorder.create_table()
        return recorder

    def close(self) -> None:
        """Close the DynamoDB client."""
        self.connection.close()
