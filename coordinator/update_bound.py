"""The largest update norm an honest site can produce under the federation's DP plan.

Admission rejects a delta whose L2 norm exceeds this bound (``norm-exceeded``), so a
member cannot scale its update to steer the model. The bound is a pure function of
the plan (max-grad-norm C, learning rate, batch size B, local epochs, rounds, target
ε, δ), the model size d and the member's enrolled example cap n_max; nothing a
member reports enters it.

DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy", Algorithm 1,
with Opacus's arithmetic in ``participant.dp.training``): each of T steps moves the
shared parameters by ``lr * (S_t + Z_t) / B`` with ``||S_t|| <= |b_t| C`` (clipped
per-example gradients of a Poisson batch b_t) and ``Z_t ~ N(0, σ² C² I_d)``
independent across steps. By the triangle inequality

    ||Δ|| <= lr / B * (C Σ_t |b_t| + ||Σ_t Z_t||),

and ``Σ_t Z_t ~ N(0, T σ² C² I_d)``, whose norm exceeds ``σ C sqrt(T) (sqrt(d) +
sqrt(2 ln(1/p)))`` with probability at most p (Laurent and Massart 2000, "Adaptive
estimation of a quadratic functional by model selection", Lemma 1; the norm is
1-Lipschitz). ``Σ_t |b_t|`` has mean T B; it is bounded by ``T B + 6 sqrt(T B)``
(six standard deviations). The sum of the noise grows as sqrt(T), not T: this
is what makes the bound tight enough that an honest update passes and the same update
scaled by 2 does not, whenever the noise dominates (as it does under DP for any
model of useful size). The result is multiplied by ``MARGIN`` (1.25).

Adam has no such bound: it divides each coordinate by its own running gradient scale,
so a step moves every coordinate by up to ``lr * max(1, (1 - β1) / sqrt(1 - β2))``
whatever C and σ are (Kingma and Ba 2015, "Adam", §2.1), and the only plan-derived bound,
``lr T sqrt(d) κ``, admitted an update 812x an honest one. So SGD is the plan's default
and Adam is refused unless the operator sets ``admission.max-update-norm``
(:class:`coordinator.config.FederationConfig`); :func:`honest_update_norm_bound` raises
for it rather than return a bound that bounds nothing.

T and σ depend on the site's example count n (``T = E max(1, floor(n / B))``, σ
calibrated for ε over ``T * rounds`` steps at ``q = B / n``, as
``participant.calibration`` does). Both terms grow with n (T linearly; sqrt(T) σ too,
since σ falls more slowly than sqrt(T) grows: 1.43, 2.16, 3.1, 4.9, 8.2, 17.2 for
n = 64 ... 100,000 at B = 64, ε = 8, five rounds; the tests check it), so the bound is
taken at n = n_max. A site whose earlier spend or lower own budget forced a larger σ than
the plan's target implies fails closed (``norm-exceeded``); the operator then sets
``admission.max-update-norm``.
"""

from __future__ import annotations

import math
from functools import lru_cache

from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from protocols.errors import ConfigError

__all__ = ["MARGIN", "honest_update_norm_bound", "plan_noise", "plan_update_norm_bound"]

MARGIN = 1.25
FAILURE_PROBABILITY = 1e-9
# Integer RDP orders only: a subset of the orders the sites' accountant uses, so for a
# given σ the ε found here is no smaller and the σ found for the target no smaller than a
# site's (up to the sites' calibration tolerance, which SIGMA_SLACK covers); and it is
# fast (about 1 s against tens of seconds for opacus's fractional orders at q = 1/4).
_ORDERS = tuple(range(2, 65))
SIGMA_SLACK = 1.05


def honest_update_norm_bound(*, max_grad_norm: float, learning_rate: float, steps: int,
                             noise_multiplier: float, batch_size: int, num_params: int,
                             optimizer: str, margin: float = MARGIN,
                             failure_probability: float = FAILURE_PROBABILITY) -> float:
    """Bound on one honest round's update norm (see the module docstring)."""
    lr, c, t, b, d = learning_rate, max_grad_norm, steps, batch_size, num_params
    if optimizer != "sgd":
        raise ConfigError("privacy.optimizer", "the DP plan bounds the update norm for SGD only",
                          got=optimizer, expected="sgd",
                          fix='use optimizer = "sgd", or set [admission] max-update-norm')
    examples = t * b + 6.0 * math.sqrt(t * b)
    noise = noise_multiplier * c * math.sqrt(t) * (
        math.sqrt(d) + math.sqrt(2.0 * math.log(1.0 / failure_probability)))
    return margin * lr / b * (c * examples + noise)


@lru_cache(maxsize=256)
def plan_update_norm_bound(*, max_grad_norm: float, learning_rate: float, batch_size: int,
                           local_epochs: int, rounds: int, target_epsilon: float, delta: float,
                           accountant: str, optimizer: str, unsafe_no_dp: bool,
                           num_params: int, max_examples: int) -> float:
    """The bound for a member with at most ``max_examples`` examples (taken at n = n_max).

    Cached: opacus's calibration takes seconds at small sampling rates.
    """
    steps, sigma = plan_noise(batch_size=batch_size, local_epochs=local_epochs, rounds=rounds,
                              target_epsilon=target_epsilon, delta=delta, accountant=accountant,
                              unsafe_no_dp=unsafe_no_dp, n_examples=max_examples)
    return honest_update_norm_bound(
        max_grad_norm=max_grad_norm, learning_rate=learning_rate, steps=steps,
        noise_multiplier=sigma, batch_size=batch_size, num_params=num_params,
        optimizer=optimizer)


@lru_cache(maxsize=256)
def plan_noise(*, batch_size: int, local_epochs: int, rounds: int, target_epsilon: float,
               delta: float, accountant: str, unsafe_no_dp: bool, n_examples: int
               ) -> tuple[int, float]:
    """(steps per round, an upper bound on the noise multiplier) of a fresh site with
    ``n_examples`` examples (``participant.calibration`` with an empty history).

    ``accountant`` does not change the answer: PRV accounting is tighter than RDP, so a
    PRV site's σ is no larger than the RDP one computed here.
    """
    del accountant
    q = min(1.0, batch_size / max(n_examples, 1))
    steps = max(1, int(1 / q)) * local_epochs
    if unsafe_no_dp:
        return steps, 0.0

    def epsilon(sigma: float) -> float:
        rdp = compute_rdp(q=q, noise_multiplier=sigma, steps=steps * rounds, orders=_ORDERS)
        return float(get_privacy_spent(orders=_ORDERS, rdp=rdp, delta=delta)[0])

    lo, hi = 0.0, 1.0
    for _ in range(40):  # bracket: ε falls as σ grows
        if epsilon(hi) <= target_epsilon:
            break
        lo, hi = hi, 2 * hi
    for _ in range(20):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if epsilon(mid) > target_epsilon else (lo, mid)
    return steps, SIGMA_SLACK * hi
