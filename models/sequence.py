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
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
import torch.nn.functional as F
from torch import nn

from models.storage import VersionedStore
from streams.settings import Settings

PAD = 0  # item index 0 is padding; real items are 1..n
CURRENT = "current"
MODEL_FILE = "model.pt"
FORMAT = 1
_NEG = -1e30  # "minus infinity" that keeps arithmetic finite


class SequenceModelNotTrained(RuntimeError):
    """No trained sequence model is available; the message says how to make one."""


# ---------------------------------------------------------------- configuration
@dataclass(frozen=True)
class SequenceConfig:
    hidden: int = 64
    blocks: int = 2
    heads: int = 2
    inner: int = 256  # feed-forward width
    max_len: int = 50  # most recent items the model looks at
    dropout: float = 0.2  # embeddings and residual branches
    attn_dropout: float = 0.2
    lr: float = 2e-3
    weight_decay: float = 0.0
    batch_size: int = 128  # windows per step
    stride: int = 25  # new targets per window, at most max_len (max_len or more: disjoint windows)
    max_epochs: int = 200
    patience: int = 10  # epochs without a better validation NDCG@10 before stopping
    budget_s: float = 900.0  # wall-clock training budget (validation included); MovieLens stops by patience first
    seed: int = 7
    positives_only: bool = False  # train on positive engagements only (default: every interaction)

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if self.stride < 1 or self.max_len < 1:
            raise ValueError("stride and max_len must be positive")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SequenceConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> SequenceConfig:
        """Defaults, overridden by any `sequence_<field>` the settings carry, then by `overrides`."""
        values = {f.name: getattr(settings, f"sequence_{f.name}") for f in fields(cls)
                  if hasattr(settings, f"sequence_{f.name}")}
        return cls(**{**values, **overrides})


# ---------------------------------------------------------------- the network
class _Block(nn.Module):
    """Pre-LayerNorm transformer block: causal multi-head self-attention, then a GELU feed-forward."""

    def __init__(self, config: SequenceConfig) -> None:
        super().__init__()
        self.heads, self.attn_dropout = config.heads, config.attn_dropout
        self.norm1, self.norm2 = nn.LayerNorm(config.hidden), nn.LayerNorm(config.hidden)
        self.qkv = nn.Linear(config.hidden, 3 * config.hidden)
        self.proj = nn.Linear(config.hidden, config.hidden)
        self.ff1, self.ff2 = nn.Linear(config.hidden, config.inner), nn.Linear(config.inner, config.hidden)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, length, hidden = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, length, 3, self.heads, hidden // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                  dropout_p=self.attn_dropout if self.training else 0.0)
        x = x + self.drop(self.proj(attended.transpose(1, 2).reshape(b, length, hidden)))
        return x + self.drop(self.ff2(F.gelu(self.ff1(self.norm2(x)))))


class SASRec(nn.Module):
    def __init__(self, n_items: int, config: SequenceConfig) -> None:
        super().__init__()
        self.n_items, self.max_len = n_items, config.max_len
        self.item_emb = nn.Embedding(n_items + 1, config.hidden, padding_idx=PAD)
        self.pos_emb = nn.Embedding(config.max_len, config.hidden)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.blocks))
        self.norm = nn.LayerNorm(config.hidden)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, L, H) for left-padded item-index sequences (B, L), L <= max_len.

        Positions count back from the end (the last step always has position max_len-1), so a history shorter than
        max_len and the same history left-padded to max_len give the same states."""
        length = seq.shape[1]
        positions = torch.arange(self.max_len - length, self.max_len, device=seq.device)
        real = seq != PAD
        x = self.drop(self.item_emb(seq) + self.pos_emb(positions)) * real.unsqueeze(-1)
        eye = torch.eye(length, dtype=torch.bool, device=seq.device)
        causal = torch.ones(length, length, dtype=torch.bool, device=seq.device).tril()
        # query i may attend key j <= i when j is a real item; a padding query attends only itself (no empty rows)
        mask = ((causal & real.unsqueeze(1)) | eye).unsqueeze(1)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)

    def item_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores over all item indices (padding included: callers mask it)."""
        return hidden @ self.item_emb.weight.T

    def last_logits(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, n_items + 1) next-item scores after each sequence's last step; the padding column is -inf-like."""
        logits = self.item_logits(self.encode(seq)[:, -1])
        logits[:, PAD] = _NEG
        return logits


