"""Strata: where a method gains. Each case is labelled from the protocol and the streaming knowledge that serves
it -- never from any strategy's answer -- so every strategy is split over exactly the same cases.

* ``support``   -- transitions out of the case's pair in that knowledge: 0, 1-4, 5-19, >= 20. Counts cannot
  say much about a sparse or unseen pair; that is where an LLM could add something.
* ``sparse``    -- the same support split in two, as issue 13's target 2 states it: a sparse pair has fewer than
  ``SPARSE_BELOW`` (5) transitions (bins 0 and 1-4 together), so the target is read off one stratum with one
  interval rather than off two bins too small to tell anything apart on their own.
* ``retrieved`` -- whether the user's next novel cluster is among the pair's top-3 retrieved next clusters (the
  ones the prompt shows): outside them, copying the counts cannot hit.
* ``anchor``    -- point- or request-anchored case (models/evaluation/protocol.py).
"""

from __future__ import annotations

from models.evaluation.interface import Snapshot
from models.evaluation.protocol import Case

SUPPORT_BINS = ((0, 0, "0"), (1, 4, "1–4"), (5, 19, "5–19"), (20, None, "≥20"))
SPARSE_BELOW = 5
SPARSE, DENSE = "support < 5", "support ≥ 5"
IN_TOP3, OUTSIDE_TOP3 = "in top-3", "outside top-3"
DIMENSIONS: dict[str, tuple[str, ...]] = {
    "support": tuple(label for _, _, label in SUPPORT_BINS),
    "sparse": (SPARSE, DENSE),
    "retrieved": (IN_TOP3, OUTSIDE_TOP3),
    "anchor": ("point", "request"),
}


def support_bin(n: int) -> str:
    for low, high, label in SUPPORT_BINS:
        if n >= low and (high is None or n <= high):
            return label
    raise ValueError(f"negative support {n}")


def strata_of(case: Case, knowledge: Snapshot) -> dict[str, str]:
    shown = {c for c, _ in knowledge.shown(case.pair)}
    support = knowledge.support(case.pair)
    return {"support": support_bin(support),
            "sparse": SPARSE if support < SPARSE_BELOW else DENSE,
            "retrieved": IN_TOP3 if case.next_novel in shown else OUTSIDE_TOP3,
            "anchor": case.anchor}
