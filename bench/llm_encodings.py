"""Serving-file choice: the configured GGUF re-encoded into other llama.cpp types, timed and compared on the same
pairs in one run.

    python -m bench.llm_encodings [--pairs 60] [--types Q8_0,Q4_0,F16] [--threads 1]

Every type is made from the configured file (default: SmolLM2-135M-Instruct Q4_1) with llama.cpp's quantizer
(`allow_requantize`: the weights are de-quantized, then quantized again), into a temporary folder. For each:
prompt evaluation in ms per token (a fixed 80-token batch, best of 3), ms per pair with the default trie decoding,
how many answers equal the configured file's, and how many answers are among the pair's top next clusters (a cheap
proxy for quality; `explorer eval` is the real measure). Re-encoding is never exact, and greedy answers of a 135M
model often sit on near-ties, so a faster file is a different model: this bench says by how much.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import print_table
from bench.llm_decoding import (
    current_clusters,
    sample_requests,
    transitions_and_trending,
)
from models.finetune.quantize import quantize
from models.finetune.registry import current_model_path
from models.llm import NovelClusterPredictor
from streams.settings import Settings

PROMPT_TOKENS = 80


def prompt_ms_per_token(path: Path, threads: int) -> float:
    from llama_cpp import Llama

    from models.llama_output import route_llama_output

    route_llama_output()
    llm = Llama(model_path=str(path), n_ctx=512, n_batch=512, n_threads=threads, n_threads_batch=threads,
                verbose=False)
    tokens = [(1000 + 7 * i) % llm.n_vocab() for i in range(PROMPT_TOKENS)]
    best = float("inf")
    for _ in range(3):
        llm.reset()
        started = time.perf_counter()
        llm.eval(tokens)
        best = min(best, time.perf_counter() - started)
    llm.close()
    return best * 1000 / PROMPT_TOKENS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=60)
    parser.add_argument("--types", default="Q8_0,Q4_0,F16")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    settings = Settings()
    configured = Path(current_model_path(settings))
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        clusters = current_clusters(settings, scratch)
        nexts, trending = transitions_and_trending(settings, clusters)
        requests = sample_requests(nexts, trending, args.pairs)
        files = {f"{configured.name} (configured)": configured}
        for quant_type in [t.strip().upper() for t in args.types.split(",") if t.strip()]:
            files[quant_type] = quantize(configured, scratch / f"model.{quant_type}.gguf", quant_type,
                                         allow_requantize=True)

        results: dict[str, tuple[float, float, list[str], int]] = {}
        for label, path in files.items():
            per_token = prompt_ms_per_token(path, args.threads)
            predictor = NovelClusterPredictor(settings, clusters, model_path=str(path), n_threads=args.threads)
            predictor.predict(*requests[0])  # warm-up
            started = time.perf_counter()
            answers = [predictor.predict(history, knowledge).cluster_id for history, knowledge in requests]
            per_pair = (time.perf_counter() - started) * 1000 / len(requests)
            predictor.close()
            results[label] = (per_token, per_pair, answers, path.stat().st_size)
            print(f"  {label}: {per_pair:.0f} ms/pair", flush=True)

    _, base_pair, base_answers, _ = next(iter(results.values()))
    print(f"\nserving files: {len(requests)} pairs, clusters {clusters.version}, {args.threads} thread(s)")
    rows = [("file", "MB | prompt ms/token | ms/pair | x faster | same answers | in top-next")]
    for label, (per_token, per_pair, answers, size) in results.items():
        same = sum(a == b for a, b in zip(answers, base_answers, strict=True))
        top = sum(a in dict(k.top_next) for a, (_, k) in zip(answers, requests, strict=True))
        summary = (f"{size / 1e6:6.1f} | {per_token:5.2f} | {per_pair:6.0f} | {base_pair / per_pair:5.2f}x | "
                   f"{same}/{len(requests)} | {top}/{len(requests)}")
        rows.append((label, summary))
    print_table(rows)


if __name__ == "__main__":
    main()
