"""docker-compose.yml cannot run here (no Docker engine); this checks it agrees with the code and settings."""

from pathlib import Path

import yaml

from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def load_compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_and_broker_image_match_the_local_broker_version():
    compose = load_compose()
    assert {"kafka", "topics", "worker"} <= set(compose["services"])
    kafka = compose["services"]["kafka"]
    assert kafka["image"] == f"apache/kafka:{Settings().kafka_version}"
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert kafka["environment"]["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"


def test_host_port_is_the_default_bootstrap_and_workers_use_an_advertised_listener(default_env):
    compose = load_compose()
    kafka = compose["services"]["kafka"]
    default = Settings()
    assert f"{default.broker_port}:{default.broker_port}" in kafka["ports"]
    advertised = kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert f"PLAINTEXT://{default.kafka_bootstrap}" in advertised
    for name in ("topics", "worker"):
        bootstrap = compose["services"][name]["environment"]["EXPLORER_KAFKA_BOOTSTRAP"]
        assert any(listener.endswith("//" + bootstrap) for listener in advertised), (name, bootstrap)


def test_every_explorer_variable_is_a_real_setting():
    compose = load_compose()
    fields = {f"EXPLORER_{name.upper()}" for name in Settings.model_fields}
    for name in ("topics", "worker"):
        env = compose["services"][name]["environment"]
        unknown = {key for key in env if key.startswith("EXPLORER_")} - fields
        assert not unknown, f"{name} sets variables no setting reads: {unknown}"


def test_worker_health_port_and_build_context_are_consistent():
    compose = load_compose()
    worker = compose["services"]["worker"]
    port = worker["environment"]["EXPLORER_WEB_PORT"]
    assert port in worker["expose"]
    assert f":{port}/health" in " ".join(worker["healthcheck"]["test"])
    assert worker["command"][:2] == ["explorer", "worker"]
    build = compose["services"]["topics"]["build"]
    dockerfile = ROOT / build["context"] / build["dockerfile"]
    assert dockerfile.is_file()
    assert "explorer" in dockerfile.read_text() and "pip install" in dockerfile.read_text()
    assert compose["services"]["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
