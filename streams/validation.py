"""Validation of incoming interaction events: the hot path of ingestion, so it is plain Python over orjson.

A rejected event is never dropped silently: the caller sends it to the dead-letter topic with the reason
returned here. `Rejection.code` is a small fixed vocabulary so it can label a Prometheus counter.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from streams.records import InteractionEvent, RecommendationRequest
from streams.settings import Settings

MAX_ID_LENGTH = 256
MAX_EVENT_TYPE_LENGTH = 64
_ID_FIELDS = ("event_id", "user_id", "item_id")

REJECTION_CODES = (
    "oversized",
    "malformed_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "bad_value",
    "absurd_timestamp",
    "key_mismatch",
)


@dataclass(frozen=True, slots=True)
class Rejection:
    code: str  # one of REJECTION_CODES
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class EventValidator:
    """Turns (key, raw bytes) into an InteractionEvent or a Rejection explaining what is wrong."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self._max_bytes = settings.max_event_bytes
        self._min_ts = settings.min_event_ts
        self._max_future_skew = settings.max_future_skew_s
        self._clock = clock

    def validate(self, key: bytes | None, raw: bytes | None) -> InteractionEvent | Rejection:
        obj = decode_object(raw, self._max_bytes, "an event")
        return obj if isinstance(obj, Rejection) else self._check_fields(key, obj)

    def _check_fields(self, key: bytes | None, obj: dict) -> InteractionEvent | Rejection:
        # The hot path: one expression for a well-formed event. Anything it does not accept goes through the
        # field-by-field checks below, which say exactly what is wrong (NaN and infinity fail the comparisons).
        get = obj.get
        event_id, user_id, item_id, ts, event_type, value = (get("event_id"), get("user_id"), get("item_id"),
                                                             get("ts"), get("event_type"), get("value"))
        if (type(event_id) is str and type(user_id) is str and type(item_id) is str and type(event_type) is str
                and 0 < len(event_id) <= MAX_ID_LENGTH and 0 < len(user_id) <= MAX_ID_LENGTH
                and 0 < len(item_id) <= MAX_ID_LENGTH and 0 < len(event_type) <= MAX_EVENT_TYPE_LENGTH
                and not (event_id.isspace() or user_id.isspace() or item_id.isspace() or event_type.isspace())
                and type(ts) in (int, float) and self._min_ts <= ts <= self._clock() + self._max_future_skew
                and (value is None or (type(value) in (int, float) and -math.inf < value < math.inf))
                and key is not None and key == user_id.encode()):
            return InteractionEvent(event_id, user_id, item_id, float(ts), event_type,
                                    None if value is None else float(value))
        return self._explain(key, obj)

    def _explain(self, key: bytes | None, obj: dict) -> InteractionEvent | Rejection:
        for name in (*_ID_FIELDS, "ts", "event_type"):
            if name not in obj:
                return Rejection("missing_field", f"required field '{name}' is missing")
        for name in _ID_FIELDS:
            problem = _check_string(name, obj[name], MAX_ID_LENGTH)
            if problem:
                return problem
        problem = _check_string("event_type", obj["event_type"], MAX_EVENT_TYPE_LENGTH)
        if problem:
            return problem

        ts = obj["ts"]
        if type(ts) not in (int, float):  # bool is a subclass of int: excluded by the exact type check
            return Rejection("wrong_type", f"'ts' must be a number (seconds since the epoch), got {_json_type(ts)}")
        if not math.isfinite(ts):
            return Rejection("absurd_timestamp", f"'ts' is not finite: {ts}")
        if ts < self._min_ts:
            return Rejection("absurd_timestamp", f"'ts' {ts} is before the earliest accepted time {self._min_ts}")
        latest = self._clock() + self._max_future_skew
        if ts > latest:
            return Rejection("absurd_timestamp", f"'ts' {ts} is more than {self._max_future_skew:.0f}s in the future")

        value = obj.get("value")
        if value is not None:
            if type(value) not in (int, float):
                return Rejection("wrong_type", f"'value' must be a number or null, got {_json_type(value)}")
            if not math.isfinite(value):
                return Rejection("bad_value", f"'value' is not finite: {value}")

        user_id = obj["user_id"]
        # Per-user state lives on the partition the key hashes to: an event keyed otherwise would split it.
        if key is None or key.decode("utf-8", "replace") != user_id:
            shown = None if key is None else key[:80].decode("utf-8", "replace")
            return Rejection("key_mismatch", f"record key {shown!r} must equal user_id {user_id[:80]!r}")

        return InteractionEvent(
            event_id=obj["event_id"],
            user_id=user_id,
            item_id=obj["item_id"],
            ts=float(ts),
            event_type=obj["event_type"],
            value=None if value is None else float(value),
        )


def decode_object(raw: bytes | None, max_bytes: int, what: str) -> dict | Rejection:
    """The JSON object in a record value, or why there is none (tombstone, oversized, not JSON, not an object)."""
    if raw is None:
        return Rejection("malformed_json", f"empty record value (tombstone); {what} must be a JSON object")
    if len(raw) > max_bytes:
        return Rejection("oversized", f"payload is {len(raw)} bytes, limit is {max_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Rejection("malformed_json", f"not valid UTF-8 JSON: {exc}")
    if type(obj) is not dict:
        return Rejection("not_an_object", f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def _check_string(name: str, value: object, max_length: int) -> Rejection | None:
    if type(value) is not str:
        return Rejection("wrong_type", f"'{name}' must be a string, got {_json_type(value)}")
    if not value or value.isspace():
        return Rejection("bad_value", f"'{name}' must not be empty")
    if len(value) > max_length:
        return Rejection("bad_value", f"'{name}' is {len(value)} characters, limit is {max_length}")
    return None


def _json_type(value: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
            int: "number", float: "number"}.get(type(value), type(value).__name__)


MAX_K = 100


def validate_request(key: bytes | None, raw: bytes | None, max_bytes: int = 16_384
                     ) -> RecommendationRequest | Rejection:
    """A recommendation request (contract: request_id, user_id, ts, k) or the reason it cannot be served."""
    obj = decode_object(raw, max_bytes, "a request")
    if isinstance(obj, Rejection):
        return obj
    for name in ("request_id", "user_id"):
        if name not in obj:
            return Rejection("missing_field", f"required field '{name}' is missing")
        problem = _check_string(name, obj[name], MAX_ID_LENGTH)
        if problem:
            return problem
    ts = obj.get("ts", 0.0)
    if type(ts) not in (int, float) or not math.isfinite(ts):
        return Rejection("wrong_type", f"'ts' must be a finite number, got {_json_type(ts)}")
    k = obj.get("k", 10)
    if type(k) is not int:
        return Rejection("wrong_type", f"'k' must be an integer, got {_json_type(k)}")
    if not 1 <= k <= MAX_K:
        return Rejection("bad_value", f"'k' must be between 1 and {MAX_K}, got {k}")
    user_id = obj["user_id"]
    if key is None or key.decode("utf-8", "replace") != user_id:
        shown = None if key is None else key[:80].decode("utf-8", "replace")
        return Rejection("key_mismatch", f"record key {shown!r} must equal user_id {user_id[:80]!r} (requests are "
                                         "served where the user's state is: on the user's partition)")
    return RecommendationRequest(request_id=obj["request_id"], user_id=user_id, ts=float(ts), k=k)
