"""Next-item ranking metrics: a held-out case set, each target's rank among all items, HR@k and NDCG@k."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.sequence.model import NEG, PAD, SASRec, pad_left


@dataclass(frozen=True)
class Holdout:
    """Next-item cases: predict `targets[i]` from `prefixes[i]`, ignoring the items in `exclude[i]`."""
    prefixes: list[list[int]]
    targets: list[int]
    exclude: list[list[int]] | None = None


def rank_of_targets(logits: torch.Tensor, targets: torch.Tensor, exclude: list[list[int]] | None) -> torch.Tensor:
    """0-based rank of each target among all items (padding and excluded items masked, the target itself never);
    ties count in its favour."""
    target_scores = logits.gather(1, targets.view(-1, 1))
    logits = logits.clone()
    logits[:, PAD] = NEG
    if exclude is not None:
        rows = [torch.full((len(items),), i, dtype=torch.long) for i, items in enumerate(exclude)]
        cols = [torch.as_tensor(items, dtype=torch.long) for items in exclude]
        if rows:
            logits[torch.cat(rows), torch.cat(cols)] = NEG
    return (logits > target_scores).sum(dim=1)


def hit_and_ndcg(ranks: torch.Tensor | np.ndarray, k: int = 10) -> tuple[float, float]:
    """HR@k and NDCG@k for one relevant item per case, from its 0-based ranks."""
    ranks = torch.as_tensor(ranks, dtype=torch.float64)
    if ranks.numel() == 0:
        return 0.0, 0.0
    hit = ranks < k
    gains = torch.where(hit, 1.0 / torch.log2(ranks + 2.0), torch.zeros_like(ranks))
    return float(hit.double().mean()), float(gains.mean())


@torch.inference_mode()
def holdout_ranks(model: SASRec, holdout: Holdout, max_len: int, batch: int = 512) -> torch.Tensor:
    was_training = model.training
    model.eval()
    ranks = []
    for lo in range(0, len(holdout.targets), batch):
        hi = lo + batch
        logits = model.last_logits(pad_left(holdout.prefixes[lo:hi], max_len))
        exclude = None if holdout.exclude is None else holdout.exclude[lo:hi]
        ranks.append(rank_of_targets(logits, torch.tensor(holdout.targets[lo:hi]), exclude))
    model.train(was_training)
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)
