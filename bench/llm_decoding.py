"""Novel-cluster decoding: ms per pair of each constrained decoding method of models/llm.py on the same
(history, knowledge) pairs, interleaved in one run (the order rotates per pair, so machine noise hits every method
alike), with their agreement against the GBNF baseline.

    python -m bench.llm_decoding [--pairs 30] [--threads N] [--methods gbnf,trie,score]

Pairs and knowledge come from MovieLens-100k's training period: per user, positive engagements mapped to the
current interest clusters (built into a temporary folder when none are built), collapsed, counted as transitions
(c1, c2) -> c3 as in the contract; a pair's knowledge is its top next clusters with counts and the clusters with
the most positive engagements in the last 30 days. The static system prompt and the (global) trending segment
are cached in every method alike, so a pair's cost is its request segment plus decoding.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

from bench.common import print_table
from models.clusters import ClusterSet, ClustersNotBuilt, build_clusters, load_current
from models.embeddings import training_ratings
from models.llm import METHODS, Knowledge, NovelClusterPredictor, Prediction
from streams.movielens import dataset_dir, load_ratings
from streams.settings import Settings

WINDOW_S = 30 * 86_400


def transitions_and_trending(settings: Settings, clusters: ClusterSet
                             ) -> tuple[dict[tuple[str, str], Counter[str]], list[str]]:
    ratings = training_ratings(load_ratings(dataset_dir(settings, progress=False)), settings.train_fraction)
    positive = sorted((r for r in ratings if settings.is_positive("rating", r.rating)),
                      key=lambda r: (r.ts, r.event_id))
    sequences: dict[str, list[str]] = defaultdict(list)
    for rating in positive:
        cluster = clusters.cluster_of(rating.item_id)
        if cluster is not None and (not sequences[rating.user_id] or sequences[rating.user_id][-1] != cluster):
            sequences[rating.user_id].append(cluster)
    nexts: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for sequence in sequences.values():
        for c1, c2, c3 in zip(sequence, sequence[1:], sequence[2:], strict=False):
            if len({c1, c2, c3}) == 3:
                nexts[(c1, c2)][c3] += 1
    latest = positive[-1].ts
    recent = Counter(clusters.cluster_of(r.item_id) for r in positive if r.ts > latest - WINDOW_S)
    recent.pop(None, None)
    return nexts, [cid for cid, _ in recent.most_common(4)]  # type: ignore[misc]


def sample_requests(nexts: dict[tuple[str, str], Counter[str]], trending: list[str], count: int, seed: int = 11
                    ) -> list[tuple[tuple[str, str], Knowledge]]:
    """`count` pairs drawn from the 200 most frequent (what requests mostly ask about), seeded."""
    frequent = sorted(nexts, key=lambda pair: (-sum(nexts[pair].values()), pair))[:200]
    pairs = random.Random(seed).sample(frequent, min(count, len(frequent)))
    return [(pair, Knowledge(top_next=nexts[pair].most_common(4), trending=list(trending))) for pair in pairs]


def current_clusters(settings: Settings, scratch: Path) -> ClusterSet:
    try:
        return load_current(settings)
    except ClustersNotBuilt:
        print(f"no clusters under {settings.resolved_data_dir()}: building them in a temporary folder...")
        return build_clusters(settings.model_copy(update={"data_dir": scratch,
                                                          "movielens_dir": dataset_dir(settings, progress=False)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: models.llm's)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, gbnf first as the baseline")
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]

    settings = Settings()
    with tempfile.TemporaryDirectory() as tmp:
        clusters = current_clusters(settings, Path(tmp))
        nexts, trending = transitions_and_trending(settings, clusters)
    requests = sample_requests(nexts, trending, args.pairs)
    predictor = NovelClusterPredictor(settings, clusters, n_threads=args.threads)
    for history, knowledge in requests[:2]:  # warm-up: page the weights in, build the scoring context
        for method in methods:
            predictor.predict(history, knowledge, method=method)

    results: dict[str, list[Prediction]] = {m: [] for m in methods}
    for i, (history, knowledge) in enumerate(requests):
        for method in methods[i % len(methods):] + methods[:i % len(methods)]:
            results[method].append(predictor.predict(history, knowledge, method=method))

    prompt_tokens = statistics.mean(len(predictor.prompt_tokens(h, k)) for h, k in requests)
    base = methods[0]
    base_ms = statistics.mean(p.elapsed_s for p in results[base]) * 1000
    base_decode_ms = statistics.mean(p.elapsed_s - p.prompt_s for p in results[base]) * 1000
    print(f"\nnovel-cluster decoding: {len(requests)} pairs, clusters {clusters.version}, "
          f"model {predictor.model_version}, {predictor.n_threads} thread(s), "
          f"{prompt_tokens:.0f} prompt tokens on average (system + trending segments cached)")
    print(f"  trending: {'; '.join(clusters.clusters[c].name for c in trending)}")
    header = f"  {'method':<7} {'ms/pair':>8} {'median':>8} {'prompt ms':>10} {'decode ms':>10} {'tokens':>7} " \
             f"{'x faster':>9} {'decode x':>9} {'agree':>7} {'in top-next':>12}"
    print(header)
    for method in methods:
        got = results[method]
        ms = statistics.mean(p.elapsed_s for p in got) * 1000
        decode_ms = statistics.mean(p.elapsed_s - p.prompt_s for p in got) * 1000
        agree = sum(p.cluster_id == b.cluster_id for p, b in zip(got, results[base], strict=True))
        top = sum(p.cluster_id in dict(k.top_next) for p, (_, k) in zip(got, requests, strict=True))
        print(f"  {method:<7} {ms:8.1f} {statistics.median(p.elapsed_s for p in got) * 1000:8.1f} "
              f"{statistics.mean(p.prompt_s for p in got) * 1000:10.1f} {decode_ms:10.1f} "
              f"{statistics.mean(p.decoded_tokens for p in got):7.1f} {base_ms / ms:8.2f}x "
              f"{base_decode_ms / max(decode_ms, 1e-9):8.1f}x {agree:>3}/{len(got):<3} {top:>5}/{len(got):<3}")
    print("\n  ms/pair = the whole predict call; prompt ms = evaluating the request segment (shared by all methods);"
          "\n  decode ms = the rest; tokens = tokens evaluated after the prompt; x faster / decode x = vs "
          f"{base};\n  agree = same answer as {base}; in top-next = the answer is one of the pair's top next clusters.")
    disagreements = [(h, results[base][i].cluster_id, m, results[m][i].cluster_id)
                     for m in methods[1:] for i, (h, _) in enumerate(requests)
                     if results[m][i].cluster_id != results[base][i].cluster_id]
    if disagreements:
        print("\n  disagreements:")
        print_table([(f"{m} on {h[0]}->{h[1]}", f"{clusters.clusters[got].name!r} vs {base} "
                      f"{clusters.clusters[want].name!r}") for h, want, m, got in disagreements])
    predictor.close()


if __name__ == "__main__":
    main()
