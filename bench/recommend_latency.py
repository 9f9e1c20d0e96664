"""Request -> recommendation latency through the real broker, for pair-table hits and for LLM misses, plus the
pair table's bulk throughput.

1. A worker counts the first `--ratings` MovieLens ratings (clusters built and a sequence model trained quickly
   into a temporary data dir; the model's quality is not what is measured here).
2. The pair table is built in bulk for the (c1, c2) pairs of half of those users (`explorer pairs build`'s code):
   pairs/s and ms per pair; a whole ~40-cluster table (every ordered pair) extrapolated from it.
3. The worker is restarted (it loads the table) with the background pair refresher OFF, so the LLM thread only
   serves request-time misses; requests are sent one at a time (each latency is the system's, not a queue's):
   users whose pair is in the table (hits), then one user per pair not in it (LLM misses).
4. With ``novel_choice`` "llm-x-sequence" (the default: a hit multiplies the row's distribution by the user's
   sequence-model mass per cluster), the worker is restarted once more with "llm" (a hit serves the row's own
   answer, the path before) and the same hits are timed again: the baseline of the ratio, in the same run.

5. With ``--under-replay N`` the table hits are timed again while N synthetic events are published at full speed
   from a process of its own (an upstream service; ``--replay-in-process``: a thread of this process, as before).
   Each hit alternates with a request to a stand-in recommender on topics of its own (bench.baselines.RequestEcho:
   a plain librdkafka process answering at once): the floor of a request's round trip on the same cores, under the
   same load, in the same seconds -- idle too, before the replay. ``--rounds R`` sends those alternating hits R times
   over (a p99 over ~100 users is their second-largest), and the bench counts the slow hits whose echo request
   right after was slow too (a stall of the broker or the cores, not of the worker).

    python -m bench.recommend_latency [--ratings 20000] [--hits 200] [--under-replay 300000] [--rounds 4]

Needs a running broker at EXPLORER_KAFKA_BOOTSTRAP (`explorer broker start`). Prints p50/p95/p99 per source.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import NamedTuple

from bench.baselines import RequestEcho
from bench.common import BackgroundReplay, histogram_mean_ms, isolated, print_table
from models.clusters import build_clusters
from models.knowledge import KnowledgeStore
from models.llm import NovelClusterPredictor
from models.pair_bulk import build
from models.pair_table import PairTable, all_pairs
from models.sequence import SequenceConfig, train_and_save
from streams.app import consumer_group
from streams.movielens import dataset_dir, load_ratings
from streams.offsets import caught_up
from streams.recommend_client import RecommendationClient
from streams.replay import publish_events
from streams.settings import Settings
from streams.state_reader import read_changelog
from streams.topics import INTERACTIONS, topic_name
from streams.worker_process import free_port, run_worker, wait_until


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def user_pairs(settings: Settings, clusters_version: str) -> dict[str, tuple[str, str]]:
    """Each user's two latest distinct clusters, read from the durable transitions state."""
    pairs = {}
    for partition in read_changelog(settings, clusters_version).values():
        for key, value in partition.items():
            if key.startswith("u:") and len(value["t"]) == 2:
                pairs[key[2:]] = (value["t"][0], value["t"][1])
    return pairs


class Timed(NamedTuple):
    """One request's time; the split uses wall clocks of one machine (the request's ts, the answer's produced_at,
    the client's arrival time)."""

    source: str
    total_ms: float
    to_answer_ms: float  # request made -> answer produced
    back_ms: float  # answer produced -> received


def timed(client: RecommendationClient, user: str) -> Timed:
    answer = client.recommend(user, timeout_s=120)
    rec = answer.recommendation
    return Timed(rec["source"], answer.latency_s * 1000, (rec["produced_at"] - rec["ts"]) * 1000,
                 (answer.received_at - rec["produced_at"]) * 1000)


def timed_requests(settings: Settings, users: list[str]) -> list[Timed]:
    with RecommendationClient(settings) as client:
        return [timed(client, user) for user in users]


def timed_alternately(settings: Settings, echo_settings: Settings, users: list[str]) -> tuple[list[Timed], list[Timed]]:
    """Each user's request to the worker, then one to the echo: both measured over the same stretch of load."""
    with RecommendationClient(settings) as client, RecommendationClient(echo_settings) as echo:
        pairs = [(timed(client, user), timed(echo, user)) for user in users]
    return [worker for worker, _ in pairs], [floor for _, floor in pairs]


