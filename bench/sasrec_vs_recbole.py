"""Our SASRec (models/sequence.py) against RecBole 1.2.1's SASRec, on the same MovieLens-100k split, in one run.

    python -m bench.sasrec_vs_recbole [--budget-s 900] [--threads 1] [--seed 2020] [--json-out FILE]

Data and split, identical on both sides (the run checks it user by user and stops if not):
- all 100,000 MovieLens-100k ratings (every interaction, any rating value), 943 users, 1,682 items, no filtering:
  RecBole's ml-100k defaults (no rating threshold, no k-core) and ours agree;
- per user in event-time order with ties broken by event_id (our load_ratings order). RecBole sorts stably by
  timestamp, so it is handed an ml-100k.inter with the rows already in our order and keeps our tie order;
- leave-one-out by time (RecBole: eval_args split {LS: valid_and_test}, order TO, mode full): the last interaction
  is the test target, the second-last the validation target, the rest trains; inputs are the last 50 items
  (MAX_ITEM_LIST_LENGTH 50 / max_len 50).
Metrics (HR@10, NDCG@10, full ranking over all 1,682 items) are computed on both sides by the same rule, twice:
- "RecBole protocol": nothing but padding masked, which is what RecBole 1.2.1 does for sequential models (it only
  supports `repeatable` evaluation for them); RecBole's own reported test numbers are printed next to ours;
- "history masked": the user's other interacted items are also removed from the ranking.
Budget, the same for both: one wall-clock budget for training (validation each epoch included), early stopping on
validation NDCG@10 with patience 10 epochs, the best validation epoch restored for the test, and both sides stop
before an epoch that would likely end past the budget. The same torch version and thread count on both sides.
RecBole runs with its SASRec defaults (hidden 64, 2 layers, 2 heads, inner 256, dropout 0.5/0.5, CE loss over all
items on each sequence's last step, batch 2048, Adam lr 1e-3) except valid_metric (NDCG@10 instead of MRR@10).

Measured on the 2-core shared dev machine, torch 2.15 CPU, 1 thread, seed 2020 (HR@10 / NDCG@10, RecBole protocol;
history masked in brackets): ours 0.1432 / 0.0708 (0.2089 / 0.1110) in 387 s (48 epochs, best 38, patience);
RecBole 0.0541 / 0.0275 (0.1007 / 0.0536) in 675 s (2 epochs, budget 900 s); RecBole given 3300 s: 0.1071 / 0.0532
(0.1591 / 0.0854) in 3066 s (9 epochs, still improving). RecBole's epoch (~340 s) feeds every prefix as its own
50-step sequence and scores only its last step; ours scores every step of each window (~8 s per epoch).

RecBole lives in its own virtualenv (bench/recbole_env.sh, created on first use under .explorer/recbole-venv):
this file is also the driver that runs there (`--recbole-driver`), importing nothing from the project.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
K = 10
DATASET = "ml-100k-ordered"


# ---------------------------------------------------------------- the bench (project environment)
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-s", type=float, default=900.0, help="training wall-clock budget for each side")
    parser.add_argument("--patience", type=int, default=10, help="epochs without a better validation NDCG@10")
    parser.add_argument("--max-epochs", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides (the machine is shared)")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--json-out", type=Path, help="also write the results here as JSON")
    parser.add_argument("--skip-recbole", action="store_true", help="run our side only")
    parser.add_argument("--skip-ours", action="store_true", help="run RecBole's side only")
    parser.add_argument("--recbole-driver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data-path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.recbole_driver:
        recbole_driver(args)
        return

    import torch

    from models.sequence import SequenceConfig
    from models.sequence_eval import evaluate_split, leave_one_out
    from streams.movielens import dataset_dir, load_ratings
    from streams.settings import Settings

    settings = Settings()
    ratings = load_ratings(dataset_dir(settings))
    sequences: dict[str, list[str]] = {}
    for r in ratings:
        sequences.setdefault(r.user_id, []).append(r.item_id)
    split = leave_one_out(sequences)
    print(f"MovieLens-100k: {len(ratings):,} ratings, {len(split.users)} users, {len(split.item_ids)} items; "
          f"budget {args.budget_s:.0f} s per side, {args.threads} torch thread(s), seed {args.seed}", file=sys.stderr)

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="sasrec-bench-") as tmp:
        if not args.skip_recbole:
            data_path = Path(tmp) / "dataset"
            _write_recbole_inter(ratings, data_path / DATASET / f"{DATASET}.inter")
            python = _recbole_python()
            out = Path(tmp) / "recbole.json"
            command = [python, str(Path(__file__).resolve()), "--recbole-driver", "--data-path", str(data_path),
                       "--out", str(out), "--budget-s", str(args.budget_s), "--patience", str(args.patience),
                       "--max-epochs", str(args.max_epochs), "--threads", str(args.threads), "--seed", str(args.seed)]
            print("RecBole SASRec (separate venv)...", file=sys.stderr)
            subprocess.run(command, cwd=tmp, check=True,
                           env={**os.environ, "PYTHONPATH": "", "PYTHONWARNINGS": "ignore"})  # pandas chatter
            recbole = json.loads(out.read_text())
            _check_same_split(split, recbole.pop("split"))
            print(f"split check: RecBole's leave-one-out equals ours for all {len(split.users)} users "
                  "(validation and test targets, number of training steps, test inputs)", file=sys.stderr)
            results["RecBole 1.2.1 SASRec"] = recbole

        torch.set_num_threads(args.threads)
        config = SequenceConfig(seed=args.seed, budget_s=args.budget_s, patience=args.patience,
                                max_epochs=args.max_epochs)
        if not args.skip_ours:
            ours = evaluate_split(split, config, progress=sys.stderr.isatty(), k=K)
            results["ours (models/sequence.py)"] = {
                "hr_unfiltered": ours.hr_unfiltered, "ndcg_unfiltered": ours.ndcg_unfiltered, "hr": ours.hr,
                "ndcg": ours.ndcg, "train_seconds": ours.train_seconds, "epochs": ours.epochs,
                "best_epoch": ours.best_epoch, "stopped": ours.stopped, "config": config.to_json(),
            }

    latency = _recommend_latency(split.item_ids, config)
    _print_results(results, args)
    print(f"recommend() latency, full-size model ({len(split.item_ids)} items, max_len {config.max_len}), "
          f"{args.threads} thread(s): restricted to a {latency['allowed']}-item cluster p50 "
          f"{latency['restricted_p50_ms']:.2f} ms, p95 {latency['restricted_p95_ms']:.2f} ms; all items p50 "
          f"{latency['all_p50_ms']:.2f} ms; batch of 64 users {latency['batch64_ms']:.1f} ms")
    if args.json_out:
        args.json_out.write_text(json.dumps({"budget_s": args.budget_s, "threads": args.threads, "seed": args.seed,
                                             "torch": torch.__version__, "results": results,
                                             "recommend_latency": latency}, indent=2))


def _recommend_latency(item_ids: list[str], config) -> dict:
    """Per-call latency of SequenceRecommender.recommend at production size (weights do not change the cost)."""
    import random
    import statistics

    import torch

    from models.sequence import SASRec, SequenceRecommender

    torch.manual_seed(0)
    recommender = SequenceRecommender(SASRec(len(item_ids), config), config, item_ids, [1.0] * len(item_ids))
    rng = random.Random(0)
    allowed = set(rng.sample(item_ids, len(item_ids) // 40))
    histories = [rng.sample(item_ids, 60) for _ in range(64)]

    def timed(call, repeat: int) -> list[float]:
        out = []
        for i in range(repeat):
            started = time.perf_counter()
            call(i)
            out.append((time.perf_counter() - started) * 1000)
        return sorted(out)

    timed(lambda i: recommender.recommend(histories[i % 64], 10, allowed, set(histories[i % 64])), 20)  # warm-up
    restricted = timed(lambda i: recommender.recommend(histories[i % 64], 10, allowed, set(histories[i % 64])), 200)
    everything = timed(lambda i: recommender.recommend(histories[i % 64], 10, None, set(histories[i % 64])), 200)
    batch = timed(lambda i: recommender.recommend_batch(histories, 10, [allowed] * 64, [set(h) for h in histories]),
                  10)
    return {"allowed": len(allowed), "restricted_p50_ms": statistics.median(restricted),
            "restricted_p95_ms": restricted[int(len(restricted) * 0.95)], "all_p50_ms": statistics.median(everything),
            "batch64_ms": statistics.median(batch)}


def _recbole_python() -> str:
    done = subprocess.run(["bash", str(ROOT / "bench" / "recbole_env.sh")], check=True, capture_output=True,
                          text=True)
    return done.stdout.strip().splitlines()[-1]


def _write_recbole_inter(ratings, path: Path) -> None:
    """ml-100k.inter in our order (event time, then event_id), so RecBole's stable time sort keeps our tie order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        handle.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        for r in ratings:
            handle.write(f"{r.user_id}\t{r.item_id}\t{r.rating:g}\t{int(r.ts)}\n")