# ---------------------------------------------------------------- data
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


def pad_left(seqs: Sequence[Sequence[int]], max_len: int) -> torch.Tensor:
    """The last `max_len` items of each sequence, left-padded to a common length (at least 1)."""
    width = max(1, min(max_len, max((len(s) for s in seqs), default=1)))
    out = torch.zeros(len(seqs), width, dtype=torch.long)
    for row, seq in enumerate(seqs):
        tail = list(seq[-width:])
        if tail:
            out[row, width - len(tail):] = torch.tensor(tail, dtype=torch.long)
    return out


@dataclass(frozen=True)
class Holdout:
    """Next-item cases: predict `targets[i]` from `prefixes[i]`, ignoring the items in `exclude[i]`."""
    prefixes: list[list[int]]
    targets: list[int]
    exclude: list[list[int]] | None = None


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


def rank_of_targets(logits: torch.Tensor, targets: torch.Tensor, exclude: list[list[int]] | None) -> torch.Tensor:
    """0-based rank of each target among all items (padding and excluded items masked, the target itself never);
    ties count in its favour."""
    target_scores = logits.gather(1, targets.view(-1, 1))
    logits = logits.clone()
    logits[:, PAD] = _NEG
    if exclude is not None:
        rows = [torch.full((len(items),), i, dtype=torch.long) for i, items in enumerate(exclude)]
        cols = [torch.as_tensor(items, dtype=torch.long) for items in exclude]
        if rows:
            logits[torch.cat(rows), torch.cat(cols)] = _NEG
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
                logits[:, PAD] = _NEG
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