def shared_stalls(hits: list[Timed], echoes: list[Timed], slow_hit_ms: float = 50.0,
                  slow_echo_ms: float = 25.0) -> str:
    """Whether a slow hit's stall was the worker's own or the machine's: the echo request sent right after it (same
    client, a process that does no work) would be slow too if the broker or the cores were stalled for everyone."""
    slow = [i for i, hit in enumerate(hits) if hit.total_ms > slow_hit_ms]
    shared = [i for i in slow if echoes[i].total_ms > slow_echo_ms]
    return f"{len(slow)} / {len(shared)}"


def spread(values: list[float]) -> str:
    return (f"p50 {statistics.median(values):.0f} ms, p95 {percentile(values, 0.95):.0f} ms, "
            f"p99 {percentile(values, 0.99):.0f} ms, max {max(values):.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratings", type=int, default=20_000)
    parser.add_argument("--hits", type=int, default=200, help="table-hit requests")
    parser.add_argument("--misses", type=int, default=40, help="LLM-miss requests (distinct pairs)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="send the table hits of the alternating (echo) phases this many times over: the users "
                             "with a table row are few (~100 with the default ratings), and a p99 of 100 requests "
                             "is their second-largest")
    parser.add_argument("--under-replay", type=int, default=0, metavar="EVENTS",
                        help="time the table hits again while EVENTS synthetic interactions are published at full "
                             "speed (the worker ingesting meanwhile)")
    parser.add_argument("--replay-rate", type=float, default=None,
                        help="events/s of that replay (default: as fast as the producer goes)")
    parser.add_argument("--replay-nice", type=int, default=0, metavar="N",
                        help="run the replay's publisher process at this niceness (19: it only takes the CPU the "
                             "worker and broker leave, as if upstream ran elsewhere; default 0, an equal share)")
    parser.add_argument("--replay-in-process", action="store_true",
                        help="publish that replay from a thread of this process, as the bench did before (the timed "
                             "client then shares its GIL with the publisher); default: a process of its own")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        base = Settings(data_dir=Path(tmp) / "data", web_port=free_port(), pair_refresh_enabled=False)
        settings = isolated(base, "latency")
        echo_settings = isolated(base, "latency-echo") if args.under_replay else base  # the echo's own topics
        clusters = build_clusters(settings)
        train_and_save(settings, SequenceConfig.from_settings(settings, max_epochs=3), progress=False)
        ratings = load_ratings(dataset_dir(settings, progress=False))[: args.ratings]
        with run_worker(settings, Path(tmp)):
            publish_events(settings, (r.to_event() for r in ratings))
            group = consumer_group(settings, clusters.version)
            wait_until(lambda: caught_up(settings, group, topic_name(settings, INTERACTIONS)), 600,
                       "the worker to commit the replay", poll_s=0.5)
            time.sleep(3 * settings.knowledge_sync_interval_s)  # let the last knowledge sync land in LanceDB

        by_user = user_pairs(settings, clusters.version)
        users = sorted(by_user, key=int)
        distinct = sorted(set(by_user.values()))
        table_pairs = distinct[::2]  # the other half stays out of the table: their users are the misses
        predictor = NovelClusterPredictor(settings, clusters, n_threads=settings.llm_threads)
        store = KnowledgeStore.from_settings(settings, clusters.version)
        report = build(predictor, store, PairTable.from_settings(settings, clusters.version), clusters, table_pairs,
                       scored=settings.scored_pairs)
        predictor.close()

        in_table = set(table_pairs)
        hit_users = [u for u in users if by_user[u] in in_table][: args.hits]
        miss_users, seen = [], set()
        for user in users:
            if by_user[user] in in_table or by_user[user] in seen:
                continue
            seen.add(by_user[user])
            miss_users.append(user)
        miss_users = miss_users[: args.misses]
        with run_worker(settings, Path(tmp)) as worker, ExitStack() as stack:
            wait_until(lambda: worker.metric("explorer_pair_table_rows") >= len(table_pairs), 120,
                       "the worker to load the pair table")
            timed_requests(settings, hit_users[:5])  # warm-up: connections, first forward pass
            hits = timed_requests(settings, hit_users)
            misses = timed_requests(settings, miss_users)
            loaded = echo_idle = echo_loaded = None
            if args.under_replay:
                stack.enter_context(RequestEcho(echo_settings))
                timed_requests(echo_settings, hit_users[:5])
                _, echo_idle = timed_alternately(settings, echo_settings, hit_users * args.rounds)
                replay = BackgroundReplay(settings, args.under_replay, args.replay_rate,
                                          in_process=args.replay_in_process, nice=args.replay_nice,
                                          users=5_000, seed=99,
                                          start_ts=893_300_000.0, user_prefix="load-")
                before = worker.metrics()
                replay.start()
                wait_until(lambda: worker.metric("explorer_events_in_total") > args.ratings + 1_000, 60,
                           "the worker to ingest the replay")
                loaded, echo_loaded = timed_alternately(settings, echo_settings, hit_users * args.rounds)
                after = worker.metrics()
                ingested = worker.metric("explorer_events_in_total") - args.ratings
                replay.join()
        baseline = None
        if settings.scored_pairs:  # the same rows served by their own answer: what a hit cost before
            plain = settings.model_copy(update={"novel_choice": "llm"})
            with run_worker(plain, Path(tmp)) as worker:
                wait_until(lambda: worker.metric("explorer_pair_table_rows") >= len(table_pairs), 120,
                           "the worker to load the pair table")
                timed_requests(plain, hit_users[:5])
                baseline = timed_requests(plain, hit_users)

    print(f"\nrecommendation latency, {args.ratings:,} ratings replayed, clusters {clusters.version}, "
          f"LLM {settings.llm_threads} thread(s), novel_choice {settings.novel_choice}")
    rows = [("bulk pair table", f"{report.pairs} pairs in {report.seconds:.1f}s = {report.pairs_per_s:.2f} pairs/s "
             f"({report.mean_inference_ms:.0f} ms per pair); all {len(all_pairs(clusters))} pairs would take "
             f"~{len(all_pairs(clusters)) / max(report.pairs_per_s, 1e-9):.0f}s")]
    runs = [("table hits", hits), ("LLM misses", misses)]
    if baseline is not None:
        runs.append(("table hits, novel_choice llm (baseline: the row's own answer, no sequence product)",
                     baseline))
    if loaded is not None:
        pace = f"{args.replay_rate:,.0f}/s" if args.replay_rate else "full speed"
        publisher = ("a thread of the bench" if args.replay_in_process
                     else f"its own process at nice {args.replay_nice}" if args.replay_nice else "its own process")
        runs.append((f"table hits during a replay at {pace} from {publisher} ({ingested:,.0f} events ingested "
                     "meanwhile)", loaded))
        runs.append(("the floor: a plain librdkafka echo process on topics of its own, idle (alternating with hits)",
                     echo_idle))
        runs.append(("the floor: the echo during the same replay, alternating with the hits above", echo_loaded))
    for name, results in runs:
        sources = {s: sum(1 for r in results if r.source == s) for s in ("table", "llm", "fallback", "echo")}
        rows.append((name, f"n={len(results)} {spread([r.total_ms for r in results])}; sources {sources}"))
        rows.append(("  request made -> answer produced (worker side and the request's trip)",
                     spread([r.to_answer_ms for r in results])))
        rows.append(("  answer produced -> received (its delivery and the client's fetch)",
                     spread([r.back_ms for r in results])))
    if loaded is not None:  # where a loaded request's time goes, from the worker's own histograms (means)
        rows += [
            ("  of which: appended -> the worker starts answering",
             histogram_mean_ms(after, before, "explorer_request_wait_seconds")),
            ("  of which: answering (table lookup, grounding, answer stored and delivered)",
             histogram_mean_ms(after, before, "explorer_request_seconds", "{source=table}")),
            ("  shared stalls: hits over 50 ms / of them, the echo request right after over 25 ms too",
             shared_stalls(loaded, echo_loaded)),
            ("  meanwhile: full garbage collections (gen 2), each a pause of the whole worker",
             histogram_mean_ms(after, before, "explorer_gc_pause_seconds", "{generation=2}")),
            ("  meanwhile: full collections whose survivors were frozen; objects freed by thaws (EXPLORER_GC_THAW_EVERY_S)",
             f"{after.get('explorer_gc_survivor_freezes_total', 0) - before.get('explorer_gc_survivor_freezes_total', 0):,.0f}; "
             f"{after.get('explorer_gc_thawed_garbage_total', 0) - before.get('explorer_gc_thawed_garbage_total', 0):,.0f}"),
        ]
    if baseline is not None:
        ours, before = [r.total_ms for r in hits], [r.total_ms for r in baseline]
        rows.append(("table hits: llm-x-sequence / llm",
                     f"p50 {statistics.median(ours) / statistics.median(before):.2f}x, "
                     f"p99 {percentile(ours, 0.99) / percentile(before, 0.99):.2f}x"))
    print_table(rows)


if __name__ == "__main__":
    main()
