import pytest

from streams import codec
from streams.records import InteractionEvent, NovelCluster, Recommendation, ScoredItem
from streams.settings import Settings
from streams.topics import INTERACTIONS, catalogue, topic_name


def test_records_round_trip_through_the_orjson_codec():
    rec = Recommendation("r1", "u1", 1.0, 2.0, ["c1", "c2"], NovelCluster("c3", "Sci-Fi 90s"),
                         [ScoredItem("50", 0.9)], "table", "m1", "k1")
    decoded = codec.loads(codec.dumps(rec))
    assert decoded["novel_cluster"] == {"id": "c3", "name": "Sci-Fi 90s"}
    assert decoded["items"] == [{"item_id": "50", "score": 0.9}]
    assert set(decoded) == {"request_id", "user_id", "ts", "produced_at", "history_clusters", "novel_cluster",
                            "items", "source", "model_version", "knowledge_version"}
    event = InteractionEvent("e", "u", "i", 1.5, "rating", None)
    assert codec.loads(codec.dumps(event)) == {"event_id": "e", "user_id": "u", "item_id": "i", "ts": 1.5,
                                               "event_type": "rating", "value": None}


def test_topic_prefix_applies_to_every_contract_topic():
    settings = Settings(topic_prefix="staging.", interactions_partitions=12)
    names = {spec.logical_name: spec for spec in catalogue(settings)}
    assert set(names) == {"interactions", "interactions.dlq", "recommendation-requests", "recommendations"}
    assert all(spec.name == "staging." + spec.logical_name for spec in names.values())
    assert names[INTERACTIONS].partitions == 12
    assert topic_name(Settings(), INTERACTIONS) == "interactions"


def test_topic_prefix_rejects_characters_kafka_does_not_allow():
    with pytest.raises(ValueError, match="EXPLORER_TOPIC_PREFIX"):
        Settings(topic_prefix="bad prefix/")


def test_settings_come_from_explorer_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EXPLORER_KAFKA_BOOTSTRAP", "k1:9092,k2:9092")
    monkeypatch.setenv("EXPLORER_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("EXPLORER_INTERACTIONS_PARTITIONS", "16")
    settings = Settings()
    assert settings.kafka_bootstrap == "k1:9092,k2:9092"
    assert settings.interactions_partitions == 16
    assert settings.resolved_lancedb_uri() == str(tmp_path.resolve() / "lancedb")
    assert settings.resolved_model_path().endswith("SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.mark.parametrize(("event_type", "value", "positive"), [
    ("rating", 4.0, True), ("rating", 5.0, True), ("rating", 3.5, False), ("rating", None, False),
    ("like", None, True), ("complete", 0.2, True), ("view", 5.0, False), ("skip", None, False),
])
def test_positive_engagement_follows_the_contract(event_type, value, positive):
    assert Settings().is_positive(event_type, value) is positive


def test_security_settings_reach_every_client_config():
    from streams.kafka_config import confluent_config

    settings = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                        kafka_sasl_username="svc", kafka_sasl_password="pw", kafka_ssl_cafile="/ca.pem")
    config = confluent_config(settings, **{"client.id": "x"})
    assert config["security.protocol"] == "sasl_ssl"
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (config["sasl.username"], config["sasl.password"], config["ssl.ca.location"]) == ("svc", "pw", "/ca.pem")
    assert config["client.id"] == "x"


def test_a_deployments_topics_are_its_prefix_and_its_app_ids_groups_only():
    from streams.topics import deployment_topics

    settings = Settings(topic_prefix="t-1.", app_id="explorer-t-1")
    names = ["t-1.interactions", "t-1.recommendations", "explorer-t-1.c40-v-interactions-repartition",
             "explorer-t-1-state-v2-c40-changelog", "t-10.interactions", "explorer-t-10.c40-v-interactions-repartition",
             "other.interactions", "__consumer_offsets"]
    assert deployment_topics(settings, names) == sorted(names[:4])


def test_deleting_topics_without_a_prefix_is_refused():
    from streams.topics import deployment_topics

    with pytest.raises(ValueError, match="EXPLORER_TOPIC_PREFIX"):
        deployment_topics(Settings(topic_prefix="", app_id="interest-explorer"), ["interactions"])
