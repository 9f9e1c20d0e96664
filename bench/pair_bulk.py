"""Bulk pair-table throughput: pairs/s of the build variants on the same pairs and knowledge, in one run.

    python -m bench.pair_bulk [--pairs 120|all] [--processes N] [--threads 1] [--variants gbnf,ungrouped,grouped,processes,scored]

* ``gbnf``       -- plain GBNF-constrained generation (llama-cpp-python's grammar sampler), one process, pairs in
  busiest-first order: the issue's reference point for per-pair speed (not run unless asked for);
* ``ungrouped``  -- the default baseline: one process, pairs in busiest-first order, one `infer` after another with
  the trie decoding (the build before pairs were grouped; the older cluster's line is evaluated again for nearly
  every pair);
* ``grouped``    -- models/pair_bulk.build with one process: chunks of pairs sharing their first cluster, so that
  line is evaluated once per chunk;
* ``processes``  -- the same with N worker processes (default: the CPU count / threads), each its own model;
* ``scored``     -- the same processes, rows holding the model's whole distribution (what ``novel_choice``
  "llm-x-sequence", the default, serves: candidate scoring over each name's distinguishing prefix); "same
  answers" compares the distribution's argmax with the baseline's constrained answer.

Knowledge comes from MovieLens-100k's training period (bench/llm_decoding.py's counting) written into a temporary
LanceDB knowledge store; each variant writes its own temporary pair table. Prints pairs/s, the ratio against the
baseline, the answers' agreement with it, and what all ordered pairs would take at each rate.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import print_table
from bench.llm_decoding import current_clusters, transitions_and_trending
from models.knowledge import KnowledgeStore
from models.llm import NovelClusterPredictor
from models.pair_bulk import build, bulk_order, default_processes
from models.pair_table import Pair, PairTable, infer
from models.prompts import MAX_TOP_NEXT, MAX_TRENDING, Knowledge, prompt_segments
from models.counts import DAY_S, AllCounts
from streams.settings import Settings

VARIANTS = ("gbnf", "ungrouped", "grouped", "processes", "scored")
DEFAULT_VARIANTS = ("ungrouped", "grouped", "processes", "scored")
DAY = 10_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default="120", help="the N busiest pairs, or 'all'")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads per process")
    parser.add_argument("--processes", type=int, default=None, help="for the 'processes' variant")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help="comma-separated; the first is the baseline")
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    processes = args.processes or default_processes(args.threads)

    settings = Settings()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        clusters = current_clusters(settings, scratch)
        nexts, trending = transitions_and_trending(settings, clusters)
        store = KnowledgeStore(str(scratch / "knowledge"), clusters.version, refresh_s=0.0)
        total = {pair: dict(counter) for pair, counter in nexts.items()}
        store.write_partition_counts(0, AllCounts(total=total, daily={DAY: total},
                                                  trends={DAY: {c: 100 - i for i, c in enumerate(trending)}}),
                                     DAY * DAY_S + 60.0)
        knowledge = store.all_top_next(n=MAX_TOP_NEXT + 2)
        order = bulk_order(clusters, knowledge)
        pairs = order if args.pairs == "all" else order[:int(args.pairs)]
        predictor = NovelClusterPredictor(settings, clusters, n_threads=args.threads)
        shown_trending = [c for c, _, _ in store.trending(n=MAX_TRENDING)]
        rest_tokens, whole_tokens = _request_tokens(predictor, pairs, knowledge, shown_trending, clusters)
        infer(predictor, pairs[0], knowledge.get(pairs[0], []), shown_trending, "warm-up")  # page the weights in
        if "gbnf" in variants:
            predictor.predict(pairs[0], Knowledge(trending=shown_trending), method="gbnf")

        seconds: dict[str, float] = {}
        answers: dict[str, dict[Pair, str]] = {}
        for variant in variants:
            table = PairTable(str(scratch / f"pairs-{variant}"), clusters.version, refresh_s=0.0)
            started = time.perf_counter()
            if variant in ("gbnf", "ungrouped"):
                version = store.knowledge_version()
                predictor.method = "gbnf" if variant == "gbnf" else "trie"
                table.upsert([infer(predictor, pair, knowledge.get(pair, []), shown_trending, version)
                              for pair in pairs])
                predictor.method = "trie"
            else:
                build(predictor, store, table, clusters, pairs, processes=1 if variant == "grouped" else processes,
                      settings=settings, model_path=predictor.model_path, threads=args.threads,
                      scored=variant == "scored")
            seconds[variant] = time.perf_counter() - started
            (rows,) = table.load().values()
            answers[variant] = {pair: row.novel for pair, row in rows.items()}
            print(f"  {variant}: {len(pairs)} pairs in {seconds[variant]:.1f}s", flush=True)
        predictor.close()

    everything = len(clusters.clusters) * (len(clusters.clusters) - 1)
    base = variants[0]
    print(f"\npair-table bulk build: {len(pairs)} busiest pairs ({sum(p in knowledge for p in pairs)} with "
          f"knowledge) of {everything}, clusters {clusters.version}, model {predictor.model_version}, "
          f"{args.threads} thread(s) per process; request tokens per pair: {statistics.mean(whole_tokens):.1f} whole, "
          f"{statistics.mean(rest_tokens):.1f} after the older cluster's line")
    rows = [("variant", "pairs/s | x baseline | same answers | all pairs at this rate")]
    for variant in variants:
        rate = len(pairs) / seconds[variant]
        label = f"{variant} ({processes} processes)" if variant in ("processes", "scored") else variant
        same = sum(answers[variant][p] == answers[base][p] for p in pairs)
        summary = (f"{rate:6.2f} | {seconds[base] / seconds[variant]:5.2f}x | {same}/{len(pairs)} | "
                   f"{everything / rate / 60:5.1f} min")
        rows.append((label, summary))
    print_table(rows)


def _request_tokens(predictor: NovelClusterPredictor, pairs: list[Pair], knowledge, trending: list[str], clusters
                    ) -> tuple[list[int], list[int]]:
    rest, whole = [], []
    for pair in pairs:
        shown = [(c, n) for c, n in knowledge.get(pair, []) if c not in pair][:MAX_TOP_NEXT]
        segments = prompt_segments(pair, Knowledge(top_next=shown, trending=trending), clusters)
        whole.append(len(predictor.tokenize(segments.request)))
        rest.append(len(predictor.tokenize(segments.request[len(segments.request_head):])))
    return rest, whole


if __name__ == "__main__":
    main()
