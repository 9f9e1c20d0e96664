"""Temperature scaling and the pool's exponents (models/calibration.py): each fit finds what the data were drawn
with."""

from __future__ import annotations

import math
import random

import pytest

from models.calibration import (
    MAX_TEMPERATURE,
    Observed,
    PoolCase,
    fit_pool_weights,
    fit_temperature,
    mean_log_loss,
    pool_log_loss,
)


def sampled(true_temperature: float, prompts: int, draws: int, seed: int) -> list[Observed]:
    """Prompts whose next clusters are drawn from softmax(log_probs / true_temperature)."""
    rng = random.Random(seed)
    out = []
    for _ in range(prompts):
        log_probs = {f"c{k}": rng.gauss(0.0, 6.0) for k in range(12)}
        weights = [math.exp(v / true_temperature) for v in log_probs.values()]
        counts: dict[str, int] = {}
        for cluster in rng.choices(list(log_probs), weights=weights, k=draws):
            counts[cluster] = counts.get(cluster, 0) + 1
        out.append(Observed(log_probs, counts))
    return out


@pytest.mark.parametrize("true_temperature", [0.5, 3.0, 12.0])
def test_the_fit_recovers_the_temperature_the_transitions_were_drawn_with(true_temperature: float) -> None:
    fitted = fit_temperature(sampled(true_temperature, prompts=300, draws=20, seed=7))
    assert fitted.temperature == pytest.approx(true_temperature, rel=0.15)
    assert fitted.log_loss <= fitted.log_loss_uncalibrated
    assert fitted.transitions == 300 * 20 and fitted.prompts == 300


def test_the_fitted_temperature_minimises_the_log_loss_and_noise_flattens_it_to_the_bracket() -> None:
    observed = sampled(3.0, prompts=200, draws=10, seed=1)
    fitted = fit_temperature(observed)
    for t in (fitted.temperature * 0.8, fitted.temperature * 1.25):
        assert mean_log_loss(observed, t) > fitted.log_loss
    # next clusters unrelated to the scores: the best the scores can do is say nothing (T at the bracket's top)
    rng = random.Random(2)
    noise = [Observed(o.log_probs, {rng.choice(list(o.log_probs)): 1}) for o in observed]
    assert fit_temperature(noise).temperature > MAX_TEMPERATURE / 4


def test_targets_outside_the_candidates_do_not_count_and_none_at_all_is_an_error() -> None:
    inside = Observed({"a": 0.0, "b": -2.0}, {"a": 3, "b": 1})
    with_outside = Observed({"a": 0.0, "b": -2.0}, {"a": 3, "b": 1, "z": 5})
    assert mean_log_loss([with_outside], 2.0) == pytest.approx(mean_log_loss([inside], 2.0))
    with pytest.raises(ValueError, match="nothing to calibrate"):
        fit_temperature([Observed({"a": 0.0}, {"z": 2})])


# ---------------------------------------------------------------------------------------------------- pooling
def pooled(true_weights: tuple[float, float], cases: int, seed: int) -> list[PoolCase]:
    """Cases whose target is drawn from the log-linear pool exp(w1 f1 + w2 f2) of two random experts."""
    rng = random.Random(seed)
    out = []
    for _ in range(cases):
        features = {f"c{k}": (rng.gauss(0.0, 2.0), math.log(rng.random() + 1e-3)) for k in range(12)}
        weights = [math.exp(true_weights[0] * a + true_weights[1] * b) for a, b in features.values()]
        out.append(PoolCase(features, rng.choices(list(features), weights=weights)[0]))
    return out


@pytest.mark.parametrize("true_weights", [(0.3, 1.0), (1.0, 0.4), (0.1, 2.0)])
def test_the_pool_fit_recovers_the_exponents_the_targets_were_drawn_with(true_weights: tuple[float, float]) -> None:
    cases = pooled(true_weights, cases=3000, seed=11)
    fitted = fit_pool_weights(cases, start=(1.0, 1.0))
    assert fitted.weights == pytest.approx(true_weights, abs=0.12)
    assert fitted.log_loss <= fitted.log_loss_start and fitted.cases == 3000
    assert fitted.log_loss == pytest.approx(pool_log_loss(cases, fitted.weights))
    for nudge in ((0.1, 0.0), (-0.1, 0.0), (0.0, 0.1), (0.0, -0.1)):  # a minimum: every neighbour is worse
        assert pool_log_loss(cases, [w + d for w, d in zip(fitted.weights, nudge)]) > fitted.log_loss


def test_the_pool_fit_refuses_no_cases_and_a_target_outside_the_candidates() -> None:
    with pytest.raises(ValueError, match="no case"):
        fit_pool_weights([], start=(1.0, 1.0))
    with pytest.raises(ValueError, match="not among"):
        fit_pool_weights([PoolCase({"a": (0.0, 0.0)}, "b")], start=(1.0, 1.0))
