"""Dead letters that always fit their topic: the reason, where the record was, and its bytes (capped).

A record is dead-lettered with its original bytes so an operator can inspect and re-send it. Those bytes are capped
at `dead_letter_max_raw_bytes` (a prefix is kept, with the original size and the sha256 of all of it), so a letter
never exceeds the producer's request size or the DLQ topic's max.message.bytes, whatever the record's size:
`check_limits` (streams/limits.py) verifies at start-up that the cap, the producer and the topics agree.
"""

from __future__ import annotations

import base64
import hashlib
import time

from streams import codec
from streams.records import DeadLetter

# base64 grows 4/3; the error text (validation messages are short; cut at MAX_ERROR_CHARS), field names and numbers
# add the rest: a letter is at most max_raw * 4/3 + LETTER_OVERHEAD bytes.
MAX_ERROR_CHARS = 2_000
LETTER_OVERHEAD = 4_096


def max_letter_bytes(max_raw_bytes: int) -> int:
    return (max_raw_bytes + 2) // 3 * 4 + LETTER_OVERHEAD


def dead_letter(topic: str, partition: int, offset: int, raw: bytes | None, error: str, max_raw_bytes: int,
                origin: str | None = None, clock=time.time) -> bytes:
    data = raw or b""
    kept = data[:max_raw_bytes]
    if len(error) > MAX_ERROR_CHARS:
        error = error[:MAX_ERROR_CHARS] + f"... ({len(error) - MAX_ERROR_CHARS} more characters)"
    letter = DeadLetter(
        error=error, topic=topic, partition=partition, offset=offset,
        raw=base64.b64encode(kept).decode("ascii"), at=clock(), raw_size=len(data),
        raw_sha256=hashlib.sha256(data).hexdigest(), truncated=len(kept) < len(data), origin=origin,
    )
    return codec.dumps(letter)
