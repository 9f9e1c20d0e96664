"""A SASRec-style next-item recommender (Kang & McAuley 2018), in PyTorch, CPU-friendly, restrictable to one cluster.

Model: item embedding + learned positional embedding -> `blocks` pre-LayerNorm causal self-attention blocks
(multi-head attention, GELU feed-forward, dropout, residuals) -> final LayerNorm; the next item's score is the dot
product of the last hidden state with the (shared) item embedding.

Training is SASRec's sequence-to-sequence one, with the full softmax (cross-entropy over every item) instead of one
sampled negative: each user's history is cut into windows of `max_len` steps and every position in a window predicts
the item that follows it. Windows overlap by `max_len - stride` steps and only the steps no earlier window scored
carry loss, so every target sees at least `max_len - stride` items of context and is counted once per epoch. Early
stopping keeps the epoch with the best validation NDCG@10 (each user's last history item held out), within a
wall-clock budget. Runs are seeded and deterministic: the same data, config and seed give the same weights.

Inference (`SequenceRecommender.recommend`) scores every item from the user's recent items and, when given the
novel cluster's items, ranks only those (everything else is masked), never returning excluded items.

Trained models are saved under <data_dir>/models/sequence/<version>/ (weights, config, item vocabulary), version =
hash of config + training data + seed (+ the epoch training stopped at), with an atomically replaced `current`
pointer; `load_current` reads it back. Torch threads are the caller's choice: on a small shared machine
torch.set_num_threads(1) is much faster than the default (OpenMP threads fighting for cores).

Modules by job: `model` (config and network), `training` (data windows and the training loop), `metrics` (ranks,
HR/NDCG), `recommender` (fit, scoring, save/load), `storage` (where versions live), `build` (the MovieLens training
job). The names below are the package's public API.
"""

from __future__ import annotations

from models.sequence.build import train_and_save
from models.sequence.metrics import Holdout, hit_and_ndcg, holdout_ranks, rank_of_targets
from models.sequence.model import NEG, PAD, SASRec, SequenceConfig, pad_left
from models.sequence.recommender import (
    SequenceRecommender,
    load_current,
    load_current_for_split,
    load_version,
    vocabulary,
)
from models.sequence.storage import CURRENT, FORMAT, MODEL_FILE, SequenceModelNotTrained, sequence_root, sequence_store
from models.sequence.training import TrainReport, train_model, training_windows, user_sequences

__all__ = ["CURRENT", "FORMAT", "MODEL_FILE", "NEG", "PAD", "Holdout", "SASRec", "SequenceConfig",
           "SequenceModelNotTrained", "SequenceRecommender", "TrainReport", "hit_and_ndcg", "holdout_ranks",
           "load_current", "load_current_for_split", "load_version", "pad_left", "rank_of_targets", "sequence_root",
           "sequence_store", "train_and_save", "train_model", "training_windows", "user_sequences", "vocabulary"]
