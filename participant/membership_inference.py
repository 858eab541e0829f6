"""Membership inference on a site's models: the loss-threshold attack and offline LiRA.

Two standard attacks, each giving every candidate compound a score (higher:
"more likely in the training set"):

- **Loss threshold** (Yeom et al. 2018, "Privacy Risk in Machine Learning"):
  score = minus the model's loss on the compound.
- **Offline LiRA** (Carlini et al. 2022, "Membership Inference Attacks From
  First Principles", Section VI-C): shadow models are trained, with the
  target's own procedure, on random halves of the candidate pool (pairs of
  complementary halves, so every candidate is OUT for exactly half of them).
  For each compound the losses of the shadows that did not train on it (its
  OUT losses) are fitted by a Gaussian, in log-loss so the fit is
  reasonable; the score is how far below that OUT distribution the target's
  loss lies, ``(mu_out - phi) / sigma``. With few shadows Carlini et al. use
  one global sigma ("fixed variance"), which is what this does.

Members and non-members must come from one distribution, or an attack
measures the difference between the distributions instead of membership: a
model trained on neither set would then score above chance. As in Carlini et
al. (Section V), :func:`random_membership` draws them at random from one pool
at the molecule level (a scaffold split would make non-members other
chemical series; the attack then detects series, not membership).
Both attacks only score; :mod:`participant.roc_statistics` measures them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from chem.models import MultiTaskMLP, masked_loss
from participant.roc_statistics import AttackMetrics, attack_metrics

__all__ = ["AttackData", "ShadowLosses", "lira_offline_scores", "loss_attack_scores",
           "per_example_losses", "random_membership", "run_attacks", "train_shadows"]

# Trains a fresh model the way the target was trained, on (x, y, mask).
Trainer = Callable[[np.ndarray, np.ndarray, np.ndarray], MultiTaskMLP]

_LOG_FLOOR = 1e-8


@dataclass(frozen=True, kw_only=True)
class AttackData:
    """Members (the target's training rows) and non-members, features, labels and masks."""

    x_members: np.ndarray
    y_members: np.ndarray
    mask_members: np.ndarray
    x_non_members: np.ndarray
    y_non_members: np.ndarray
    mask_non_members: np.ndarray
    endpoints: tuple[str, ...] = ()  # the label columns' names, where known

    def candidates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """All candidates (members first) and the membership labels."""
        return (np.concatenate([self.x_members, self.x_non_members]),
                np.concatenate([self.y_members, self.y_non_members]),
                np.concatenate([self.mask_members, self.mask_non_members]),
                np.r_[np.ones(len(self.x_members), bool),
                      np.zeros(len(self.x_non_members), bool)])


def random_membership(x: np.ndarray, y: np.ndarray, mask: np.ndarray, *, seed: int,
                      endpoints: tuple[str, ...] = ()) -> AttackData:
    """A uniformly random half of the pool as members, the rest as non-members.

    Membership is then the only thing that tells the two sets apart
    (Carlini et al. 2022, Section V: the target trains on a random half). The
    randomness chooses an experiment, it protects nothing: it is seeded so
    the audit can be reproduced.
    """
    n = len(x)
    if n < 4:
        raise ValueError(f"need at least 4 molecules to split into members and non-members, "
                         f"got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    ins, outs = np.sort(perm[: n // 2]), np.sort(perm[n // 2:])
    return AttackData(x_members=x[ins], y_members=y[ins], mask_members=mask[ins],
                      x_non_members=x[outs], y_non_members=y[outs], mask_non_members=mask[outs],
                      endpoints=endpoints)


@dataclass(frozen=True, kw_only=True)
class ShadowLosses:
    """Each shadow's loss on every candidate, and whether the shadow trained on it."""

    losses: np.ndarray   # (shadows, candidates)
    trained_on: np.ndarray  # (shadows, candidates), bool


@torch.no_grad()
def per_example_losses(model: MultiTaskMLP, x: np.ndarray, y: np.ndarray, mask: np.ndarray, *,
                       batch_size: int = 4096) -> np.ndarray:
    """The training loss of each row (summed over its labelled endpoints), in eval mode."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        xb = torch.as_tensor(np.asarray(x[i:i + batch_size], dtype=np.float32))
        yb = torch.as_tensor(np.nan_to_num(np.asarray(y[i:i + batch_size], dtype=np.float32)))
        mb = torch.as_tensor(np.asarray(mask[i:i + batch_size], dtype=np.float32))
        out.append(masked_loss(model(xb), yb, mb, model.spec, reduction="none").numpy())
    model.train(was_training)
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def loss_attack_scores(losses: np.ndarray) -> np.ndarray:
    """Yeom et al.'s score: lower loss, more likely a member."""
    return -np.asarray(losses, dtype=np.float64)


def lira_offline_scores(target_losses: np.ndarray, shadows: ShadowLosses) -> np.ndarray:
    """Offline LiRA with a global variance: ``(mu_out - log loss) / sigma_out`` per candidate."""
    phi = np.log(np.asarray(target_losses, dtype=np.float64) + _LOG_FLOOR)
    shadow_phi = np.log(shadows.losses + _LOG_FLOOR)
    out = ~shadows.trained_on
    counts = out.sum(axis=0)
    if (counts == 0).any():
        raise ValueError("every candidate needs at least one shadow that did not train on it")
    mu = np.where(out, shadow_phi, 0.0).sum(axis=0) / counts
    resid = np.where(out, shadow_phi - mu, 0.0)
    dof = max(int(out.sum()) - len(counts), 1)
    sigma = max(float(np.sqrt((resid ** 2).sum() / dof)), 1e-6)
    scores: np.ndarray = (mu - phi) / sigma
    return scores


def train_shadows(trainer: Trainer, data: AttackData, *, shadows: int, seed: int,
                  on_shadow: Callable[[int], None] | None = None) -> ShadowLosses:
    """Train ``shadows`` models, each on a random half of all candidates.

    Shadows come in complementary pairs, so every candidate, member or not,
    is OUT for the same number of shadows, each trained on as many molecules
    as the target (Carlini et al. 2022: shadows on random halves of the
    population; the offline attack reads only the OUT ones). Shadows that
    trained on members' data learn nothing about which candidates are members.
    """
    if shadows < 2:
        raise ValueError(f"offline LiRA needs at least 2 shadow models, got {shadows}")
    x, y, mask, _ = data.candidates()
    n = len(x)
    rng = np.random.default_rng(seed)
    losses = np.zeros((shadows, n))
    trained = np.zeros((shadows, n), bool)
    pick = np.zeros(0, np.int64)
    for s in range(shadows):
        # A random half, then its complement: every candidate is OUT for at least one shadow.
        if s % 2 == 0:
            pick = np.sort(rng.permutation(n)[: n // 2])
        else:
            pick = np.setdiff1d(np.arange(n), pick)
        model = trainer(x[pick], y[pick], mask[pick])
        losses[s] = per_example_losses(model, x, y, mask)
        trained[s, pick] = True
        if on_shadow is not None:
            on_shadow(s)
    return ShadowLosses(losses=losses, trained_on=trained)


def run_attacks(model: MultiTaskMLP, data: AttackData, *, shadows: ShadowLosses | None,
                n_bootstrap: int = 200, seed: int = 0) -> dict[str, AttackMetrics]:
    """Both attacks' metrics on ``model`` (LiRA only when shadow losses are given)."""
    x, y, mask, is_member = data.candidates()
    losses = per_example_losses(model, x, y, mask)
    result = {"loss-threshold": attack_metrics(loss_attack_scores(losses), is_member,
                                               n_bootstrap=n_bootstrap, seed=seed)}
    if shadows is not None:
        result["lira-offline"] = attack_metrics(lira_offline_scores(losses, shadows),
                                                is_member, n_bootstrap=n_bootstrap, seed=seed)
    return result