# ---------------------------------------------------------------- the recommender
class SequenceRecommender:
    """A trained model plus its item vocabulary: scores next items for a list of recent item ids."""

    def __init__(self, model: SASRec, config: SequenceConfig, item_ids: Sequence[str], popularity: Sequence[float],
                 version: str = "", meta: Mapping[str, Any] | None = None) -> None:
        if len(item_ids) != model.n_items or len(popularity) != len(item_ids):
            raise ValueError("vocabulary, popularity and model disagree on the number of items")
        self.model, self.config, self.version = model.eval(), config, version
        self.item_ids = tuple(item_ids)
        self.index = {item: i + 1 for i, item in enumerate(self.item_ids)}
        self.popularity = torch.tensor([_NEG, *popularity], dtype=torch.float32)  # fallback scores, padding masked
        self.meta = dict(meta or {})

    # -- building
    @classmethod
    def fit(cls, sequences: Mapping[str, Sequence[str]], config: SequenceConfig | None = None,
            item_ids: Sequence[str] | None = None, progress: bool = True) -> tuple[SequenceRecommender, TrainReport]:
        """Train on per-user item-id histories. Each user with 3+ items has the last one held out to pick the epoch
        (early stopping); `item_ids` (default: every item seen) is the vocabulary, so unseen catalogue items can
        still be scored and restricted to."""
        config = config or SequenceConfig()
        vocab = _vocabulary(sequences, item_ids)
        index = {item: i + 1 for i, item in enumerate(vocab)}
        encoded = {u: [index[i] for i in items if i in index] for u, items in sorted(sequences.items())}
        train = [s[:-1] if len(s) >= 3 else s for s in encoded.values()]
        valid = Holdout(prefixes=[s[:-1] for s in encoded.values() if len(s) >= 3],
                        targets=[s[-1] for s in encoded.values() if len(s) >= 3],
                        exclude=[sorted(set(s[:-1]) - {s[-1]}) for s in encoded.values() if len(s) >= 3])
        model, report = train_model(train, len(vocab), config, valid if valid.targets else None, progress)
        counts = Counter(i for s in encoded.values() for i in s)
        top = max(counts.values(), default=1)
        popularity = [counts.get(i + 1, 0) / top for i in range(len(vocab))]
        meta = {"format": FORMAT, "trained_at": time.time(), "users": len(encoded),
                "interactions": sum(len(s) for s in encoded.values()), "data_hash": _data_hash(encoded, vocab),
                "report": asdict(report)}
        recommender = cls(model, config, vocab, popularity, meta=meta)
        recommender.version = _version(config, meta["data_hash"], report)
        return recommender, report

    # -- inference
    def encode_history(self, recent_items: Sequence[str]) -> list[int]:
        known = [self.index[i] for i in recent_items if i in self.index]
        return known[-self.config.max_len:]

    @torch.inference_mode()
    def score_batch(self, histories: Sequence[Sequence[str]]) -> torch.Tensor:
        """(B, n_items + 1) scores by item index (column 0 is padding); a history with no known item gets the
        training popularity instead."""
        encoded = [self.encode_history(h) for h in histories]
        scores = self.popularity.repeat(len(encoded), 1)
        rows = [i for i, e in enumerate(encoded) if e]
        if rows:
            scores[rows] = self.model.last_logits(pad_left([encoded[i] for i in rows], self.config.max_len))
        return scores

    def recommend(self, recent_items: Sequence[str], k: int = 10, allowed_items: Iterable[str] | None = None,
                  exclude: Iterable[str] = ()) -> list[tuple[str, float]]:
        """Top-k (item_id, score) after `recent_items` (oldest first). With `allowed_items`, only those are ranked;
        items in `exclude` (typically what the user already had) never appear. Fewer than k when too few remain."""
        return self.recommend_batch([recent_items], k, [allowed_items], [exclude])[0]

    def recommend_batch(self, histories: Sequence[Sequence[str]], k: int = 10,
                        allowed_items: Sequence[Iterable[str] | None] | None = None,
                        exclude: Sequence[Iterable[str]] | None = None) -> list[list[tuple[str, float]]]:
        """`recommend` for many users in one forward pass; `allowed_items` and `exclude` are per user."""
        allowed_items = allowed_items if allowed_items is not None else [None] * len(histories)
        exclude = exclude if exclude is not None else [()] * len(histories)
        if not len(allowed_items) == len(exclude) == len(histories):
            raise ValueError("histories, allowed_items and exclude must have the same length")
        if k <= 0 or not histories:
            return [[] for _ in histories]
        scores = self.score_batch(histories)
        results = []
        for row, allowed, excluded in zip(scores, allowed_items, exclude, strict=True):
            if allowed is None:
                candidates = row.clone()
                candidates[PAD] = _NEG
                banned = [self.index[i] for i in excluded if i in self.index]
                if banned:
                    candidates[banned] = _NEG
                top = torch.topk(candidates, min(k, len(self.item_ids)))
                picked = [(int(i), float(s)) for i, s in zip(top.indices, top.values, strict=True) if s > _NEG / 2]
            else:
                banned_ids = set(excluded)
                indices = sorted({self.index[i] for i in allowed if i in self.index and i not in banned_ids})
                if not indices:
                    results.append([])
                    continue
                sub = row[indices]
                top = torch.topk(sub, min(k, len(indices)))
                picked = [(indices[int(i)], float(s)) for i, s in zip(top.indices, top.values, strict=True)]
            results.append([(self.item_ids[i - 1], s) for i, s in picked])
        return results

    # -- persistence
    def save(self, settings: Settings, make_current: bool = True) -> Path:
        store = sequence_store(settings)

        def fill(staging: Path) -> None:
            torch.save(self.model.state_dict(), staging / MODEL_FILE)
            (staging / "config.json").write_bytes(orjson.dumps(
                {"version": self.version, "config": self.config.to_json(), **self.meta}, option=orjson.OPT_INDENT_2))
            (staging / "items.json").write_bytes(orjson.dumps(
                {"item_ids": list(self.item_ids), "popularity": self.popularity[1:].tolist()}))

        folder = store.folder(self.version)
        if not store.has(self.version, MODEL_FILE):
            # Another process may save the same version first: the version names the weights, so keep theirs.
            folder = store.publish(self.version, fill, exists="keep")
        if make_current:
            store.set_pointer(CURRENT, self.version)
        return folder


