"""Central (participant-level) DP: clipping, noise scale, RDP accounting, state."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import cast

import numpy as np
import pytest
from flwr.supercore.differential_privacy import compute_clip_model_update, compute_stdv
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator import checkpoint
from coordinator.aggregation import StreamingMean
from coordinator.central_dp import CentralDP, clip_delta, global_norm, noise_std
from coordinator.config import FederationConfig
from coordinator.federation import Federation, GridLike
from coordinator.receipt_log import ReceiptLog
from protocols.errors import ConfigError
from protocols.signing import Ed25519PrivateKey

OPACUS_ALPHAS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


def _norm(d: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(float(np.sum(a.astype(np.float64) ** 2)) for a in d.values())))


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def _exact_gaussian_epsilon(mu: float, delta: float) -> float:
    """Tight ε of a mu-GDP mechanism (Balle & Wang 2018, Thm 8; Dong, Roth & Su 2022).

    T rounds of the Gaussian mechanism with noise multiplier z compose exactly
    to one with mu = sqrt(T) / z.
    """
    def profile(eps: float) -> float:
        return _phi(-eps / mu + mu / 2) - math.exp(eps) * _phi(-eps / mu - mu / 2)
    lo, hi = 0.0, 500.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if profile(mid) > delta else (lo, mid)
    return hi


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.floats(1e-3, 10.0), st.floats(1e-3, 100.0))
def test_clipped_norm_never_exceeds_the_bound(seed: int, c: float, scale: float) -> None:
    rng = np.random.default_rng(seed)
    d = {"a": (rng.normal(size=(4, 3)) * scale).astype(np.float32),
         "b": (rng.normal(size=70_001) * scale).astype(np.float32)}
    out = clip_delta(d, clipping_norm=c)
    assert _norm(out) <= c  # exactly, in float64: the sensitivity bound must hold
    assert _norm(out) <= _norm(d)
    assert global_norm(d) == pytest.approx(_norm(d), rel=1e-12)
    if _norm(d) > c:
        assert _norm(out) == pytest.approx(c, rel=1e-6)  # scaled, not truncated
    else:
        assert all(out[k] is d[k] for k in d)


def test_clipping_matches_flowers_fixed_clipping() -> None:
    rng = np.random.default_rng(1)
    old = [rng.normal(size=(3, 3)).astype(np.float32), rng.normal(size=2).astype(np.float32)]
    new = [o + rng.normal(size=o.shape).astype(np.float32) * 3 for o in old]
    flwr_new = [a.copy() for a in new]
    compute_clip_model_update(flwr_new, old, 0.5)
    ours = clip_delta({"a": new[0] - old[0], "b": new[1] - old[1]}, clipping_norm=0.5)
    np.testing.assert_allclose(ours["a"], flwr_new[0] - old[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours["b"], flwr_new[1] - old[1], rtol=1e-5, atol=1e-6)


def test_noise_std_is_flowers_and_the_empirical_std_matches() -> None:
    std = noise_std(noise_multiplier=1.2, clipping_norm=0.5, num_sampled=4)
    assert std == compute_stdv(1.2, 0.5, 4) == pytest.approx(0.15)
    dp = CentralDP(noise_multiplier=1.2, clipping_norm=0.5, delta=1e-5)
    out = dp.privatize({"w": np.zeros(200_000, np.float32)}, num_accepted=4, num_sampled=4,
                       rng=np.random.default_rng(0))
    assert out["w"].dtype == np.float32
    assert float(np.std(out["w"])) == pytest.approx(0.15, rel=0.01)
    assert abs(float(np.mean(out["w"]))) < 5 * 0.15 / math.sqrt(200_000)


def test_a_dropped_member_shrinks_the_sum_not_the_denominator() -> None:
    # 3 of 4 sampled members answer: the release is sum / 4, the noise z*C/4.
    deltas = [{"w": np.full(50_000, v, np.float32)} for v in (0.1, 0.2, 0.3)]
    dp = CentralDP(noise_multiplier=0.01, clipping_norm=100.0, delta=1e-5)  # no clipping
    agg = StreamingMean({"w": (50_000,)}, group=lambda _: "all")
    for d in deltas:
        agg.add(dp.clip(d), weight=1.0)
    out = dp.privatize(agg.result(), num_accepted=3, num_sampled=4,
                       rng=np.random.default_rng(3))["w"]
    std = 0.01 * 100.0 / 4
    assert float(np.std(out)) == pytest.approx(std, rel=0.02)
    # sum / 4 = 0.15, not the mean of the three (0.2)
    assert float(np.mean(out)) == pytest.approx(0.6 / 4, abs=5 * std / math.sqrt(50_000))


def test_one_round_epsilon_is_the_gaussian_rdp_bound_in_closed_form() -> None:
    # Known value: T rounds at noise multiplier z are (α, T·α/2z²)-RDP (Mironov 2017,
    # Prop. 7); Balle et al. 2020, Thm 21 converts at each α; ε is the best α.
    z, rounds, delta = 1.0, 1, 1e-5
    dp = CentralDP(noise_multiplier=z, clipping_norm=1.0, delta=delta)
    assert dp.epsilon() == 0.0
    for _ in range(rounds):
        dp.privatize({"w": np.zeros(3, np.float32)}, num_accepted=2, num_sampled=2,
                     rng=np.random.default_rng(0))
    closed = min(rounds * a / (2 * z * z) - (math.log(delta) + math.log(a)) / (a - 1)
                 + math.log((a - 1) / a) for a in OPACUS_ALPHAS)
    assert dp.epsilon() == pytest.approx(closed, rel=1e-9)
    assert dp.epsilon() == pytest.approx(4.7285, abs=1e-4)
    assert dp.rounds() == 1 and dp.history == [(1.0, 1.0, 1)]


@pytest.mark.parametrize(("z", "rounds", "delta"),
                         [(1.0, 1, 1e-5), (1.0, 10, 1e-5), (2.0, 50, 1e-6), (5.0, 20, 1e-5)])
def test_epsilon_is_a_sound_and_tight_bound_on_the_exact_gaussian(z: float, rounds: int,
                                                                  delta: float) -> None:
    dp = CentralDP(noise_multiplier=z, clipping_norm=1.0, delta=delta)
    rng = np.random.default_rng(0)
    for _ in range(rounds):
        dp.privatize({"w": np.zeros(2, np.float32)}, num_accepted=1, num_sampled=1, rng=rng)
    exact = _exact_gaussian_epsilon(math.sqrt(rounds) / z, delta)
    # never below the exact ε (an accountant that under-reports would pass nothing
    # else here), and RDP's known slack is under 10% in this range
    assert exact <= dp.epsilon() <= 1.10 * exact


def test_no_amplification_is_claimed_whatever_the_sample() -> None:
    few = CentralDP(noise_multiplier=1.0, clipping_norm=1.0, delta=1e-5)
    many = CentralDP(noise_multiplier=1.0, clipping_norm=1.0, delta=1e-5)
    rng = np.random.default_rng(0)
    for _ in range(3):
        few.privatize({"w": np.zeros(2, np.float32)}, num_accepted=2, num_sampled=2, rng=rng)
        many.privatize({"w": np.zeros(2, np.float32)}, num_accepted=9, num_sampled=20,
                       rng=rng)
    assert few.epsilon() == many.epsilon() > 0


def test_epsilon_survives_a_checkpoint() -> None:
    dp = CentralDP(noise_multiplier=1.3, clipping_norm=1.0, delta=1e-6)
    rng = np.random.default_rng(0)
    for _ in range(4):
        dp.privatize({"w": np.zeros(3, np.float32)}, num_accepted=2, num_sampled=3, rng=rng)
    resumed = CentralDP(noise_multiplier=1.3, clipping_norm=1.0, delta=1e-6)
    resumed.load_state_dict(dp.state_dict())
    assert resumed.epsilon() == dp.epsilon() > 0 and resumed.rounds() == 4
    resumed.privatize({"w": np.zeros(3, np.float32)}, num_accepted=1, num_sampled=3, rng=rng)
    assert resumed.epsilon() > dp.epsilon()


def test_bad_parameters_are_config_errors() -> None:
    for z, c, delta in ((0.0, 1.0, 1e-5), (1.0, -1.0, 1e-5), (math.inf, 1.0, 1e-5),
                        (1.0, 1.0, 1.0)):
        with pytest.raises(ConfigError):
            CentralDP(noise_multiplier=z, clipping_norm=c, delta=delta)
    dp = CentralDP(noise_multiplier=1.0, clipping_norm=1.0, delta=1e-5)
    for accepted, sampled in ((6, 5), (0, 5)):
        with pytest.raises(ConfigError, match="accepted"):
            dp.privatize({"w": np.zeros(1, np.float32)}, num_accepted=accepted,
                         num_sampled=sampled, rng=np.random.default_rng(0))
    assert dp.rounds() == 0  # a refused release is not accounted


def test_central_dp_with_example_count_weighting_is_refused(tmp_path: Path) -> None:
    cfg = FederationConfig.from_mapping({
        "federation": {"id": "cdp", "state-dir": str(tmp_path), "weighting": "capped"},
        "model": {"endpoints": [{"name": "logd", "task": "regression"}]},
        "central-dp": {"enabled": True}})
    key = Ed25519PrivateKey.generate()
    with pytest.raises(ConfigError, match="uniform weighting"):
        # refused before the grid, members or weights are touched
        Federation(cfg, grid=cast(GridLike, None), signing_key=key, members={},
                   initial_weights={}, model_spec={}, model_spec_digest="",
                   featurization_spec={}, featurization_spec_digest="")


@pytest.mark.slow
def test_central_dp_round_loop_reports_epsilon_next_to_participants(tmp_path: Path) -> None:
    """The tiny scenario in Flower's simulation engine with central DP switched on."""
    from mlflow.tracking import MlflowClient

    from simulations.runner import prepare_seed, run_seed
    from simulations.scenario import load_scenario

    z, rounds = 2.0, 2
    run = prepare_seed(load_scenario("tiny").with_overrides(rounds=rounds), tmp_path,
                       seed=0, cache=Path(".fedadmet-cache"))
    toml = tmp_path / "coordinator" / "federation.toml"
    text = toml.read_text(encoding="utf-8")
    assert 'weighting = "uniform"' in text  # what central DP needs, and the default
    toml.write_text(text + f"\n[central-dp]\nenabled = true\nnoise-multiplier = {z}\n"
                    "clipping-norm = 5.0\n", encoding="utf-8")
    run.federation = FederationConfig.load(toml)
    progress: list[tuple[str, int, int, int]] = []  # what the CLI's partner bar is fed
    run_seed(run, on_reply=lambda *event: progress.append(event))

    delta = run.federation.privacy.delta
    expected = [min(t * a / (2 * z * z) - (math.log(delta) + math.log(a)) / (a - 1)
                    + math.log((a - 1) / a) for a in OPACUS_ALPHAS) for t in (1, 2)]
    assert [r["round"] for r in run.rounds] == [1, 2]
    assert sorted(progress) == [(kind, r, n, 2) for kind in ("evaluate", "train")
                                for r in (1, 2) for n in (1, 2)]
    for r, eps in zip(run.rounds, expected, strict=True):
        assert r["central_epsilon"] == pytest.approx(eps, rel=1e-9)
        assert len(r["epsilon"]) == 2 and all(v > 0 for v in r["epsilon"].values())
    state = run.federation.state_dir
    ckpt = checkpoint.latest(state)
    assert ckpt is not None and ckpt.extra["central_dp"] == {"history": [[z, 1.0, rounds]]}
    receipt = json.loads(ReceiptLog(state / "receipts").read(rounds))
    accepted = [leaf for leaf in receipt["leaves"] if leaf["status"] == "accepted"]
    assert [leaf["weight"] for leaf in accepted] == [0.5, 0.5]  # 1 / members sampled
    client = MlflowClient(tracking_uri=run.federation.tracking_uri_or_default)
    experiment = client.get_experiment_by_name(run.federation.federation_id)
    assert experiment is not None
    (mlrun,) = client.search_runs([experiment.experiment_id])
    central = client.get_metric_history(mlrun.info.run_id, "epsilon.central")
    assert [m.step for m in central] == [1, 2]
    assert [m.value for m in central] == pytest.approx(expected, rel=1e-9)
    assert [m.step for m in client.get_metric_history(mlrun.info.run_id, "epsilon.max")] \
        == [1, 2]
