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

The served answer multiplies that distribution with the sequence model's (models/recommend.llm_times_sequence).
Two experts that both learned from the same transitions double-count them, so the product's own weights -- an
exponent per expert, ``p(c) ∝ exp(w_llm s_c) m_c^w_seq`` -- can also be fitted by maximum likelihood
(`fit_pool_weights`, convex: damped Newton steps), on user-level cases of a validation period that neither expert
learned from (models/evaluation/pooling.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

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


# ---------------------------------------------------------------------------------------------------- pooling
@dataclass(frozen=True)
class PoolCase:
    """One case of a product of experts: each candidate's log-score under every expert, and the cluster that came
    next (a candidate)."""

    features: Mapping[str, Sequence[float]]
    target: str


@dataclass(frozen=True)
class PoolFit:
    weights: tuple[float, ...]  # one per expert: p(c) ∝ exp(sum_k w_k f_k(c))
    log_loss: float  # per case, at `weights`
    log_loss_start: float  # ... at the starting weights (the unfitted product)
    cases: int
    iterations: int

    def as_dict(self) -> dict[str, object]:
        return {"weights": [round(w, 4) for w in self.weights], "log_loss": round(self.log_loss, 4),
                "log_loss_start": round(self.log_loss_start, 4), "cases": self.cases, "iterations": self.iterations}


def _pool_arrays(cases: Sequence[PoolCase]) -> tuple[list[np.ndarray], np.ndarray]:
    matrices, targets = [], []
    for case in cases:
        names = list(case.features)
        if case.target not in case.features:
            raise ValueError(f"the target {case.target!r} is not among the case's candidates")
        matrices.append(np.asarray([case.features[c] for c in names], dtype=np.float64))
        targets.append(names.index(case.target))
    if not matrices:
        raise ValueError("no case to fit the pool's weights on")
    return matrices, np.asarray(targets)


def _pool_loss_grad_hess(matrices: Sequence[np.ndarray], targets: np.ndarray, weights: np.ndarray
                         ) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean negative log-likelihood, its gradient and Hessian (the softmax's: E_p[f] - f_target, Cov_p[f])."""
    k = len(weights)
    loss, grad, hess = 0.0, np.zeros(k), np.zeros((k, k))
    for features, target in zip(matrices, targets, strict=True):
        logits = features @ weights
        top = logits.max()
        p = np.exp(logits - top)
        total = p.sum()
        p /= total
        loss += top + math.log(total) - logits[target]
        mean = p @ features
        grad += mean - features[target]
        centred = features - mean
        hess += (centred * p[:, None]).T @ centred
    n = len(matrices)
    return loss / n, grad / n, hess / n


def pool_log_loss(cases: Sequence[PoolCase], weights: Sequence[float]) -> float:
    matrices, targets = _pool_arrays(cases)
    return _pool_loss_grad_hess(matrices, targets, np.asarray(weights, dtype=np.float64))[0]


def fit_pool_weights(cases: Sequence[PoolCase], start: Sequence[float], iterations: int = 50,
                     tolerance: float = 1e-10) -> PoolFit:
    """The maximum-likelihood weights of a log-linear pool of experts (a product of experts with one exponent per
    expert): damped Newton steps on a convex objective, from `start`."""
    matrices, targets = _pool_arrays(cases)
    weights = np.asarray(start, dtype=np.float64)
    loss, grad, hess = _pool_loss_grad_hess(matrices, targets, weights)
    first, done = loss, 0
    for done in range(1, iterations + 1):
        step = np.linalg.lstsq(hess + 1e-9 * np.eye(len(weights)), grad, rcond=None)[0]
        scale = 1.0
        while True:  # backtracking: a Newton step can overshoot where the softmax saturates
            trial = weights - scale * step
            trial_loss, trial_grad, trial_hess = _pool_loss_grad_hess(matrices, targets, trial)
            if trial_loss <= loss or scale < 1e-6:
                break
            scale /= 2
        improved = loss - trial_loss
        weights, loss, grad, hess = trial, trial_loss, trial_grad, trial_hess
        if improved < tolerance:
            break
    return PoolFit(tuple(float(w) for w in weights), loss, first, len(cases), done)
