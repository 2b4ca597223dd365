"""The inbox: inbound messages routed to handlers that call keyed commands.

An :class:`Inbox` maps message types to handlers. A handler takes the typed
message (a pydantic model) and the message's idempotency key, and calls an
application's keyed command with that key
(:func:`ledger.commands.keyed_command`)::

    inbox = Inbox("Warehouse", warehouse, refusals=(InventoryError,))

    @inbox.handles(OrderConfirmedV2)
    def reserve(event: OrderConfirmedV2, key: str) -> None:
        warehouse.reserve(event.order_id, {...}, idempotency_key=key)

The key is derived from the message, never from a delivery
(:mod:`ledger.inbox.messages`), and the command stores it in its own save's
transaction: a message delivered again, after a crash between the command
and the queue's delete, or twice at once, is applied once. The inbox itself
adds no DynamoDB call to a message that is applied.

Each message ends in one of three :class:`Outcome` values:

``applied``
    The handler returned (the command was applied now or before): the
    delivery is deleted from its queue.
``parked``
    Refused for good: the body is not a message, no handler takes its type,
    it fails validation, or the handler raised one of the inbox's
    ``refusals`` (the domain refused the command) or
    ``IdempotencyKeyReusedError``. It is stored as a dead letter
    (:mod:`ledger.inbox.schema`) and deleted from its queue; its neighbours
    go on.
``retry``
    Anything else (the store unavailable, a throttled call, an aggregate not
    there yet, a bug): the delivery stays in its queue and comes back after
    the visibility timeout (the queue's redrive policy moves it to the
    queue's own DLQ after ``maxReceiveCount``). Errors of the store
    (``OperationalError``, ``InterfaceError``, ``InternalError``, which
    include a write whose answer was lost) are first retried in the process
    after each of ``retry_delays``, with the same key.

A Step Functions task (:attr:`Envelope.task_token`) is answered instead:
``SendTaskSuccess`` with the handler's answer as output, or
``SendTaskFailure`` with a refusal's reason, once (see :meth:`Inbox.handle`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Final, TypeVar

import pydantic
import pydantic_core
from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    InternalError,
    OperationalError,
)
from eventsourcing.utils import Environment, strtobool

from ledger.commands import IdempotencyKeyReusedError
from ledger.domain import upcasters
from ledger.dynamodb import connection_of
from ledger.dynamodb.tables import ensure_table
from ledger.inbox import schema
from ledger.inbox.messages import Envelope, Source, message_type_of
from ledger.projections.deadletters import error_summary

__all__ = [
    "RETRIED_ERRORS",
    "DeadLetter",
    "Inbox",
    "Outcome",
]

logger = logging.getLogger(__name__)
"""Structured records (``extra=``): keys, types, outcomes; never message data."""

M = TypeVar("M", bound=pydantic.BaseModel)
Handler = Callable[[Any, str], Any]
"""A handler: (the typed message, its idempotency key) -> an answer."""

RETRIED_ERRORS: Final = (OperationalError, InterfaceError, InternalError)
"""Errors retried in the process, after each of ``retry_delays``: the store
failed, or a write's answer was lost (``AmbiguousWriteError``); the same key
makes the retry safe."""

CLOSED_TASK_ERRORS: Final = frozenset(
    {"TaskTimedOut", "InvalidToken", "TaskDoesNotExist"}
)
"""Step Functions' answers to a report on a token it no longer waits on: the
task was reported before (or timed out), so this report is not needed."""

MAX_CAUSE_LENGTH: Final = 32_768
"""Step Functions takes a cause of at most 32,768 characters."""


class Outcome(StrEnum):
    """How one message ended (see the module)."""

    APPLIED = "applied"
    PARKED = "parked"
    RETRY = "retry"


@dataclass(frozen=True)
class DeadLetter:
    """One message refused for good, as stored (see :mod:`ledger.inbox.schema`)."""

    key: str
    message_type: str
    source: str
    message_id: str
    group_id: str
    reason: str
    body_sha256: str
    dead_lettered_at: str
    body: str | None = None
    """The payload as JSON, when the inbox stores bodies (None otherwise)."""
    event_source: str = ""
    """An EventBridge event's ``source`` ('' for other messages)."""


