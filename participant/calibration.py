"""Calibrating this site's noise for the whole planned run.

Each site has its own dataset size N, hence its own Poisson sample rate
``q = batch_size / N`` and steps per epoch ``int(1 / q)`` (Opacus's sampler).
The site picks the smallest ``noise_multiplier`` whose cumulative ε over the
*whole* plan (rounds × local epochs), composed with what its ledger already
holds, stays within both the federation's target and its own remaining
budget. Opacus's ``get_noise_multiplier`` does the search for a fresh
history; composition with past spend is checked on the full history.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from opacus.accountants.utils import get_noise_multiplier

from participant.ledger import Accountant, epsilon_for
from protocols.errors import PrivacyBudgetExceeded

__all__ = ["Calibration", "calibrate"]

_EXTREME_ORDER = "Optimal order is the (largest|smallest) alpha"


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """The mechanism this site will use for every round of a run."""

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    planned_epsilon: float


def calibrate(*, n_examples: int, batch_size: int, rounds: int, local_epochs: int,
              target_epsilon: float, delta: float, max_epsilon: float,
              history: list[tuple[float, float, int]] | None = None,
              accountant: Accountant = "rdp") -> Calibration:
    """Noise for the whole planned run within min(target, remaining budget)."""
    history = list(history or [])
    q = min(1.0, batch_size / max(n_examples, 1))
    steps_per_round = max(1, int(1 / q)) * local_epochs
    total_steps = steps_per_round * rounds
    spent = epsilon_for(history, delta=delta, accountant=accountant)
    goal = min(target_epsilon, max_epsilon)
    if goal <= spent or goal - spent < 1e-3:
        raise PrivacyBudgetExceeded(
            "no privacy budget left for this run",
            got=f"spent ε {spent:.3f}", expected=f"< min(target {target_epsilon}, "
            f"max_epsilon {max_epsilon})",
            fix="this site has spent its budget; it can no longer train on this data")
    # Start from the fresh-history answer for the remaining budget, then raise the
    # noise until the composed history fits (RDP composition is not additive in ε).
    with warnings.catch_warnings():
        # The search's trial σ (its first is 10, far above any answer) reach Opacus's
        # largest RDP order, which it warns about; only the σ chosen below is accounted,
        # by epsilon_for, which still warns if that one's bound is loose.
        warnings.filterwarnings("ignore", message=_EXTREME_ORDER)
        sigma = float(get_noise_multiplier(target_epsilon=goal - spent if history else goal,
                                           target_delta=delta, sample_rate=q,
                                           steps=total_steps, accountant=accountant,
                                           epsilon_tolerance=0.01))
    for _ in range(60):
        total = epsilon_for([*history, (sigma, q, total_steps)], delta=delta,
                            accountant=accountant)
        if total <= goal:
            return Calibration(noise_multiplier=sigma, sample_rate=q,
                               steps_per_round=steps_per_round, planned_epsilon=total)
        sigma *= 1.05
    raise PrivacyBudgetExceeded("could not calibrate noise within the budget",
                                got=f"σ {sigma:.3f}", expected=f"ε <= {goal}")
