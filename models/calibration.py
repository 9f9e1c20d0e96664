"""Temperature scaling of the LLM's distribution over the novel clusters.

A fine-tuned model's candidate log-probabilities (models/llm.NovelClusterPredictor.candidate_log_probs) are far
too sharp: it puts nearly all its mass on one cluster, so the true next cluster often gets e^-20 and its log-loss
is worse than the uniform distribution's. Dividing the log-probabilities by one temperature T keeps the model's
ranking and makes its probabilities mean something, which matters once the distribution is multiplied with
another expert's (the sequence model's, models/evaluation/strategies.py).

T is fitted by maximum likelihood on transitions the model never learned from -- observed next clusters of pairs
from a period after the model's training data (the fine-tuning gates' held-out pairs are exactly that) -- never on
the period a strategy is evaluated on. With beta = 1/T the negative log-likelihood
``sum_c n(c) (logsumexp(beta s) - beta s_c)`` is convex in beta, so a ternary search over a bracket finds it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

MIN_TEMPERATURE, MAX_TEMPERATURE = 0.25, 256.0


@dataclass(frozen=True)
class Observed:
    """One prompt's candidate log-probabilities and the next clusters later observed after it, with counts."""

    log_probs: Mapping[str, float]
    next_counts: Mapping[str, int]


@dataclass(frozen=True)
class Calibration:
    temperature: float
    log_loss: float  # per observed transition, at `temperature`
    log_loss_uncalibrated: float  # ... at T = 1
    transitions: int  # observed transitions (targets among the candidates)
    prompts: int

    def as_dict(self) -> dict[str, float | int]:
        return {"temperature": round(self.temperature, 3), "log_loss": round(self.log_loss, 4),
                "log_loss_uncalibrated": round(self.log_loss_uncalibrated, 4), "transitions": self.transitions,
                "prompts": self.prompts}


def mean_log_loss(observed: Sequence[Observed], temperature: float) -> float:
    """Mean negative log-likelihood per observed transition of ``softmax(log_probs / temperature)``; targets
    outside a prompt's candidates are not counted (the model cannot name them)."""
    beta, total, n = 1.0 / temperature, 0.0, 0
    for obs in observed:
        scaled = {c: beta * v for c, v in obs.log_probs.items()}
        top = max(scaled.values())
        normaliser = top + math.log(math.fsum(math.exp(v - top) for v in scaled.values()))
        for cluster, count in obs.next_counts.items():
            if cluster in scaled and count > 0:
                total += count * (normaliser - scaled[cluster])
                n += count
    if n == 0:
        raise ValueError("no observed transition among the candidates: nothing to calibrate on")
    return total / n


def fit_temperature(observed: Sequence[Observed], iterations: int = 60) -> Calibration:
    """The maximum-likelihood temperature within [MIN_TEMPERATURE, MAX_TEMPERATURE] (ternary search over 1/T)."""
    lo, hi = 1.0 / MAX_TEMPERATURE, 1.0 / MIN_TEMPERATURE
    for _ in range(iterations):
        a, b = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        if mean_log_loss(observed, 1.0 / a) <= mean_log_loss(observed, 1.0 / b):
            hi = b
        else:
            lo = a
    temperature = 2.0 / (lo + hi)
    transitions = sum(n for obs in observed for c, n in obs.next_counts.items() if c in obs.log_probs and n > 0)
    return Calibration(temperature, mean_log_loss(observed, temperature), mean_log_loss(observed, 1.0),
                       transitions, len(observed))


def softmax(log_probs: Mapping[str, float], temperature: float = 1.0) -> dict[str, float]:
    """The distribution ``p(c) ∝ exp(log_probs[c] / temperature)``; an infinite temperature gives the uniform one."""
    if not temperature > 0:
        raise ValueError(f"a temperature must be positive, got {temperature}")
    top = max(log_probs.values())
    return normalised({c: math.exp((v - top) / temperature) for c, v in log_probs.items()})


def normalised(weights: Mapping[str, float]) -> dict[str, float]:
    total = math.fsum(weights.values())
    if not total > 0:
        raise ValueError("a distribution needs a positive total weight")
    return {c: w / total for c, w in weights.items()}