def _check_same_split(split, theirs: dict) -> None:
    items = split.item_ids
    problems = []
    if sorted(theirs) != sorted(split.users):
        problems.append(f"users differ ({len(theirs)} vs {len(split.users)})")
    for i, user in enumerate(split.users):
        got = theirs.get(user)
        if got is None:
            continue
        ours = {"valid": items[split.valid.targets[i] - 1], "test": items[split.test.targets[i] - 1],
                "train_steps": max(len(split.train[i]) - 1, 0),
                "test_input": [items[j - 1] for j in split.test.prefixes[i][-50:]]}
        for key, value in ours.items():
            if got[key] != value:
                problems.append(f"user {user}: {key} {got[key]!r} (RecBole) vs {value!r} (ours)")
    if problems:
        raise SystemExit("RecBole's split differs from ours:\n  " + "\n  ".join(problems[:20]))


def _print_results(results: dict[str, dict], args) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"SASRec on MovieLens-100k, leave-one-out by time, full ranking, @{K} "
                        f"(budget {args.budget_s:.0f} s, {args.threads} thread(s), seed {args.seed})")
    for column in ("model", "HR@10", "NDCG@10", "HR@10 (hist. masked)", "NDCG@10 (hist. masked)", "train s",
                   "epochs (best)", "stopped by"):
        table.add_column(column, justify="left" if column in ("model", "stopped by") else "right")
    for name, r in results.items():
        table.add_row(name, f"{r['hr_unfiltered']:.4f}", f"{r['ndcg_unfiltered']:.4f}", f"{r['hr']:.4f}",
                      f"{r['ndcg']:.4f}", f"{r['train_seconds']:.0f}", f"{r['epochs']} ({r['best_epoch']})",
                      r["stopped"])
    console = Console(width=160)
    console.print(table)
    if "official" in next(iter(results.values()), {}):
        official = next(iter(results.values()))["official"]
        console.print(f"RecBole's own test result (its evaluator, RecBole protocol): "
                      f"hit@10 {official.get('hit@10')}, ndcg@10 {official.get('ndcg@10')}")
    console.print("HR/NDCG: RecBole protocol (only padding masked, as RecBole 1.2.1 evaluates sequential models); "
                  "'hist. masked': the user's other interacted items removed from the ranking too.")


