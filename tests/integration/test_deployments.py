"""Two deployments sharing one data dir -- so one LanceDB URI -- each with its own topic prefix and app id, replay
different slices of MovieLens at the same time (the second one the first slice's beginning only, as a staging
deployment replaying history would). Each one's knowledge export, retrieval and pair rows must equal what its own
events give: never the other's counts, never a pair row the other inferred from its knowledge."""

from __future__ import annotations

import time
import uuid

import orjson
import pytest

from models.clusters import load_serving
from models.knowledge import KnowledgeStore
from models.pair_table import PairTable, all_pairs
from models.prompts import MAX_TOP_NEXT
from models.reference import reference_counts
from streams.knowledge_export import render_export
from streams.movielens import load_ratings
from streams.state_reader import read_state_counts
from streams.topics import create_topics
from tests.harness import free_port, run_worker, wait_until
from tests.integration.test_recommender import replay_and_wait
from tests.tiny_models import tiny_model, write_tiny_base

pytestmark = pytest.mark.integration


def expected_top_next(ratings, clusters, settings) -> dict[tuple[str, str], list[tuple[str, int]]]:
    """The all-time top next clusters of every pair, as retrieval orders them (count, then cluster id)."""
    total = reference_counts(ratings, clusters.cluster_of, settings).total
    return {pair: sorted(row.items(), key=lambda item: (-item[1], item[0])) for pair, row in total.items() if row}


def shown(top_next: list[tuple[str, int]], pair: tuple[str, str]) -> tuple[str, ...]:
    """The next clusters a prompt for `pair` shows (models/pair_table.infer), i.e. a row's fingerprint: what the
    refresher keeps every row in step with (counts moving alone do not re-infer a row)."""
    return tuple(c3 for c3, _ in top_next[:MAX_TOP_NEXT + 2] if c3 not in pair)[:MAX_TOP_NEXT]


def test_two_deployments_on_one_lancedb_each_know_only_their_own_events(serving_settings, tmp_path,
                                                                        topics_deleted_after):
    model = write_tiny_base(tmp_path / "tiny.gguf", tiny_model(seed=5))  # fast enough to fill every pair's row
    common = {"model_path": str(model), "pair_refresh_interval_s": 0.5, "pair_refresh_min_interval_s": 0.0}
    production = serving_settings.model_copy(update=common)
    tag = uuid.uuid4().hex[:10]
    staging = production.model_copy(update={"topic_prefix": f"test-{tag}.", "app_id": f"explorer-test-{tag}",
                                            "web_port": free_port()})
    create_topics(staging)
    topics_deleted_after.append(staging)
    assert staging.resolved_lancedb_uri() == production.resolved_lancedb_uri()
    assert staging.deployment_id() != production.deployment_id()

    clusters = load_serving(production)
    ratings = load_ratings(production.movielens_dir)
    slices = {"production": (production, ratings[:6_000]), "staging": (staging, ratings[:4_000])}
    expected = {name: expected_top_next(events, clusters, settings) for name, (settings, events) in slices.items()}
    differ = [p for p in all_pairs(clusters)
              if shown(expected["production"].get(p, []), p) != shown(expected["staging"].get(p, []), p)]
    assert len(differ) > 50  # the slices' knowledge differs: a leak would show

    for name in slices:
        (tmp_path / name).mkdir()
    started = time.monotonic()
    with run_worker(production, tmp_path / "production") as first, run_worker(staging, tmp_path / "staging") as second:
        for settings, events in slices.values():
            replay_and_wait(settings, events)
        stores = {name: KnowledgeStore.from_settings(settings, clusters.version, refresh_s=0.0)
                  for name, (settings, _) in slices.items()}
        tables = {name: PairTable.from_settings(settings, clusters.version, refresh_s=0.0)
                  for name, (settings, _) in slices.items()}

        def retrieval_matches() -> bool:
            return all(stores[name].all_top_next(n=100) == expected[name] for name in slices)

        wait_until(retrieval_matches, 120, "each deployment's retrieval to equal its own events' counts", poll_s=0.5)

        def pair_rows_match() -> bool:
            wrong = []
            for name in slices:
                loaded = tables[name].load()
                if len(loaded) != 1:
                    wrong.append(f"{name}: rows of {len(loaded)} models")
                    continue
                rows = next(iter(loaded.values()))
                if set(rows) != set(all_pairs(clusters)):
                    wrong.append(f"{name}: {len(rows)} pairs")
                    continue
                off = [p for p, row in rows.items() if row.fingerprint != shown(expected[name].get(p, []), p)
                       or tuple(c for c, _ in row.top_next) != row.fingerprint]
                if off:
                    wrong.append(f"{name}: {len(off)} rows not from its own knowledge, e.g. {off[:3]}")
            problems[:] = wrong
            return not wrong

        # Every pair's row is (re-)inferred from the deployment's own knowledge once that has settled.
        problems: list[str] = []
        try:
            wait_until(pair_rows_match, 300, "each deployment's pair rows to come from its own knowledge", poll_s=1.0)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}: {problems}\n{first.log_tail()}\n{second.log_tail()}") from exc
        converged_s = time.monotonic() - started
        # ... and retrieval still equals its own events (nobody overwrote the other's counts meanwhile).
        assert retrieval_matches()
        assert first.alive(), first.log_tail()
        assert second.alive(), second.log_tail()

    for name, (settings, events) in slices.items():
        counts = read_state_counts(settings, clusters.version)  # what `explorer knowledge export` reads
        reference = reference_counts(events, clusters.cluster_of, settings)
        assert counts == reference, name
        exported = orjson.loads(render_export(counts, clusters.version, settings.window_days, None, "json"))
        assert exported == orjson.loads(render_export(reference, clusters.version, settings.window_days, None, "json"))
        assert exported["transitions"]["all_time"], name
    print(f"\ntwo deployments on one LanceDB: retrieval and all {len(all_pairs(clusters))} pair rows of each "
          f"from its own events {converged_s:.0f}s after the workers started ({len(differ)} pairs differ)")
