"""Shared fixtures. Integration tests talk to a real Kafka broker: the one at EXPLORER_KAFKA_BOOTSTRAP if it
answers (scripts/test.sh and .ci/run start it), otherwise a local broker started here and stopped afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from streams.settings import Settings


def _broker_answers(settings: Settings) -> bool:
    from confluent_kafka.admin import AdminClient

    from streams.kafka_config import confluent_config

    try:
        AdminClient(confluent_config(settings)).list_topics(timeout=5)
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_settings() -> Iterator[Settings]:
    settings = Settings()
    if _broker_answers(settings):
        yield settings
        return
    from infra.broker import LocalBroker

    broker = LocalBroker(settings)
    broker.ensure_distribution()
    broker.start()
    try:
        yield settings
    finally:
        broker.stop()


@pytest.fixture
def isolated_settings(kafka_settings: Settings, tmp_path) -> Iterator[Settings]:
    """Settings with their own topic prefix, app id and data dir, so tests never see each other's records. Their
    topics are deleted afterwards: left on the broker, a few runs of the suite leave thousands of partitions, and a
    local broker then needs minutes to start."""
    from streams.topics import create_topics, delete_deployment_topics

    from tests.harness import free_port

    tag = uuid.uuid4().hex[:10]
    settings = kafka_settings.model_copy(update={
        "topic_prefix": f"test-{tag}.",
        "app_id": f"explorer-test-{tag}",
        "data_dir": tmp_path / "data",
        "web_port": free_port(),
        "interactions_partitions": 4,
    })
    create_topics(settings)
    yield settings
    delete_deployment_topics(settings)


@pytest.fixture
def topics_deleted_after(kafka_settings: Settings) -> Iterator[list[Settings]]:
    """Settings of deployments a test makes itself (beside `isolated_settings`): appended here, their topics are
    deleted when the test ends."""
    from streams.topics import delete_deployment_topics

    made: list[Settings] = []
    yield made
    for settings in made:
        delete_deployment_topics(settings)


@pytest.fixture(scope="session")
def movielens_dir():
    """The MovieLens-100k files, fetched once into the default data dir and shared by every test."""
    from streams.movielens import dataset_dir

    return dataset_dir(Settings())


@pytest.fixture(scope="session")
def clusters_data_dir(tmp_path_factory, movielens_dir):
    """A data dir with interest clusters built once for the session (MovieLens-100k, default settings)."""
    from models.clusters import build_clusters

    data_dir = tmp_path_factory.mktemp("clusters-data")
    build_clusters(Settings(data_dir=data_dir, movielens_dir=movielens_dir))
    return data_dir


@pytest.fixture(scope="session")
def serving_data_dir(tmp_path_factory, clusters_data_dir, movielens_dir):
    """Clusters plus a quickly trained sequence model (3 epochs): what a worker needs to serve recommendations."""
    import shutil

    from models.sequence import train_and_save

    data_dir = tmp_path_factory.mktemp("serving-data")
    shutil.copytree(clusters_data_dir / "clusters", data_dir / "clusters")
    train_and_save(Settings(data_dir=data_dir, movielens_dir=movielens_dir, sequence_max_epochs=3,
                            sequence_budget_s=60.0), progress=False)
    return data_dir


@pytest.fixture
def serving_settings(isolated_settings, serving_data_dir, movielens_dir) -> Settings:
    """Isolated settings over a private copy of the serving data (clusters, sequence model; no LanceDB yet)."""
    import shutil

    data_dir = isolated_settings.data_dir
    for folder in ("clusters", "models"):
        shutil.copytree(serving_data_dir / folder, data_dir / folder)
    return isolated_settings.model_copy(update={"movielens_dir": movielens_dir})


@pytest.fixture
def default_env(monkeypatch):
    """No EXPLORER_* variables: for tests about the shipped defaults (a developer's or CI's overrides, such as
    another broker port, must not change what they check)."""
    import os

    for name in [n for n in os.environ if n.startswith("EXPLORER_")]:
        monkeypatch.delenv(name)