@dataclass(frozen=True)
class _Route:
    model: type[pydantic.BaseModel]
    handler: Handler
    version: int
    """The model's version of messages of this type (their ``class_version``)."""


class RefusedError(Exception):
    """A message refused for good; ``reason`` says why (no message data)."""

    def __init__(self, reason: str, error_name: str = "Refused") -> None:
        super().__init__(reason)
        self.reason = reason
        self.error_name = error_name


class Inbox:
    """Routes inbound messages to handlers; parks those refused for good.

    ``application`` is any application on ledger's DynamoDB store: the
    inbox's table, ``{prefix}{name}_inbox``, is made on its connection.
    ``refusals`` are the exception classes by which the domain refuses a
    command (``OrderError``): a message whose handler raises one is parked,
    not retried. ``store_bodies``: keep each dead letter's payload, so
    ``redrive`` can handle it again; leave it off (the default) where
    payloads may hold secrets (then only a SHA-256 of the body is kept, and
    the message is replayed from its source: an EventBridge archive, the S3
    object). Settings come from ``env`` and ``os.environ``, each optionally
    prefixed with the upper-cased inbox name.
    """

    DYNAMODB_TABLE_PREFIX = "DYNAMODB_TABLE_PREFIX"
    """Prepended to the inbox's table name, as to the store's. Default: empty."""
    CREATE_TABLE = "CREATE_TABLE"
    """Create the inbox's table if missing. Default: yes."""
    INBOX_STORE_BODIES = "INBOX_STORE_BODIES"
    """Keep dead letters' payloads (see the class). Default: no."""

    retry_delays: ClassVar[tuple[float, ...]] = (0.1, 0.5, 2.0)
    """Seconds to wait before each in-process retry of a store error (see
    ``RETRIED_ERRORS``); after the last, the delivery is reported failed.
    Worst case per message: 2.6 s of waiting, 4 attempts."""

    def __init__(
        self,
        name: str,
        application: Any,
        *,
        refusals: Iterable[type[Exception]] = (),
        store_bodies: bool | None = None,
        env: Mapping[str, str] | None = None,
        retry_delays: Sequence[float] | None = None,
        stepfunctions_client: Any = None,
        schemas: Path | None = None,
    ) -> None:
        if not name:
            raise TypeError("An inbox needs a name (its table is named after it)")
        if schemas is not None and not Path(schemas).is_dir():
            # A missing folder would otherwise skip every check without a
            # word, as in a deployment package built without it.
            raise FileNotFoundError(
                f"The inbox {name!r} was given schemas={str(schemas)!r}, which is "
                "not a folder. Ship the publishers' schema files with the code "
                "(deploy/README.md, step 1), or make the inbox without schemas=."
            )
        self.name = name
        self.application = application
        self.connection = connection_of(application)
        environment = Environment(name, {**os.environ, **(env or {})})
        prefix = environment.get(self.DYNAMODB_TABLE_PREFIX) or ""
        self.table_name = f"{prefix}{name}_inbox"
        if strtobool(environment.get(self.CREATE_TABLE) or "yes"):
            ensure_table(self.connection, schema.table_definition(self.table_name))
        self.refusals: tuple[type[Exception], ...] = (
            *tuple(refusals),
            IdempotencyKeyReusedError,
        )
        self.store_bodies = (
            strtobool(environment.get(self.INBOX_STORE_BODIES) or "no")
            if store_bodies is None
            else store_bodies
        )
        self.delays: tuple[float, ...] = (
            self.retry_delays if retry_delays is None else tuple(retry_delays)
        )
        self._stepfunctions = stepfunctions_client
        self.schemas = schemas
        """The folder of the publishers' JSON Schema files
        (``{source}/{detail-type}.json``): an EventBridge event is validated
        against its file, if there is one, before upcasting. None: no
        validation but the models'. Needs ``jsonschema``."""
        self._validators: dict[Path, Any] = {}
        self.routes: dict[str, _Route] = {}
        self.sleep: Callable[[float], None] = time.sleep

    # Routing ---------------------------------------------------------------------

    def handles(
        self, model: type[M]
    ) -> Callable[[Callable[[M, str], Any]], Callable[[M, str], Any]]:
        """Register the decorated function as the handler of ``model``'s type."""

        def register(handler: Callable[[M, str], Any]) -> Callable[[M, str], Any]:
            self.route(model, handler)
            return handler

        return register

    def route(self, model: type[M], handler: Callable[[M, str], Any]) -> None:
        """Send messages of ``model``'s type(s) to ``handler(message, key)``.

        A model with ``versions`` (a mapping of message types to the
        ``class_version`` of their shape, ``{"OrderPlaced.v1": 1,
        "OrderPlaced.v2": 2}``) takes each of those types; a message of an
        older shape is upcast by the model's ``upcast_vN_vN+1`` static
        methods (:func:`ledger.domain.upcasters`, as stored domain events
        are) before it is validated.
        """
        versions = getattr(model, "versions", None) or {
            message_type_of(model): getattr(model, "class_version", 1)
        }
        chain = upcasters(model)  # refuses a model whose chain has a gap now
        for message_type, version in versions.items():
            if not 1 <= version <= len(chain) + 1:
                raise TypeError(
                    f"{model.__qualname__} takes {message_type!r} as version "
                    f"{version}, outside its class_version 1..{len(chain) + 1}"
                )
            if message_type in self.routes:
                raise TypeError(f"Inbox {self.name!r} already routes {message_type!r}")
            self.routes[message_type] = _Route(model, handler, version)

    # Handling --------------------------------------------------------------------

    def handle(self, envelope: Envelope) -> Outcome:
        """Handle one message; return how it ended (see the module).

        A Step Functions task's outcome (the handler's answer, or a refusal)
        is stored under the key before it is reported, and marked reported
        after: a task delivered again reports the stored outcome if it was
        not reported yet, and nothing if it was. A report Step Functions
        refuses because the token is closed (``TaskTimedOut``,
        ``InvalidToken``) counts as reported.
        """
        if envelope.task_token:
            return self._handle_task(envelope)
        try:
            self.apply(envelope)
        except RefusedError as refused:
            return self._park(envelope, refused.reason)
        except Exception as error:  # noqa: BLE001 - anything else comes back later
            _log(self.name, envelope, Outcome.RETRY, error_summary(error))
            return Outcome.RETRY
        _log(self.name, envelope, Outcome.APPLIED)
        return Outcome.APPLIED

    def apply(self, envelope: Envelope) -> Any:
        """Validate a message and run its handler; return the handler's answer.

        Raises :class:`RefusedError` for a message refused for good; store
        errors are retried here first (see ``RETRIED_ERRORS``).
        """
        if envelope.problem:
            raise RefusedError(envelope.problem, "UnreadableMessage")
        route = self.routes.get(envelope.type)
        if route is None:
            raise RefusedError(
                f"no handler for type {envelope.type!r} in inbox {self.name!r}",
                "UnknownMessageType",
            )
        body = envelope.body
        self._check_schema(envelope)
        chain = upcasters(route.model)[route.version - 1 :]
        if chain and isinstance(body, dict):
            body = copy.deepcopy(body)
            for upcast in chain:
                upcast(body)
        try:
            message = route.model.model_validate(body)
        except pydantic.ValidationError as invalid:
            raise RefusedError(validation_reason(invalid), "ValidationError") from None
        for delay in (*self.delays, None):
            try:
                return route.handler(message, envelope.key)
            except self.refusals as refused:
                raise RefusedError(
                    error_summary(refused), type(refused).__name__
                ) from refused
            except RETRIED_ERRORS as error:
                if delay is None:
                    raise
                logger.info(
                    "inbox retry",
                    extra={
                        "inbox": self.name,
                        "key": envelope.key,
                        "error": error_summary(error),
                        "delay": delay,
                    },
                )
                self.sleep(delay)
        raise AssertionError  # pragma: no cover - the loop returns or raises

    def _check_schema(self, envelope: Envelope) -> None:
        if self.schemas is None or not envelope.event_source:
            return
        path = self.schemas / envelope.event_source / f"{envelope.type}.json"
        validator = self._validators.get(path)
        if validator is None:
            if not path.is_file():
                return
            try:
                import jsonschema  # type: ignore[import-untyped]  # noqa: PLC0415
            except ImportError as missing:
                raise ImportError(
                    "Validating inbound events against schema files needs "
                    "jsonschema: pip install jsonschema (or make the inbox "
                    "without schemas=)."
                ) from missing
            document = json.loads(path.read_text())
            validator = jsonschema.Draft202012Validator(
                document, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
            )
            self._validators[path] = validator
        problems = [
            f"{'.'.join(str(p) for p in error.absolute_path) or '(detail)'}: "
            f"{error.validator}"
            for error in validator.iter_errors(envelope.body)
        ]
        if problems:
            raise RefusedError(
                f"not {envelope.type} as its schema file says: " + "; ".join(problems),
                "SchemaValidationError",
            )

    def handle_batch(self, envelopes: Sequence[Sequence[Envelope]]) -> list[str]:
        """Handle the messages of a batch in order; return the ids not done.

        ``envelopes`` holds each SQS message's envelopes, in the batch's
        order. A message is done when each of its envelopes was applied or
        parked. In a FIFO queue (envelopes with a ``group_id``), once a
        message of a group is not done, the later messages of that group in
        the batch are not handled and are reported not done either: they
        come back after it, in order.
        """
        failed: list[str] = []
        blocked: set[str] = set()
        for message in envelopes:
            if not message:  # S3's test event: nothing to apply; deleted
                continue
            first = message[0]
            if first.group_id and first.group_id in blocked:
                failed.append(first.message_id)
                continue
            outcomes = [self.handle(envelope) for envelope in message]
            if Outcome.RETRY in outcomes:
                failed.append(first.message_id)
                if first.group_id:
                    blocked.add(first.group_id)
        return failed

    # Dead letters ----------------------------------------------------------------

    def _park(self, envelope: Envelope, reason: str) -> Outcome:
        try:
            self.store_dead_letter(envelope, reason)
        except Exception as error:  # noqa: BLE001 - not stored: it comes back later
            _log(self.name, envelope, Outcome.RETRY, error_summary(error))
            return Outcome.RETRY
        _log(self.name, envelope, Outcome.PARKED, reason)
        return Outcome.PARKED

    def store_dead_letter(self, envelope: Envelope, reason: str) -> None:
        """Store (or replace) the dead letter of a message refused for good."""
        item: dict[str, Any] = {
            schema.KIND: {"S": schema.DEAD_LETTER},
            schema.KEY: {"S": envelope.key},
            schema.MESSAGE_TYPE: {"S": envelope.type},
            schema.SOURCE: {"S": envelope.source.value},
            schema.EVENT_SOURCE: {"S": envelope.event_source},
            schema.MESSAGE_ID: {"S": envelope.message_id},
            schema.GROUP_ID: {"S": envelope.group_id},
            schema.REASON: {"S": reason},
            schema.BODY_SHA256: {"S": envelope.body_sha256},
            schema.DEAD_LETTERED_AT: {"S": datetime.now(UTC).isoformat()},
        }
        if self.store_bodies:
            item[schema.BODY] = {"S": json.dumps(envelope.body)}
        self.connection.call("put_item", TableName=self.table_name, Item=item)

    def dead_letters(self, limit: int | None = None) -> list[DeadLetter]:
        """Return the dead letters, by key (one Query per 1 MB)."""
        letters: list[DeadLetter] = []
        for item in self.connection.items(
            "query",
            TableName=self.table_name,
            KeyConditionExpression="#kind = :kind",
            ExpressionAttributeNames={"#kind": schema.KIND},
            ExpressionAttributeValues={":kind": {"S": schema.DEAD_LETTER}},
            ConsistentRead=True,
        ):
            letters.append(dead_letter_of(item))
            if limit is not None and len(letters) >= limit:
                break
        return letters

    def redrive(self, keys: Iterable[str] | None = None) -> dict[str, str]:
        """Handle dead letters again (all, or those of ``keys``); return each outcome.

        Outcomes: ``applied`` (the letter is deleted), ``parked`` (refused
        again: the letter stays, with the new reason), ``retry`` (it stays),
        ``no body`` (stored without its payload: replay the message from its
        source, then purge the letter), ``missing`` (no such letter). The
        message keeps its key, so a command applied meanwhile is not applied
        again.
        """
        letters = {letter.key: letter for letter in self.dead_letters()}
        outcomes: dict[str, str] = {}
        for key in letters if keys is None else keys:
            letter = letters.get(key)
            if letter is None:
                outcomes[key] = "missing"
            elif letter.body is None:
                outcomes[key] = "no body"
            else:
                outcomes[key] = self._redrive(letter, letter.body).value
        return outcomes

    def _redrive(self, letter: DeadLetter, body: str) -> Outcome:
        envelope = Envelope(
            key=letter.key,
            type=letter.message_type,
            body=json.loads(body),
            source=Source(letter.source),
            message_id=letter.message_id,
            group_id=letter.group_id,
            event_source=letter.event_source,
        )
        outcome = self.handle(envelope)
        if outcome is Outcome.APPLIED:
            self.purge([letter.key])
        return outcome

    def purge(self, keys: Iterable[str] | None = None) -> list[str]:
        """Delete dead letters (all, or those of ``keys``); return the keys deleted.

        A key with no dead letter is skipped. One Query, then one DeleteItem
        per letter.
        """
        stored = [letter.key for letter in self.dead_letters()]
        chosen = stored if keys is None else [key for key in keys if key in stored]
        for key in chosen:
            self.connection.call(
                "delete_item",
                TableName=self.table_name,
                Key={schema.KIND: {"S": schema.DEAD_LETTER}, schema.KEY: {"S": key}},
            )
        return chosen

    # Step Functions tasks ----------------------------------------------------------

    @property
    def stepfunctions(self) -> Any:
        """The Step Functions client tasks are reported with (boto3's resolution)."""
        if self._stepfunctions is None:
            import boto3  # noqa: PLC0415 - only inboxes that take tasks need it

            self._stepfunctions = boto3.client(
                "stepfunctions", region_name=self.connection.region_name
            )
        return self._stepfunctions

    def _handle_task(self, envelope: Envelope) -> Outcome:
        key = {schema.KIND: {"S": schema.TASK}, schema.KEY: {"S": envelope.key}}
        try:
            stored = self.connection.call(
                "get_item", TableName=self.table_name, Key=key, ConsistentRead=True
            ).get("Item")
            if stored is not None and stored.get(schema.REPORTED, {}).get("BOOL"):
                _log(self.name, envelope, Outcome.APPLIED, "reported before")
                return Outcome.APPLIED
            if stored is None:
                stored = self._decide_task(envelope, key)
            self._report(envelope.task_token, stored)
            self.connection.call(
                "update_item",
                TableName=self.table_name,
                Key=key,
                UpdateExpression="SET #reported = :yes",
                ExpressionAttributeNames={"#reported": schema.REPORTED},
                ExpressionAttributeValues={":yes": {"BOOL": True}},
            )
        except Exception as error:  # noqa: BLE001 - not reported: it comes back
            _log(self.name, envelope, Outcome.RETRY, error_summary(error))
            return Outcome.RETRY
        _log(self.name, envelope, Outcome.APPLIED, stored[schema.OUTCOME]["S"])
        return Outcome.APPLIED

    def _decide_task(self, envelope: Envelope, key: dict[str, Any]) -> dict[str, Any]:
        item: dict[str, Any] = dict(key)
        try:
            answer = self.apply(envelope)
        except RefusedError as refused:
            item[schema.OUTCOME] = {"S": "failure"}
            item[schema.ERROR] = {"S": refused.error_name}
            item[schema.CAUSE] = {"S": refused.reason[:MAX_CAUSE_LENGTH]}
        else:
            output = json.dumps(pydantic_core.to_jsonable_python(answer))
            item[schema.OUTCOME] = {"S": "success"}
            item[schema.OUTPUT] = {"S": output}
        item[schema.REPORTED] = {"BOOL": False}
        try:
            self.connection.call(
                "put_item",
                TableName=self.table_name,
                Item=item,
                ConditionExpression="attribute_not_exists(#key)",
                ExpressionAttributeNames={"#key": schema.KEY},
            )
        except IntegrityError:
            # A twin delivery stored its outcome first: report that one.
            first: dict[str, Any] = self.connection.call(
                "get_item", TableName=self.table_name, Key=key, ConsistentRead=True
            )["Item"]
            return first
        return item

    def _report(self, token: str, stored: Mapping[str, Any]) -> None:
        import botocore.exceptions  # noqa: PLC0415 - only tasks need it

        try:
            if stored[schema.OUTCOME]["S"] == "success":
                self.stepfunctions.send_task_success(
                    taskToken=token, output=stored[schema.OUTPUT]["S"]
                )
            else:
                self.stepfunctions.send_task_failure(
                    taskToken=token,
                    error=stored[schema.ERROR]["S"],
                    cause=stored[schema.CAUSE]["S"],
                )
        except botocore.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") not in CLOSED_TASK_ERRORS:
                raise


