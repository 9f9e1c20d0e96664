import pytest
from confluent_kafka import KafkaError, KafkaException

from streams.offsets import retry_retriable


def test_retriable_kafka_errors_are_retried_until_the_call_succeeds():
    attempts = []

    def call():
        attempts.append(1)
        if len(attempts) < 3:
            raise KafkaException(KafkaError(KafkaError.NOT_COORDINATOR, retriable=True))
        return "committed"

    assert retry_retriable(call, timeout_s=10) == "committed"
    assert len(attempts) == 3


def test_non_retriable_errors_surface_at_once():
    attempts = []

    def call():
        attempts.append(1)
        raise KafkaException(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED))

    with pytest.raises(KafkaException):
        retry_retriable(call, timeout_s=10)
    assert len(attempts) == 1


def test_retries_stop_at_the_deadline():
    def call():
        raise KafkaException(KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS, retriable=True))

    with pytest.raises(KafkaException):
        retry_retriable(call, timeout_s=0.3)


def test_coordinator_not_ready_is_retried_even_when_not_flagged_retriable():
    """As librdkafka raised it in CI from committed() on a just-started broker."""
    attempts = []

    def call():
        attempts.append(1)
        if len(attempts) < 3:
            raise KafkaException(KafkaError(KafkaError.NOT_COORDINATOR, "Failed to get committed offsets",
                                            retriable=False))
        return "committed"

    assert retry_retriable(call, timeout_s=10) == "committed"
    assert len(attempts) == 3
