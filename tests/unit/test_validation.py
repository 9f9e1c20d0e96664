import json
import math

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from streams.records import InteractionEvent
from streams.settings import Settings
from streams.validation import REJECTION_CODES, EventValidator, Rejection

NOW = 1_800_000_000.0
GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "ts": 881250949.0, "event_type": "rating", "value": 4.0}


def make_validator() -> EventValidator:
    return EventValidator(Settings(max_event_bytes=1024), clock=lambda: NOW)


@pytest.fixture
def validator() -> EventValidator:
    return make_validator()


SHARED = make_validator()  # hypothesis tests reuse one validator: it holds no state between calls


def encode(obj) -> bytes:
    # stdlib json writes what any producer might (huge integers, too): more than orjson would emit
    return json.dumps(obj).encode()


def test_good_event_is_accepted(validator):
    result = validator.validate(b"u1", encode(GOOD))
    assert result == InteractionEvent("e1", "u1", "i1", 881250949.0, "rating", 4.0)


def test_null_value_and_int_timestamp_are_accepted(validator):
    result = validator.validate(b"u1", encode({**GOOD, "value": None, "ts": 881250949, "event_type": "view"}))
    assert isinstance(result, InteractionEvent)
    assert result.value is None and result.ts == 881250949.0


def test_unknown_fields_are_ignored_for_forward_compatibility(validator):
    assert isinstance(validator.validate(b"u1", encode({**GOOD, "device": "tv"})), InteractionEvent)


@pytest.mark.parametrize(
    ("key", "raw", "code"),
    [
        (b"u1", b"{not json", "malformed_json"),
        (b"u1", b"\xff\xfe\x00", "malformed_json"),
        (b"u1", None, "malformed_json"),
        (b"u1", b"", "malformed_json"),
        (b"u1", b"[1, 2]", "not_an_object"),
        (b"u1", b"42", "not_an_object"),
        (b"u1", b"null", "not_an_object"),
        (b"u1", encode({k: v for k, v in GOOD.items() if k != "item_id"}), "missing_field"),
        (b"u1", encode({k: v for k, v in GOOD.items() if k != "ts"}), "missing_field"),
        (b"u1", encode({**GOOD, "user_id": 1}), "wrong_type"),
        (b"u1", encode({**GOOD, "ts": "881250949"}), "wrong_type"),
        (b"u1", encode({**GOOD, "ts": True}), "wrong_type"),
        (b"u1", encode({**GOOD, "value": "4"}), "wrong_type"),
        (b"u1", encode({**GOOD, "value": [4]}), "wrong_type"),
        (b"u1", encode({**GOOD, "event_id": ""}), "bad_value"),
        (b"u1", encode({**GOOD, "item_id": "   "}), "bad_value"),
        (b"u1", encode({**GOOD, "item_id": "x" * 300}), "bad_value"),
        (b"u1", encode({**GOOD, "ts": -1}), "absurd_timestamp"),
        (b"u1", encode({**GOOD, "ts": 0}), "absurd_timestamp"),
        (b"u1", encode({**GOOD, "ts": NOW + 10 * 86_400}), "absurd_timestamp"),
        (b"u1", encode({**GOOD, "ts": 1e300}), "absurd_timestamp"),
        (b"u1", b'{"event_id":"e","user_id":"u1","item_id":"i","ts":NaN,"event_type":"rating"}', "malformed_json"),
        (b"u2", encode(GOOD), "key_mismatch"),
        (None, encode(GOOD), "key_mismatch"),
        (b"u1", encode({**GOOD, "pad": "x" * 2000}), "oversized"),
    ],
)
def test_bad_input_is_rejected_with_its_reason(validator, key, raw, code):
    result = validator.validate(key, raw)
    assert isinstance(result, Rejection), result
    assert result.code == code
    assert result.message  # a human-readable reason goes to the DLQ


ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@hsettings(max_examples=400, deadline=None)
@given(key=st.one_of(st.none(), st.binary(max_size=12)), raw=st.binary(max_size=1200))
def test_arbitrary_bytes_never_raise(key, raw):
    result = SHARED.validate(key, raw)
    assert isinstance(result, (InteractionEvent, Rejection))


@hsettings(max_examples=400, deadline=None)
@given(field=st.sampled_from(sorted(GOOD)), replacement=ANY_JSON)
def test_mutated_fields_give_a_valid_event_or_a_known_reason(field, replacement):
    result = SHARED.validate(b"u1", encode({**GOOD, field: replacement}))
    if isinstance(result, Rejection):
        assert result.code in REJECTION_CODES
    else:
        # Whatever got through must satisfy the contract's types.
        assert all(isinstance(getattr(result, name), str) and getattr(result, name) for name in
                   ("event_id", "user_id", "item_id", "event_type"))
        assert math.isfinite(result.ts)
        assert result.value is None or math.isfinite(result.value)


def _field_values():
    from hypothesis import strategies as st

    return st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                     st.text(max_size=3), st.just(" "), st.just("u1"), st.text(min_size=257, max_size=258),
                     st.floats(min_value=631_152_000.0, max_value=1.7e9))


def test_the_fast_path_decides_exactly_as_the_field_by_field_checks():
    from hypothesis import given, settings as hsettings, strategies as st

    from streams.settings import Settings
    from streams.validation import EventValidator

    validator = EventValidator(Settings(), clock=lambda: 1.7e9)
    names = ("event_id", "user_id", "item_id", "ts", "event_type", "value")

    @hsettings(max_examples=800, deadline=None)
    @given(st.dictionaries(st.sampled_from(names), _field_values(), min_size=4), st.sampled_from([b"u1", None, b"x"]))
    def check(obj, key):
        assert validator._check_fields(key, obj) == validator._explain(key, obj)

    check()