def validation_reason(invalid: pydantic.ValidationError) -> str:
    """Describe a validation failure by field and error type, never the input."""
    problems = [
        f"{'.'.join(str(part) for part in error['loc']) or '(message)'}: "
        f"{error['type']}"
        for error in invalid.errors(include_input=False, include_url=False)
    ]
    return f"ValidationError of {invalid.title}: " + "; ".join(problems)


def dead_letter_of(item: Mapping[str, Any]) -> DeadLetter:
    """Return the dead letter a stored item holds."""
    body = item.get(schema.BODY)
    return DeadLetter(
        key=item[schema.KEY]["S"],
        message_type=item[schema.MESSAGE_TYPE]["S"],
        source=item[schema.SOURCE]["S"],
        message_id=item[schema.MESSAGE_ID]["S"],
        group_id=item[schema.GROUP_ID]["S"],
        reason=item[schema.REASON]["S"],
        body_sha256=item[schema.BODY_SHA256]["S"],
        dead_lettered_at=item[schema.DEAD_LETTERED_AT]["S"],
        body=None if body is None else body["S"],
        event_source=item.get(schema.EVENT_SOURCE, {}).get("S", ""),
    )


def _log(name: str, envelope: Envelope, outcome: Outcome, why: str = "") -> None:
    level = logging.WARNING if outcome is not Outcome.APPLIED else logging.DEBUG
    logger.log(
        level,
        "inbox %s",
        outcome.value,
        extra={
            "inbox": name,
            "key": envelope.key,
            "message_type": envelope.type,
            "message_id": envelope.message_id,
            "outcome": outcome.value,
            "why": why,
        },
    )