# ---------------------------------------------------------------- the RecBole driver (RecBole's environment)
class _BudgetSpent(Exception):
    pass


def recbole_driver(args) -> None:
    """Runs inside the RecBole venv: train SASRec on the prepared ml-100k, report metrics, split and time."""
    import logging

    import numpy as np
    import torch

    # torch >= 2.6 loads with weights_only=True; RecBole's own best-model checkpoint pickles its Config
    _load = torch.load
    torch.load = lambda *a, **kw: _load(*a, **{"weights_only": False, **kw})

    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    import recbole

    logging.basicConfig(level=logging.WARNING)
    sys.argv = sys.argv[:1]  # RecBole's Config also reads `--key=value` from the command line: give it none
    # RecBole always reads its bundled file for a dataset named "ml-100k"; ours (same rows, our order) gets another
    # name, with RecBole's ml-100k dataset properties applied explicitly
    properties = Path(recbole.__file__).parent / "properties" / "dataset" / "ml-100k.yaml"
    config = Config(model="SASRec", dataset=DATASET, config_file_list=[str(properties)], config_dict={
        "data_path": str(args.data_path), "checkpoint_dir": str(Path.cwd() / "saved"),
        "use_gpu": False, "seed": args.seed, "reproducibility": True, "show_progress": False,
        "epochs": args.max_epochs, "stopping_step": args.patience, "valid_metric": "NDCG@10",
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "repeatable": True, "train_neg_sample_args": None, "loss_type": "CE", "MAX_ITEM_LIST_LENGTH": 50,
        "metrics": ["Hit", "NDCG", "MRR"], "topk": [K], "log_wandb": False,
    })
    init_seed(config["seed"], config["reproducibility"])
    torch.set_num_threads(args.threads)
    dataset = create_dataset(config)
    uid, iid = dataset.uid_field, dataset.iid_field
    frame = dataset.inter_feat
    user_items: dict[int, set[int]] = {}
    for u, i in zip(frame[uid].to_numpy(), frame[iid].to_numpy(), strict=True):
        user_items.setdefault(int(u), set()).add(int(i))
    train_data, valid_data, test_data = data_preparation(config, dataset)

    init_seed(config["seed"], config["reproducibility"])
    model = SASRec(config, train_data.dataset).to(config["device"])
    trainer = Trainer(config, model)
    started = time.perf_counter()
    epochs = {"done": 0, "stopped": "patience"}

    def after_epoch(epoch_idx: int, valid_score: float) -> None:
        elapsed = time.perf_counter() - started
        epochs["done"] = epoch_idx + 1
        print(f"  RecBole epoch {epoch_idx + 1}: valid NDCG@10 {valid_score:.4f}, best "
              f"{trainer.best_valid_score:.4f}, {elapsed:.0f} s", file=sys.stderr, flush=True)
        if elapsed + elapsed / (epoch_idx + 1) > args.budget_s:
            raise _BudgetSpent

    try:
        trainer.fit(train_data, valid_data, saved=True, show_progress=False, verbose=False, callback_fn=after_epoch)
        if epochs["done"] >= args.max_epochs:
            epochs["stopped"] = "max_epochs"
    except _BudgetSpent:
        epochs["stopped"] = "budget"
    train_seconds = time.perf_counter() - started
    best_epoch = epochs["done"] - trainer.cur_step
    official = trainer.evaluate(test_data, load_best_model=True, show_progress=False)  # loads the best epoch

    # the same metric code as ours, with and without the user's other items masked
    model.eval()
    ranks_all, ranks_masked = [], []
    with torch.no_grad():
        for interaction, _, _, positive_i in test_data:
            scores = model.full_sort_predict(interaction).view(len(interaction), -1)
            scores[:, 0] = -1e30
            target = scores.gather(1, positive_i.view(-1, 1))
            ranks_all.append((scores > target).sum(1))
            for row, (u, t) in enumerate(zip(interaction[uid].tolist(), positive_i.tolist(), strict=True)):
                others = sorted(user_items[u] - {t})
                scores[row, others] = -1e30
            ranks_masked.append((scores > target).sum(1))

    def metrics(ranks: list) -> tuple[float, float]:
        r = torch.cat(ranks).double()
        hit = r < K
        return float(hit.double().mean()), float(torch.where(hit, 1 / torch.log2(r + 2), 0.0).mean())

    hr_all, ndcg_all = metrics(ranks_all)
    hr, ndcg = metrics(ranks_masked)
    split = {}
    for part, data in (("valid", valid_data), ("test", test_data)):
        feat = data.dataset.inter_feat
        for u, t in zip(feat[uid].tolist(), feat[iid].tolist(), strict=True):
            split.setdefault(str(dataset.id2token(uid, u)), {})[part] = str(dataset.id2token(iid, t))
        if part == "test":
            lists, lengths = feat[iid + config["LIST_SUFFIX"]], feat[config["ITEM_LIST_LENGTH_FIELD"]]
            for u, seq, n in zip(feat[uid].tolist(), lists.tolist(), lengths.tolist(), strict=True):
                split[str(dataset.id2token(uid, u))]["test_input"] = [str(x) for x in dataset.id2token(iid, seq[:n])]
    steps = np.bincount(train_data.dataset.inter_feat[uid].numpy())
    for user, entry in split.items():
        entry["train_steps"] = int(steps[dataset.token2id(uid, user)]) if dataset.token2id(uid, user) < len(steps) \
            else 0
    args.out.write_text(json.dumps({
        "hr_unfiltered": hr_all, "ndcg_unfiltered": ndcg_all, "hr": hr, "ndcg": ndcg,
        "official": {k: float(v) for k, v in official.items()}, "train_seconds": train_seconds,
        "epochs": epochs["done"], "best_epoch": best_epoch, "stopped": epochs["stopped"],
        "torch": torch.__version__, "split": split,
    }))


if __name__ == "__main__":
    main()