def _vocabulary(sequences: Mapping[str, Sequence[str]], item_ids: Sequence[str] | None) -> list[str]:
    from models.embeddings import item_sort_key

    items = set(item_ids) if item_ids is not None else {i for s in sequences.values() for i in s}
    return sorted(items, key=item_sort_key)


def _data_hash(encoded: Mapping[str, Sequence[int]], vocab: Sequence[str]) -> str:
    digest = hashlib.sha256(orjson.dumps(list(vocab)))
    for user, items in encoded.items():
        digest.update(user.encode() + b"\0" + np.asarray(items, dtype=np.int32).tobytes() + b"\1")
    return digest.hexdigest()


def _version(config: SequenceConfig, data_hash: str, report: TrainReport) -> str:
    """Hash of config (seed included) + data, plus where training stopped: a wall-clock budget may stop the same
    run at different epochs on different machines, and the version must still name exactly one set of weights."""
    stop = f"{report.epochs}/{report.best_epoch}".encode()
    digest = hashlib.sha256(orjson.dumps(config.to_json(), option=orjson.OPT_SORT_KEYS) + data_hash.encode() + stop)
    return f"sasrec-{digest.hexdigest()[:12]}"


# ---------------------------------------------------------------- public API
def sequence_root(settings: Settings) -> Path:
    return settings.resolved_data_dir() / "models" / "sequence"


def sequence_store(settings: Settings) -> VersionedStore:
    return VersionedStore(sequence_root(settings), reserved=frozenset({CURRENT}))


def train_and_save(settings: Settings, config: SequenceConfig | None = None,
                   progress: bool = True) -> tuple[SequenceRecommender, TrainReport]:
    """Train on MovieLens's training period (the first `train_fraction` of events), save, make current."""
    from models.embeddings import training_ratings
    from streams.movielens import dataset_dir, load_movies, load_ratings

    config = config or SequenceConfig.from_settings(settings)
    folder = dataset_dir(settings, progress=progress)
    ratings = load_ratings(folder)
    train = training_ratings(ratings, settings.train_fraction)
    catalogue = set(load_movies(folder)) | {r.item_id for r in ratings}
    recommender, report = SequenceRecommender.fit(user_sequences(train, settings, config.positives_only), config,
                                                  item_ids=sorted(catalogue), progress=progress)
    recommender.meta["train_fraction"] = settings.train_fraction
    recommender.save(settings)
    return recommender, report


def load_current(settings: Settings) -> SequenceRecommender:
    version = sequence_store(settings).pointer(CURRENT)
    if version is None:
        raise SequenceModelNotTrained(f"no sequence model under {sequence_root(settings)}: train one first "
                                      "(models.sequence.train_and_save)")
    return load_version(settings, version)


def load_version(settings: Settings, version: str) -> SequenceRecommender:
    store = sequence_store(settings)
    folder = store.folder(version)
    if not store.has(version, MODEL_FILE):
        raise SequenceModelNotTrained(f"sequence model version {version!r} not found under {sequence_root(settings)}")
    info = orjson.loads((folder / "config.json").read_bytes())
    items = orjson.loads((folder / "items.json").read_bytes())
    config = SequenceConfig.from_json(info["config"])
    model = SASRec(len(items["item_ids"]), config)
    model.load_state_dict(torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True))
    meta = {k: v for k, v in info.items() if k not in ("version", "config")}
    return SequenceRecommender(model, config, items["item_ids"], items["popularity"], version=version, meta=meta)
