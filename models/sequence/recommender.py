"""The serving side: a trained model plus its item vocabulary, fitted from per-user histories, scoring and
ranking next items (restrictable to a cluster), saved to and loaded from the versioned store."""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch

from models.sequence.metrics import Holdout
from models.sequence.model import NEG, PAD, SASRec, SequenceConfig, pad_left
from models.sequence.storage import CURRENT, FORMAT, MODEL_FILE, SequenceModelNotTrained, sequence_root, sequence_store
from models.sequence.training import TrainReport, train_model
from streams.settings import Settings


class SequenceRecommender:
    """A trained model plus its item vocabulary: scores next items for a list of recent item ids."""

    def __init__(self, model: SASRec, config: SequenceConfig, item_ids: Sequence[str], popularity: Sequence[float],
                 version: str = "", meta: Mapping[str, Any] | None = None) -> None:
        if len(item_ids) != model.n_items or len(popularity) != len(item_ids):
            raise ValueError("vocabulary, popularity and model disagree on the number of items")
        self.model, self.config, self.version = model.eval(), config, version
        self.item_ids = tuple(item_ids)
        self.index = {item: i + 1 for i, item in enumerate(self.item_ids)}
        self.popularity = torch.tensor([NEG, *popularity], dtype=torch.float32)  # fallback scores, padding masked
        self.meta = dict(meta or {})

    # -- building
    @classmethod
    def fit(cls, sequences: Mapping[str, Sequence[str]], config: SequenceConfig | None = None,
            item_ids: Sequence[str] | None = None, progress: bool = True) -> tuple[SequenceRecommender, TrainReport]:
        """Train on per-user item-id histories. Each user with 3+ items has the last one held out to pick the epoch
        (early stopping); `item_ids` (default: every item seen) is the vocabulary, so unseen catalogue items can
        still be scored and restricted to."""
        config = config or SequenceConfig()
        vocab = vocabulary(sequences, item_ids)
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
        return [self.top_k(row, k, allowed, excluded)
                for row, allowed, excluded in zip(scores, allowed_items, exclude, strict=True)]

    def top_k(self, row: torch.Tensor, k: int, allowed_items: Iterable[str] | None = None,
              exclude: Iterable[str] = ()) -> list[tuple[str, float]]:
        """`recommend` off one row of `score_batch` (a caller that reads the row for something else too)."""
        if k <= 0:
            return []
        if allowed_items is None:
            candidates = row.clone()
            candidates[PAD] = NEG
            banned = [self.index[i] for i in exclude if i in self.index]
            if banned:
                candidates[banned] = NEG
            top = torch.topk(candidates, min(k, len(self.item_ids)))
            picked = [(int(i), float(s)) for i, s in zip(top.indices, top.values, strict=True) if s > NEG / 2]
        else:
            banned_ids = set(exclude)
            indices = sorted({self.index[i] for i in allowed_items if i in self.index and i not in banned_ids})
            if not indices:
                return []
            top = torch.topk(row[indices], min(k, len(indices)))
            picked = [(indices[int(i)], float(s)) for i, s in zip(top.indices, top.values, strict=True)]
        return [(self.item_ids[i - 1], s) for i, s in picked]

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


def vocabulary(sequences: Mapping[str, Sequence[str]], item_ids: Sequence[str] | None) -> list[str]:
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


def load_current(settings: Settings) -> SequenceRecommender:
    version = sequence_store(settings).pointer(CURRENT)
    if version is None:
        raise SequenceModelNotTrained(f"no sequence model under {sequence_root(settings)}: train one first "
                                      "(models.sequence.train_and_save)")
    return load_version(settings, version)


def load_current_for_split(settings: Settings) -> SequenceRecommender:
    """The current model, refused unless it learned from the configured training period (`train_fraction`): an
    offline evaluation of the test period must not read a model that saw it."""
    model = load_current(settings)
    if model.meta.get("train_fraction", settings.train_fraction) != settings.train_fraction:
        raise SequenceModelNotTrained("the current sequence model was trained on another split")
    return model


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
