"""Transitions throughput on the real MovieLens-100k replay: events/s of a worker that validates only vs one that
also counts transitions and trends exactly once, in the same run as the baselines of bench.ingest (the plain
confluent-kafka reader, aiokafka's getmany loop, and the same work done without Faust in one process).

    python -m bench.transitions [--workers 1]

Needs a running broker at EXPLORER_KAFKA_BOOTSTRAP (`explorer broker start`).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.common import isolated, print_table
from bench.baselines import aiokafka_rate, plain_consumer_rate, same_work_rate
from bench.ingest import agent_rate
from models.clusters import build_clusters
from models.knowledge import KnowledgeStore
from streams.movielens import dataset_dir, load_ratings
from streams.replay import publish_events
from streams.settings import Settings
from streams.topics import INTERACTIONS, INTERACTIONS_DLQ, TopicSpec, create_topics, topic_name
from streams.worker_process import free_port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    base = Settings()
    ratings = load_ratings(dataset_dir(base))
    with tempfile.TemporaryDirectory() as tmp:
        plain_dir, counting_dir = Path(tmp) / "validate-only", Path(tmp) / "with-clusters"
        clusters = build_clusters(base.model_copy(update={"data_dir": counting_dir}))
        settings = isolated(base, "transitions", data_dir=plain_dir, web_port=free_port())
        topic = topic_name(settings, INTERACTIONS)
        print(f"publishing {len(ratings):,} MovieLens events to {topic}...")
        publish_events(settings, (r.to_event() for r in ratings))

        ceiling = plain_consumer_rate(settings, topic, len(ratings))
        transport = aiokafka_rate(settings, topic, len(ratings))
        same = settings.model_copy(update={"app_id": f"{settings.app_id}-same", "data_dir": counting_dir})
        changelog = f"{same.app_id}-baseline-changelog"
        create_topics(same, specs=[TopicSpec("baseline-changelog", changelog, settings.interactions_partitions, 1,
                                             {})])
        no_framework = same_work_rate(same, topic, len(ratings), clusters.cluster_of, changelog,
                                      topic_name(same, INTERACTIONS_DLQ),
                                      KnowledgeStore.from_settings(same, clusters.version))
        validate_only, _ = agent_rate(settings.model_copy(update={"app_id": f"{settings.app_id}-plain"}),
                                      len(ratings), Path(tmp), args.workers)
        counting_settings = settings.model_copy(update={"app_id": f"{settings.app_id}-count",
                                                        "data_dir": counting_dir})
        counting, metrics = agent_rate(counting_settings, len(ratings), Path(tmp), args.workers)
        knowledge = KnowledgeStore.from_settings(counting_settings, clusters.version)
        fragments, rows = knowledge.fragment_counts(), knowledge.row_counts()

    outcomes = {k.split("outcome=")[1].rstrip("}"): v for k, v in metrics.items()
                if k.startswith("explorer_transition_events{")}
    print(f"\ntransitions benchmark ({args.workers} worker(s), clusters {clusters.version})")
    print_table([
        ("plain confluent-kafka consumer, does nothing (ceiling)", f"{ceiling:,.0f} events/s"),
        ("plain aiokafka getmany loop (Faust's transport)", f"{transport:,.0f} events/s"),
        ("same work without Faust, one process (baseline)", f"{no_framework:,.0f} events/s"),
        ("worker, validation only", f"{validate_only:,.0f} events/s"),
        ("  / ceiling", f"{validate_only / ceiling:.3f}  (target >= 0.1)"),
        ("worker, validation + transitions + trends + LanceDB sync", f"{counting:,.0f} events/s"),
        ("  / same work without Faust", f"{counting / no_framework:.2f}  (target >= 0.5)"),
        ("  / validation only", f"{counting / validate_only:.2f}"),
        ("LanceDB fragments after the replay", ", ".join(f"{k}={v}" for k, v in sorted(fragments.items()))),
        ("LanceDB rows", ", ".join(f"{k}={v:,}" for k, v in sorted(rows.items()))),
        ("transition state outcomes", ", ".join(f"{k}={v:,.0f}" for k, v in sorted(outcomes.items()))),
    ])


if __name__ == "__main__":
    main()
