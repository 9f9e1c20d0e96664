"""The two measured choices of models/finetune/: LoRA vs full fine-tuning, and the llama.cpp quantization type.

    python -m bench.finetune_choices methods [--steps 31] [--threads 1]
    python -m bench.finetune_choices quant F16_GGUF [--pairs 40] [--threads 1]
    python -m bench.finetune_choices export-check [--pairs 24] [--threads 2]

`methods`: the same batches of MovieLens examples (curated as `explorer finetune` does, serving clusters of
$EXPLORER_DATA_DIR) for both methods, from the packaged SmolLM2; median step time, and the mean answer loss on 48
time-later prompts (the held-out pairs' most common next cluster, half with knowledge) before and after.

`quant`: quantizes one F16 export (`explorer finetune --keep-f16 PATH`) to each legacy type and answers the same
held-out prompts (free greedy generation, gates.evaluate) with each: file size, agreement with the F16 file's
answers, exact match, hit rate, seconds per prompt.

`export-check`: what the release gate's export check (gates.ExportCheck) says of a file that is not the PyTorch
model, against its baseline in the same run, the same model in both runtimes: the released fine-tune (registry)
de-quantized into PyTorch against the configured base GGUF in llama.cpp (an export that lost the fine-tune), the
reverse pairing, and the fine-tune in both (the control). Agreement within the margin, exact agreement, gaps.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from models.clusters import load_serving
from models.finetune import curation, gates, quantize, training
from streams.movielens import dataset_dir, load_ratings
from streams.settings import Settings


def print_table(header: list[str], rows: list[list[str]]) -> None:
    table = Table(*header)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def _curated(settings: Settings):
    clusters = load_serving(settings)
    ratings = load_ratings(dataset_dir(settings, progress=False))
    counts = curation.transition_counts(ratings, clusters.cluster_of, settings)
    return clusters, curation.curate(counts, clusters, curation.split_day_of(ratings, settings.train_fraction), settings)


def methods(steps: int, threads: int) -> None:
    import torch

    rows = []
    for method in ("lora", "full"):
        settings = Settings(finetune_threads=threads, finetune_method=method, finetune_budget_s=100_000)
        clusters, curated = _curated(settings)
        settings = settings.model_copy(update={"finetune_max_epochs": steps * settings.finetune_batch_size
                                               / len(curated.examples)})
        tokenizer = training.PromptTokenizer(settings.resolved_model_path())
        prefix, encoded = training.encode(curated.examples, clusters, tokenizer)
        held = [curation.Example(p.history, max(p.next_counts, key=p.next_counts.get),
                                 p.knowledge if i % 2 else None, 1, 1.0) for i, p in enumerate(curated.held_out[:48])]
        _, validation = training.encode(held, clusters, tokenizer)
        model = training.load_base(settings.resolved_model_path())

        def loss(m, prefix=prefix, validation=validation, pad=tokenizer.eos) -> float:
            m.eval()
            with torch.no_grad():
                return statistics.mean(float(training.answer_loss(m, prefix, validation[i:i + 8], pad))
                                       for i in range(0, len(validation), 8))

        before = loss(model)
        ticks = [time.perf_counter()]
        model, result = training.train(model, prefix, encoded, settings, tokenizer.eos,
                                       on_step=lambda *_, ticks=ticks: ticks.append(time.perf_counter()))
        durations = [b - a for a, b in itertools.pairwise(ticks)]
        rows.append([method, f"{result.trainable_params / 1e6:.1f}M", f"{statistics.median(durations[1:]):.2f}",
                     str(result.steps), f"{result.train_s:.0f}", f"{before:.3f} -> {loss(model):.3f}",
                     f"{result.learning_rate:g}"])
        tokenizer.close()
    print_table(["method", "trainable", "median step s", "steps", "train s", "held-out answer loss", "lr"], rows)


def quant(f16: Path, pairs: int, threads: int) -> None:
    settings = Settings(finetune_threads=threads)
    clusters, curated = _curated(settings)
    held = curated.held_out[:pairs]
    tokenizer = training.PromptTokenizer(f16)
    rows, reference = [], None
    for kind in ("F16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0"):
        path = f16 if kind == "F16" else quantize.quantize(f16, f16.with_name(f".bench-{kind}.gguf"), kind, threads)
        started = time.perf_counter()
        evaluation = gates.evaluate(path, held, clusters, tokenizer, threads)
        per_prompt = (time.perf_counter() - started) / len(evaluation.tokens)
        reference = reference or evaluation.tokens
        metrics = evaluation.metrics
        rows.append([kind, f"{path.stat().st_size / 1e6:.1f}", f"{gates.agreement(reference, evaluation.tokens):.3f}",
                     f"{metrics['all']['exact_match']:.3f}", f"{metrics['knowledge']['hit_rate']:.3f}",
                     f"{metrics['plain']['hit_rate']:.3f}", f"{per_prompt:.3f}"])
        if path != f16:
            path.unlink()
    tokenizer.close()
    print_table(["type", "MB", "agreement with F16", "exact match", "hit rate (knowledge)", "hit rate (plain)",
                 "s / prompt"], rows)


def export_check(pairs: int, threads: int) -> None:
    from models.finetune import registry

    settings = Settings(finetune_threads=threads)
    clusters, curated = _curated(settings)
    held = curated.held_out[:pairs]
    base, tuned = settings.resolved_model_path(), Path(registry.current_model_path(settings))
    if tuned.resolve() == Path(base).resolve():
        raise SystemExit("no released fine-tune in the registry: run `explorer finetune` first")
    tokenizer = training.PromptTokenizer(base)
    files = {"fine-tune": tuned, "base": Path(base)}
    answers = {name: gates.evaluate(path, held, clusters, tokenizer, threads) for name, path in files.items()}
    max_new = max(len(t) for e in answers.values() for t in e.tokens) + 4
    rows = []
    for torch_name, file_name in (("fine-tune", "fine-tune"), ("fine-tune", "base"), ("base", "fine-tune")):
        model = training.load_base(files[torch_name])
        evaluation, gaps = answers[file_name], []
        for index, prompt in enumerate(evaluation.prompts):
            static, rest = gates.prompt_tokens(prompt, clusters, tokenizer)
            gaps.append(training.answer_gap(model, static + rest, evaluation.tokens[index], tokenizer.eog, max_new))
        check = gates.ExportCheck(tuple(gaps), settings.finetune_agreement_margin_nats)
        differing = [g for g in gaps if g is not None]
        rows.append([f"PyTorch {torch_name} / llama.cpp {file_name}", str(len(gaps)), f"{check.agreement:.3f}",
                     f"{check.exact_agreement:.3f}",
                     f"{statistics.median(differing):.2f}" if differing else "-",
                     f"{min(differing):.2f}-{max(differing):.2f}" if differing else "-"])
    tokenizer.close()
    print_table(["pairing (the first row is the baseline: one model, two runtimes)", "prompts",
                 f"agreement (margin {settings.finetune_agreement_margin_nats} nats)", "exact", "median gap",
                 "gap range"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    m = sub.add_parser("methods")
    m.add_argument("--steps", type=int, default=31)
    m.add_argument("--threads", type=int, default=1)
    q = sub.add_parser("quant")
    q.add_argument("f16", type=Path)
    q.add_argument("--pairs", type=int, default=40)
    q.add_argument("--threads", type=int, default=1)
    e = sub.add_parser("export-check")
    e.add_argument("--pairs", type=int, default=24)
    e.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.what == "methods":
        methods(args.steps, args.threads)
    elif args.what == "quant":
        quant(args.f16, args.pairs, args.threads)
    else:
        export_check(args.pairs, args.threads)


if __name__ == "__main__":
    main()
