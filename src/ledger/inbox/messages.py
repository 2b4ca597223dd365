"""Inbound messages: what arrived, its type, and the idempotency key it carries.

A delivery (an SQS message, once or many times) is read into one or more
:class:`Envelope` values. Each has a ``key`` derived from the **message**,
never from the delivery, so every delivery of one message gives the same
key, and the keyed command a handler calls with it is applied once:

* **raw SQS**: ``sqs:{message id}`` (SQS keeps a message's id across its
  deliveries; a producer sending the same thing twice makes two messages);
* **EventBridge through an SQS target**: ``event:{source}:{detail.id}``,
  the integration event's own id (:func:`ledger.publishing.events.event_id`),
  the same on every publication of the event; EventBridge's envelope ``id``
  is new at each ``PutEvents`` and is not used;
* **S3 object events** (a notification to SQS, or ``Object Created`` through
  EventBridge): ``s3:{bucket}/{key}@{version id or etag}#{sequencer}``,
  one per change of the object (S3 always sends a sequencer; a record
  without one is keyed by the content alone);
* **Step Functions tasks** (a ``.waitForTaskToken`` message whose body holds
  ``taskToken``, ``type`` and ``input``): ``task:{execution}#{state}`` when
  the body names them (a task retried by the state machine gets a new token
  but is the same step), else ``task:{sha256 of the token}``.

Keys longer than :data:`MAX_KEY_LENGTH` are shortened to a SHA-256 of
themselves.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Final
from urllib.parse import unquote_plus

from pydantic import BaseModel, ConfigDict

from ledger.dynamodb.idempotency import MAX_KEY_LENGTH

__all__ = [
    "S3_OBJECT_CREATED",
    "Envelope",
    "InboundMessage",
    "S3ObjectCreated",
    "Source",
    "envelopes_of",
    "message_type_of",
]

S3_OBJECT_CREATED: Final = "aws.s3.ObjectCreated"
"""The type S3's object-created events are routed by."""
TYPE_ATTRIBUTE: Final = "type"
"""The SQS message attribute (or body field) naming a raw message's type."""


class Source(StrEnum):
    """Where a message came from (decides how its key is derived)."""

    SQS = "sqs"
    EVENTBRIDGE = "eventbridge"
    S3 = "s3"
    STEP_FUNCTIONS = "stepfunctions"


class InboundMessage(BaseModel):
    """Base of typed inbound messages: subclasses set ``message_type``.

    Integration events (:class:`~ledger.publishing.events.IntegrationEvent`)
    are inbound messages too, routed by their ``detail_type``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    message_type: ClassVar[str]
    """The type this message is routed by: the ``type`` message attribute
    (or body field) of a raw SQS message, a Step Functions task's ``type``,
    an EventBridge event's ``detail-type``."""
    class_version: ClassVar[int] = 1
    """The version of this model's shape; older shapes are upcast by static
    methods ``upcast_v1_v2(state)`` and so on, as domain events are."""
    versions: ClassVar[dict[str, int]] = {}
    """The message types this model takes, each with the version of its
    shape (``{"OrderPlaced.v1": 1, "OrderPlaced.v2": 2}``). Empty: only
    ``message_type``, at ``class_version``."""


class S3ObjectCreated(InboundMessage):
    """An object was written to S3 (one record of an S3 notification)."""

    message_type: ClassVar[str] = S3_OBJECT_CREATED

    bucket: str
    object_key: str
    version_id: str | None = None
    etag: str
    sequencer: str = ""
    size: int | None = None

    @property
    def identity(self) -> str:
        """The object's content at this name: bucket, key and etag.

        The same content written again under the same name has the same
        identity (an import of it places nothing new); other content, a
        new one. The etag is S3's hash of the content.
        """
        return f"{self.bucket}/{self.object_key}#{self.etag}"


def message_type_of(model: type[BaseModel]) -> str:
    """Return the type a message model is routed by."""
    for name in ("message_type", "detail_type"):
        value = getattr(model, name, None)
        if isinstance(value, str) and value:
            return value
    raise TypeError(
        f"{model.__qualname__} has no message type: subclass InboundMessage and "
        "set message_type, or route an IntegrationEvent (its detail_type)."
    )


@dataclass(frozen=True)
class Envelope:
    """One inbound message as delivered: its key, type and payload."""

    key: str
    """The idempotency key, derived from the message (see the module)."""
    type: str
    """The type it is routed by (empty when none could be read)."""
    body: Any
    """The payload its model is validated from (a JSON value)."""
    source: Source
    message_id: str
    """The SQS message id of this delivery (what a partial batch response names)."""
    raw: str = ""
    """The SQS body as received (hashed into dead letters)."""
    group_id: str = ""
    """The SQS FIFO message group ('' for a standard queue)."""
    task_token: str = ""
    """A Step Functions task's token ('' for other messages)."""
    event_source: str = ""
    """An EventBridge event's ``source`` ('' for other messages)."""
    problem: str = ""
    """Why the delivery could not be read ('' when it could): such an
    envelope is dead-lettered without a handler."""
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def body_sha256(self) -> str:
        """SHA-256 of the body as received."""
        return hashlib.sha256(self.raw.encode()).hexdigest()


