"""A deterministic corpus of bad interaction records: hypothesis-generated plus hand-written cases.

Every strategy here builds records that break the contract by construction (so the expectation "all of them
reach the DLQ" does not depend on the validator under test to decide what is bad).
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings, strategies as st

GOOD = {"event_id": "fz-0", "user_id": "fuzz-user", "item_id": "1", "ts": 881250949.0, "event_type": "rating",
        "value": 4.0}
ID_FIELDS = ("event_id", "user_id", "item_id", "event_type")

BadRecord = tuple[bytes | None, bytes]  # (key, value)


def _dump(obj: object) -> bytes:
    return json.dumps(obj).encode()


not_json_object = st.binary(min_size=1, max_size=300).filter(lambda b: not b.lstrip().startswith(b"{"))
wrong_type_for_id = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.none(),
                              st.lists(st.text(max_size=3), max_size=3), st.dictionaries(st.text(max_size=3),
                                                                                          st.integers(), max_size=2))
wrong_type_for_number = st.one_of(st.text(max_size=10), st.booleans(), st.lists(st.integers(), max_size=2),
                                  st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
absurd_ts = st.one_of(st.floats(max_value=631_151_999.0, allow_nan=False, allow_infinity=False),
                      st.floats(min_value=1e11, allow_nan=False, allow_infinity=False))


@st.composite
def bad_records(draw: st.DrawFn) -> BadRecord:
    kind = draw(st.sampled_from(["garbage", "array", "wrong_id", "wrong_ts", "wrong_value", "missing", "ts",
                                 "key"]))
    event = {**GOOD, "event_id": f"fz-{draw(st.integers(0, 10**9))}"}
    key: bytes | None = b"fuzz-user"
    if kind == "garbage":
        return key, draw(not_json_object)
    if kind == "array":
        return key, _dump(draw(st.lists(st.integers(), max_size=5)))
    if kind == "wrong_id":
        event[draw(st.sampled_from(ID_FIELDS))] = draw(wrong_type_for_id)
    elif kind == "wrong_ts":
        event["ts"] = draw(wrong_type_for_number)
    elif kind == "wrong_value":
        event["value"] = draw(wrong_type_for_number)
    elif kind == "missing":
        del event[draw(st.sampled_from([*ID_FIELDS, "ts"]))]
    elif kind == "ts":
        event["ts"] = draw(absurd_ts)
    elif kind == "key":
        key = draw(st.one_of(st.none(), st.binary(max_size=12).filter(lambda k: k != b"fuzz-user")))
    return key, _dump(event)


HAND_WRITTEN: list[BadRecord] = [
    (b"fuzz-user", b""),
    (b"fuzz-user", b"{"),
    (b"fuzz-user", b'{"event_id": "x"'),
    (b"fuzz-user", b"\xff\xfe\xfd"),
    (b"fuzz-user", b"null"),
    (b"fuzz-user", b'"just a string"'),
    (b"fuzz-user", _dump({**GOOD, "ts": "yesterday"})),
    (b"fuzz-user", _dump({**GOOD, "value": "five stars"})),
    (b"fuzz-user", _dump({**GOOD, "user_id": ""})),
    (b"fuzz-user", _dump({**GOOD, "item_id": "x" * 1000})),
    (b"fuzz-user", _dump({**GOOD, "ts": -86400})),
    (b"fuzz-user", _dump({**GOOD, "ts": 4102444800.0 * 10})),
    (b"fuzz-user", b'{"event_id":"n","user_id":"fuzz-user","item_id":"1","ts":Infinity,"event_type":"rating"}'),
    (b"fuzz-user", _dump({**GOOD, "padding": "p" * 40_000})),  # oversized
    (b"someone-else", _dump(GOOD)),
    (None, _dump(GOOD)),
]


def corpus(size: int, seed_examples: int = 700) -> list[BadRecord]:
    """`size` bad records: hand-written cases plus hypothesis examples (derandomized: the same every run)."""
    generated: list[BadRecord] = []

    @settings(max_examples=seed_examples, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(bad_records())
    def collect(record: BadRecord) -> None:
        generated.append(record)

    collect()
    records = HAND_WRITTEN + generated
    # Cycle through them (with distinct event ids where the payload is an object) to reach the wanted size.
    return [records[i % len(records)] for i in range(size)]
