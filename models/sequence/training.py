"""Training: per-user sequences, overlapping training windows, the seeded full-softmax training loop with
early stopping on validation NDCG@10 within a wall-clock budget."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.sequence.metrics import Holdout, hit_and_ndcg, holdout_ranks
from models.sequence.model import NEG, PAD, SASRec, SequenceConfig
from streams.settings import Settings


def user_sequences(ratings: Iterable[Any], settings: Settings, positives_only: bool = False) -> dict[str, list[str]]:
    """Per user, item ids in the order given (load_ratings: event time, ties by event_id)."""
    sequences: dict[str, list[str]] = {}
    for r in ratings:
        if positives_only and not settings.is_positive("rating", r.rating):
            continue
        sequences.setdefault(r.user_id, []).append(r.item_id)
    return sequences


def training_windows(sequences: Iterable[Sequence[int]], max_len: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets), both (W, max_len) left-padded; a target of PAD carries no loss.

    For a history x0..x(n-1) the steps are (x_t -> x_t+1). The first window holds steps [0, max_len); each next one
    ends `stride` steps later and scores only those new steps, with the max_len - stride steps before as context."""
    stride = min(stride, max_len)
    inputs: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    for seq in sequences:
        steps = len(seq) - 1
        if steps < 1:
            continue
        x, y = np.asarray(seq[:-1], dtype=np.int64), np.asarray(seq[1:], dtype=np.int64)
        end, scored_from = min(max_len, steps), 0
        while True:
            start = max(0, end - max_len)
            row_in, row_out = np.zeros(max_len, np.int64), np.zeros(max_len, np.int64)
            width = end - start
            row_in[max_len - width:] = x[start:end]
            row_out[max_len - width:] = y[start:end]
            row_out[max_len - width: max_len - (end - scored_from)] = PAD  # already scored by an earlier window
            inputs.append(row_in)
            targets.append(row_out)
            if end == steps:
                break
            scored_from, end = end, min(end + stride, steps)
    if not inputs:
        raise ValueError("no training steps: every sequence has fewer than two items")
    return np.stack(inputs), np.stack(targets)


# ---------------------------------------------------------------- training
@dataclass
class TrainReport:
    epochs: int = 0
    best_epoch: int = 0
    best_valid_ndcg: float | None = None
    seconds: float = 0.0
    stopped: str = ""  # patience | budget | max_epochs
    losses: list[float] = field(default_factory=list)
    valid_ndcg: list[float] = field(default_factory=list)


@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """Seeded torch RNG and deterministic kernels for the block, leaving the caller's global state as it was."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was_deterministic, warn_only=warn_only)


def train_model(train: Sequence[Sequence[int]], n_items: int, config: SequenceConfig, valid: Holdout | None = None,
                progress: bool = True, description: str = "SASRec") -> tuple[SASRec, TrainReport]:
    """Train on item-index sequences (1..n_items); with `valid`, keep the epoch with the best NDCG@10 on it."""
    inputs, targets = training_windows(train, config.max_len, config.stride)
    report = TrainReport()
    rng = np.random.default_rng(config.seed)
    started = time.perf_counter()
    with _deterministic(config.seed), _progress_bar(progress, description, config.max_epochs) as bar:
        model = SASRec(n_items, config)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        best_state, since_best = None, 0
        for epoch in range(1, config.max_epochs + 1):
            model.train()
            order = rng.permutation(len(inputs))
            total, count = 0.0, 0
            for lo in range(0, len(order), config.batch_size):
                rows = order[lo: lo + config.batch_size]
                x, y = torch.from_numpy(inputs[rows]), torch.from_numpy(targets[rows])
                scored = y != PAD
                logits = model.item_logits(model.encode(x)[scored])
                logits[:, PAD] = NEG
                loss = F.cross_entropy(logits, y[scored])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scored_count = int(scored.sum())
                total += loss.item() * scored_count
                count += scored_count
            report.epochs = epoch
            report.losses.append(total / max(count, 1))
            status = f"loss {report.losses[-1]:.4f}"
            if valid is not None:
                _, ndcg = hit_and_ndcg(holdout_ranks(model, valid, config.max_len))
                report.valid_ndcg.append(ndcg)
                if report.best_valid_ndcg is None or ndcg > report.best_valid_ndcg:
                    report.best_valid_ndcg, report.best_epoch, since_best = ndcg, epoch, 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    since_best += 1
                status += f"  valid NDCG@10 {ndcg:.4f} (best {report.best_valid_ndcg:.4f} @ {report.best_epoch})"
            else:
                report.best_epoch = epoch
            bar(epoch, status)
            elapsed = time.perf_counter() - started
            if valid is not None and since_best >= config.patience:
                report.stopped = "patience"
                break
            # stop when the next epoch would likely end past the budget
            if elapsed + elapsed / epoch > config.budget_s:
                report.stopped = "budget"
                break
        else:
            report.stopped = "max_epochs"
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
    report.seconds = time.perf_counter() - started
    return model, report


@contextlib.contextmanager
def _progress_bar(enabled: bool, description: str, total: int) -> Iterator[Any]:
    if not enabled:
        yield lambda epoch, status: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[status]}"), console=Console(stderr=True)) as progress:
        task = progress.add_task(description, total=total, status="")
        yield lambda epoch, status: progress.update(task, completed=epoch, status=status)
