"""The network: SASRec (config, pre-LayerNorm causal self-attention blocks, shared item embedding), and the
left padding its inputs take. Tensor shapes are in the docstrings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from streams.settings import Settings


PAD = 0  # item index 0 is padding; real items are 1..n
NEG = -1e30  # "minus infinity" that keeps arithmetic finite


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
        logits[:, PAD] = NEG
        return logits


def pad_left(seqs: Sequence[Sequence[int]], max_len: int) -> torch.Tensor:
    """The last `max_len` items of each sequence, left-padded to a common length (at least 1)."""
    width = max(1, min(max_len, max((len(s) for s in seqs), default=1)))
    out = torch.zeros(len(seqs), width, dtype=torch.long)
    for row, seq in enumerate(seqs):
        tail = list(seq[-width:])
        if tail:
            out[row, width - len(tail):] = torch.tensor(tail, dtype=torch.long)
    return out
