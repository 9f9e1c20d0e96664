"""The prompt that asks the quantized LLM for a user's next novel interest cluster.

SmolLM2's own chat template (ChatML) is rebuilt by hand rather than through `create_chat_completion`, because the
prompt is cut into three segments whose evaluated KV cache is reused at different rates (models/llm.py):

1. `static`   -- the system message and the start of the user turn: identical for every request, evaluated once;
2. `trending` -- the trending clusters: global, so consecutive requests usually share it;
3. `request`  -- the user's two latest clusters, the top next clusters for that pair with their counts, and the
   `<|im_start|>assistant\\n` that opens the answer (the instruction is in the system message, so the part
   evaluated on every request holds only data). Its first line pair, `request_head` ("I liked:" and the older
   cluster), is shared by every pair with the same first cluster, so a bulk build that walks the pairs grouped by
   their first cluster evaluates it once per group, not once per pair.

The answer starts right after that newline, with no leading space, and every cluster name in the prompt also
starts a line: the model then sees each name spelled with the very tokens it would answer with, which it copies far
more readily. Measured with greedy constrained decoding on 16 MovieLens pairs: names inline after ": "/"; " gave an
answer among the pair's top next clusters 0/16 times (nearly always the same name, chosen by its first letter),
names at line starts 12/16. SmolLM2's pre-tokenizer splits a newline from the letters after it, so the segments
tokenize apart exactly as the whole prompt does (checked in tests/unit/test_llm.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from models.clusters import ClusterSet

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SYSTEM = ("You recommend movies. A viewer's tastes are grouped into named interests. Given what a viewer liked, "
          "reply with the exact name of one interest they have not liked yet, nothing else.")
MAX_TOP_NEXT = 3
MAX_TRENDING = 3


@dataclass(frozen=True)
class Knowledge:
    """What the knowledge store retrieved for one request."""

    top_next: list[tuple[str, int]] = field(default_factory=list)  # (cluster_id, count): most common next clusters
    trending: list[str] = field(default_factory=list)  # cluster ids, most trending first


@dataclass(frozen=True)
class PromptSegments:
    static: str
    trending: str
    request: str
    request_head: str = ""  # the start of `request` that depends only on the older cluster

    def __post_init__(self) -> None:
        if not self.request.startswith(self.request_head):
            raise ValueError("request_head must be a prefix of request")

    @property
    def text(self) -> str:
        return self.static + self.trending + self.request


def candidate_ids(history: tuple[str, str], clusters: ClusterSet) -> list[str]:
    """Every cluster the answer may name: all of them but the history, in the cluster set's order."""
    return [cid for cid in clusters.clusters if cid not in history]


def prompt_segments(history: tuple[str, str], knowledge: Knowledge | None, clusters: ClusterSet) -> PromptSegments:
    older, latest = (_name(clusters, cid) for cid in history)
    knowledge = knowledge or Knowledge()
    shown = [cid for cid, _ in knowledge.top_next if cid in clusters.clusters and cid not in history][:MAX_TOP_NEXT]
    counts = dict(knowledge.top_next)
    trending = [cid for cid in knowledge.trending if cid in clusters.clusters][:MAX_TRENDING]

    static = static_segment()
    trending_text = "Trending now:\n" + "".join(f"{_name(clusters, c)}\n" for c in trending) if trending else ""
    head = f"I liked:\n{older}\n"
    request = (f"{head}{latest}\n"
               + ("Viewers like me next chose:\n" + "".join(f"{_name(clusters, c)} ({counts[c]})\n" for c in shown)
                  if shown else "")
               + f"{IM_END}\n{IM_START}assistant\n")
    return PromptSegments(static=static, trending=trending_text, request=request, request_head=head)


def static_segment() -> str:
    """The part of every prompt before anything request-specific: the system message and the user turn's start."""
    return f"{IM_START}system\n{SYSTEM}{IM_END}\n{IM_START}user\n"


def build_prompt(history: tuple[str, str], knowledge: Knowledge | None, clusters: ClusterSet) -> str:
    """The whole ChatML prompt, ending where the assistant's answer begins."""
    return prompt_segments(history, knowledge, clusters).text


def _name(clusters: ClusterSet, cluster_id: str) -> str:
    cluster = clusters.clusters.get(cluster_id)
    if cluster is None:
        raise KeyError(f"unknown cluster {cluster_id!r} (cluster version {clusters.version})")
    return cluster.name