def bounded(key: str) -> str:
    """Return ``key``, or a SHA-256 of it if it is too long to store."""
    if len(key.encode()) <= MAX_KEY_LENGTH:
        return key
    prefix = key.partition(":")[0]
    return f"{prefix}:sha256:{hashlib.sha256(key.encode()).hexdigest()}"


def envelopes_of(
    message_id: str,
    body: str,
    *,
    group_id: str = "",
    attributes: dict[str, str] | None = None,
) -> list[Envelope]:
    """Read one SQS message (any source, see the module) into its envelopes.

    ``attributes`` are the message's string attributes. An S3 notification
    may hold several records (one envelope each); S3's test event holds
    none. A body that cannot be read gives one envelope with a ``problem``.
    """
    attributes = attributes or {}
    common: dict[str, Any] = {
        "message_id": message_id,
        "raw": body,
        "group_id": group_id,
        "attributes": attributes,
    }
    try:
        decoded = json.loads(body)
    except ValueError:
        decoded = None
    if isinstance(decoded, dict):
        if "detail-type" in decoded and "detail" in decoded:
            return [_eventbridge(decoded, common)]
        if "Records" in decoded:
            return [_s3(record, common) for record in decoded["Records"]]
        if decoded.get("Event") == "s3:TestEvent":
            return []
        if "taskToken" in decoded:
            return [_task(decoded, common)]
    message_type = attributes.get(TYPE_ATTRIBUTE) or (
        decoded.get(TYPE_ATTRIBUTE) if isinstance(decoded, dict) else None
    )
    key = bounded(f"sqs:{message_id}")
    if not isinstance(decoded, dict):
        problem = "the body is not a JSON object"
    elif not isinstance(message_type, str) or not message_type:
        problem = (
            f"no type: give the message a {TYPE_ATTRIBUTE!r} string attribute "
            f"or a {TYPE_ATTRIBUTE!r} field"
        )
    else:
        problem = ""
    if isinstance(decoded, dict) and TYPE_ATTRIBUTE not in attributes:
        decoded = {k: v for k, v in decoded.items() if k != TYPE_ATTRIBUTE}
    return [
        Envelope(
            key=key,
            type=message_type if isinstance(message_type, str) else "",
            body=decoded,
            source=Source.SQS,
            problem=problem,
            **common,
        )
    ]


def _eventbridge(event: dict[str, Any], common: dict[str, Any]) -> Envelope:
    source = str(event.get("source", ""))
    detail_type = str(event["detail-type"])
    detail = event["detail"]
    if source == "aws.s3" and detail_type == "Object Created":
        return _s3_object(
            bucket=detail.get("bucket", {}).get("name"),
            obj=detail.get("object", {}),
            version_field="version-id",
            common=common,
        )
    event_id = detail.get("id") if isinstance(detail, dict) else None
    if not isinstance(event_id, str) or not event_id:
        return Envelope(
            key=bounded(f"sqs:{common['message_id']}"),
            type=detail_type,
            body=detail,
            source=Source.EVENTBRIDGE,
            problem=(
                "the event's detail has no 'id' to dedupe on (ledger's "
                "integration events carry one): nothing was applied"
            ),
            **common,
        )
    return Envelope(
        key=bounded(f"event:{source}:{event_id}"),
        type=detail_type,
        body=detail,
        source=Source.EVENTBRIDGE,
        event_source=source,
        **common,
    )


def _s3(record: Any, common: dict[str, Any]) -> Envelope:
    s3 = record.get("s3", {}) if isinstance(record, dict) else {}
    return _s3_object(
        bucket=s3.get("bucket", {}).get("name"),
        obj=s3.get("object", {}),
        version_field="versionId",
        common=common,
    )


def _s3_object(
    bucket: Any, obj: dict[str, Any], version_field: str, common: dict[str, Any]
) -> Envelope:
    # S3 notifications URL-encode object keys (spaces as '+').
    object_key = unquote_plus(str(obj.get("key", "")))
    etag = str(obj.get("eTag") or obj.get("etag") or "")
    version = obj.get(version_field) or None
    sequencer = str(obj.get("sequencer", ""))
    body = {
        "bucket": bucket,
        "object_key": object_key,
        "version_id": version,
        "etag": etag,
        "sequencer": sequencer,
        "size": obj.get("size"),
    }
    # A sequencer orders writes of one key; without one (moto's
    # notifications carry none) a write of the same content is the same key.
    problem = "" if bucket and object_key else "an S3 record without bucket or key"
    return Envelope(
        key=bounded(f"s3:{bucket}/{object_key}@{version or etag}#{sequencer}"),
        type=S3_OBJECT_CREATED,
        body=body,
        source=Source.S3,
        problem=problem,
        **common,
    )


def _task(body: dict[str, Any], common: dict[str, Any]) -> Envelope:
    token = str(body["taskToken"])
    execution, state = body.get("execution"), body.get("state")
    if isinstance(execution, str) and execution and isinstance(state, str) and state:
        key = f"task:{execution}#{state}"
    else:
        key = f"task:{hashlib.sha256(token.encode()).hexdigest()}"
    message_type = body.get("type")
    return Envelope(
        key=bounded(key),
        type=message_type if isinstance(message_type, str) else "",
        body=body.get("input", {}),
        source=Source.STEP_FUNCTIONS,
        task_token=token,
        problem=""
        if isinstance(message_type, str) and message_type
        else "a task without a 'type'",
        **common,
    )
