"""The ε a site claims reveals its size only coarsely (it is in every member's receipts)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from participant.site import EPSILON_CLAIM_GRID, epsilon_claim


def test_exact_spend_of_neighbouring_site_sizes_is_not_readable_from_the_claim() -> None:
    # measured under the default plan: 3000..3003 molecules spend 4.19188, 4.19641, 4.19555,
    # 4.19469 after round 1, all distinct; the claims are one value
    claims = {epsilon_claim(e, ceiling=8.0) for e in (4.19188, 4.19641, 4.19555, 4.19469)}
    assert claims == {4.25}


@given(spent=st.floats(0.0, 50.0), ceiling=st.floats(0.01, 50.0))
def test_claim_is_an_upper_bound_on_a_public_grid_within_the_ceiling(spent: float,
                                                                      ceiling: float) -> None:
    claim = epsilon_claim(spent, ceiling=ceiling)
    assert claim >= spent
    if spent <= ceiling:
        assert claim <= ceiling
        on_grid = math.isclose(claim / EPSILON_CLAIM_GRID, round(claim / EPSILON_CLAIM_GRID))
        assert on_grid or claim in (ceiling, spent)


def test_non_finite_spend_claims_the_maximum() -> None:
    assert epsilon_claim(math.inf, ceiling=8.0) == 1e308
