"""Pure helpers for decoding an answer constrained to a set of candidate strings: a GBNF grammar, and a token trie
with the per-node bookkeeping the trie-greedy and candidate-scoring decoders need. No llama.cpp calls here."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


def gbnf_alternation(names: Sequence[str]) -> str:
    """A grammar whose root is exactly one of `names`: `root ::= "A" | "B" | ...`."""
    if not names:
        raise ValueError("a grammar needs at least one candidate")
    return "root ::= " + " | ".join(_gbnf_literal(name) for name in names) + "\n"


def _gbnf_literal(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


@dataclass(eq=False)
class TrieNode:
    token: int  # the token that leads here (-1 at the root)
    depth: int  # tokens from the root (the root is 0)
    children: dict[int, TrieNode] = field(default_factory=dict)
    terminal: int | None = None  # the candidate whose tokens end exactly here
    candidates: list[int] = field(default_factory=list)  # every candidate at or below this node


class TokenTrie:
    """Candidates' token sequences in a trie. Candidate k is `sequences[k]`; sequences must be distinct and
    non-empty (one may be a prefix of another: its end is then a `terminal` node with children)."""

    def __init__(self, sequences: Sequence[Sequence[int]]):
        self.root = TrieNode(token=-1, depth=0)
        self.sequences = [tuple(s) for s in sequences]
        for index, tokens in enumerate(self.sequences):
            if not tokens:
                raise ValueError(f"candidate {index} has no tokens")
            node = self.root
            node.candidates.append(index)
            for token in tokens:
                child = node.children.get(token)
                if child is None:
                    child = node.children[token] = TrieNode(token=token, depth=node.depth + 1)
                child.candidates.append(index)
                node = child
            if node.terminal is not None:
                raise ValueError(f"candidates {node.terminal} and {index} have the same tokens")
            node.terminal = index

    def nodes(self) -> list[TrieNode]:
        """Every node but the root, parents before children (breadth first)."""
        found, frontier = [], list(self.root.children.values())
        while frontier:
            found.extend(frontier)
            frontier = [child for node in frontier for child in node.children.values()]
        return found


class PieceIndex:
    """For each candidate name and each character offset into it, the vocabulary tokens whose text continues the
    name there: `at[name][i]` lists (token, length) with `name[i:i + length] == piece(token)`, tokens ascending."""

    def __init__(self, pieces: Mapping[int, str], names: Iterable[str]):
        self.piece = {token: piece for token, piece in pieces.items() if piece}
        by_piece: dict[str, list[int]] = {}
        for token, piece in self.piece.items():
            by_piece.setdefault(piece, []).append(token)
        longest = max(map(len, by_piece), default=0)
        self.at: dict[str, list[list[tuple[int, int]]]] = {}
        for name in names:
            self.at[name] = [
                sorted((token, length) for length in range(1, min(longest, len(name) - i) + 1)
                       for token in by_piece.get(name[i:i + length], ()))
                for i in range(len(name))
            ]
            if not self.at[name] or any(not options for options in self.at[name]):
                raise ValueError(f"the vocabulary cannot spell {name!r}")


def greedy_by_pieces(names: Sequence[str], index: PieceIndex, first_logits: np.ndarray,
                     advance: Callable[[int], np.ndarray], end_tokens: np.ndarray) -> tuple[int, int]:
    """Greedy decoding masked to the tokens that keep the answer a prefix of some name, at the level of text,
    exactly what a GBNF alternation of the names allows (any tokenization, not only the canonical one). The
    candidates still consistent with the text so far are a node of the names' character trie; decoding stops as
    soon as that node holds a single name. An end-of-answer token is allowed where a name is complete; ties go
    to the lower token id, as llama.cpp's greedy sampler does. `advance(token)` evaluates one token and returns
    the next logits; it is called only while the answer is still open. Returns (name index, tokens evaluated)."""
    live, offset, logits, evaluated = list(range(len(names))), 0, first_logits, 0
    while len(live) > 1:
        options: dict[int, int] = {}
        for k in live:
            if offset < len(names[k]):
                options.update(index.at[names[k]][offset])
        finished = [k for k in live if len(names[k]) == offset]
        tokens = np.fromiter(sorted(options), dtype=np.intp, count=len(options))
        best = int(tokens[int(np.argmax(logits[tokens]))]) if len(tokens) else -1
        if finished and (best < 0 or float(np.max(logits[end_tokens])) >= float(logits[best])):
            return finished[0], evaluated
        piece = index.piece[best]
        live = [k for k in live if names[k].startswith(piece, offset)]
        offset += len(piece)
        if len(live) > 1:
            logits = advance(best)
            evaluated += 1
    return live[0], evaluated


def path_log_probs(trie: TokenTrie, edge: dict[int, float], end: dict[int, float], prefix: bool = False
                   ) -> np.ndarray:
    """Each candidate's total log-probability, end of answer included: log p(t1 | prompt) + sum log p(ti | prompt,
    t<i) + log p(end | prompt, name). `edge[id(node)]` is the log-probability of the node's token given its
    ancestors, `end[id(node)]` that of ending the answer after it.

    `prefix`: only up to the token that tells the candidate apart from every other one, its distinguishing prefix
    (and the end of the answer where the name ends before that, i.e. it is a prefix of another name). The rest of
    the name is taken as certain -- a model that has learned the names completes a name it has started -- so only
    the trie nodes two or more candidates share need logits (`shared_nodes`)."""
    scores = np.empty(len(trie.sequences), dtype=np.float64)
    for index, tokens in enumerate(trie.sequences):
        node, total = trie.root, 0.0
        for token in tokens:
            node = node.children[token]
            total += edge[id(node)]
            if prefix and len(node.candidates) == 1:
                break
        else:
            total += end[id(node)]
        scores[index] = total
    return scores


def prefix_log_probs(trie: TokenTrie, edge: dict[int, float], end: dict[int, float]) -> np.ndarray:
    """`path_log_probs` over each candidate's distinguishing prefix."""
    return path_log_probs(trie, edge, end, prefix=True)


def shared_nodes(trie: TokenTrie) -> list[TrieNode]:
    """The nodes (parents before children, root excluded) below which two or more candidates lie: the only ones
    whose logits `prefix_log_probs` reads."""
    return [node for node in trie.nodes() if len(node.candidates) >= 2]


def log_normalizers(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-sum-exp (float64 accumulation over float32 logits)."""
    top = logits.max(axis=1)
    return top.astype(np.float64) + np.log(np.exp(logits - top[:, None]).sum(axis=1, dtype=np.float64))
