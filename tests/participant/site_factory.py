"""A small real member site for participant tests: keys, data, config, instruction, model.

Everything is real: member keys from :func:`participant.keys.create_member_keys`,
a coordinator receipt key, a few hundred molecules sampled (seeded) from
``simulations/data``, a ``participant.toml`` that :class:`ParticipantConfig`
loads, a :class:`RoundInstruction` built field for field like
``coordinator/federation.py::Federation._instruction``, and the global weights
of :func:`chem.models.build_model`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from chem.featurizers import FeaturizationSpec, feature_dim, get_spec
from chem.models import ModelSpec, build_model, get_weights
from participant.config import ParticipantConfig
from participant.keys import MemberKeys, create_member_keys
from protocols.canonical import sha256_hex, tensors_digest
from protocols.endpoints import EndpointSpec
from protocols.messages import PROTOCOL_VERSION, DPPlan, RoundInstruction, UpdateSubmission
from protocols.receipts import GENESIS_HASH, ReceiptLeaf, RoundReceipt, build_receipt, receipt_hash
from protocols.signing import Ed25519PrivateKey, public_key_pem

__all__ = ["DATA_DIR", "SiteKit", "make_site", "sample_molecules"]

DATA_DIR = Path(__file__).resolve().parents[2] / "simulations" / "data"
FEATURIZER = "ecfp4-count-2048/v1"


def sample_molecules(dataset: str, *, n: int, seed: int, skip: int = 0) -> pd.DataFrame:
    """``n`` rows (smiles, target) of a shipped dataset, seeded; ``skip`` drops a prefix
    of the shuffled order, so two calls with different ``skip`` give disjoint sets."""
    frame = pd.read_csv(DATA_DIR / dataset)
    order = np.random.default_rng(seed).permutation(len(frame))[skip:skip + n]
    return frame.iloc[np.sort(order)].reset_index(drop=True)


@dataclass(frozen=True)
class SiteKit:
    """One site on disk and the coordinator-side values a round needs."""

    root: Path
    config_path: Path
    keys: MemberKeys
    coordinator_key: Ed25519PrivateKey
    data: pd.DataFrame
    featurization_spec: FeaturizationSpec
    model_spec: ModelSpec
    global_weights: dict[str, np.ndarray]

    @property
    def config(self) -> ParticipantConfig:
        """The site's config, loaded the way the ClientApp loads it."""
        return ParticipantConfig.load(self.config_path)

    def instruction(self, *, round: int = 1, target_epsilon: float = 8.0, rounds: int = 3,
                    batch_size: int = 32, unsafe_no_dp: bool = False,
                    receipts: Sequence[RoundReceipt] = (),
                    weights: dict[str, np.ndarray] | None = None) -> RoundInstruction:
        """A train/evaluate instruction for ``weights`` (default: this site's global model),
        delivering ``receipts`` (the site derives its own inclusion proofs)."""
        mspec = self.model_spec
        return RoundInstruction(
            protocol_version=PROTOCOL_VERSION, federation_id="site-factory", round=round,
            global_model_digest=tensors_digest(self.global_weights if weights is None
                                               else weights),
            model_spec=mspec.to_dict(), model_spec_digest=mspec.digest(),
            featurization_spec=self.featurization_spec.to_dict(),
            featurization_spec_digest=self.featurization_spec.digest(),
            config_digest=sha256_hex(b"site-factory federation config"),
            dp_plan=DPPlan(max_grad_norm=1.0, rounds=rounds, local_epochs=1,
                           target_epsilon=target_epsilon, delta=1e-5, batch_size=batch_size,
                           learning_rate=1e-3, optimizer="adam", unsafe_no_dp=unsafe_no_dp),
            consortium_endpoints=mspec.endpoint_names,
            receipts=tuple(r.to_dict() for r in receipts),
            inclusion_proofs=tuple(None for _ in receipts))

    def receipt(self, round: int, *, submission: UpdateSubmission | None,
                previous: RoundReceipt | None = None, status: str = "accepted",
                model_before: str | None = None, model_after: str | None = None
                ) -> RoundReceipt:
        """The coordinator's signed receipt of ``round`` with this site's leaf: accepted
        with the submitted digest, or ``status`` ("dropped": no digest, as a lost reply)."""
        me = self.keys.receipt_fingerprint
        if status == "accepted":
            assert submission is not None
            leaf = ReceiptLeaf(participant_fingerprint=me, status="accepted", weight=1.0,
                               update_digest=submission.delta_digest,
                               participant_signature=submission.signature,
                               claimed_epsilon=submission.claimed_epsilon)
        else:
            leaf = ReceiptLeaf(participant_fingerprint=me, status=status,
                               reason="round-closed" if status == "late" else "timeout")
        digest = tensors_digest(self.global_weights)
        return build_receipt(
            federation_id="site-factory", round=round, issued_at="2026-01-01T00:00:00Z",
            previous_receipt_hash=GENESIS_HASH if previous is None else receipt_hash(previous),
            model_digest_before=model_before or digest, model_digest_after=model_after or digest,
            config_digest=sha256_hex(b"site-factory federation config"), leaves=[leaf],
            coordinator_key=self.coordinator_key)


def make_site(root: Path, *, dataset: str = "R_1291_LOGS.csv", n: int = 300, seed: int = 0,
              endpoint: str = "solubility", private_endpoint: str | None = "private_assay",
              hidden_dims: Sequence[int] = (48,), max_epsilon: float = 20.0,
              target_offset: float = 0.0, target_scale: float = 1.0) -> SiteKit:
    """A site holding ``n`` molecules of ``dataset`` as consortium ``endpoint`` (and, if
    named, a private endpoint on the same molecules that only this site has)."""
    root.mkdir(parents=True, exist_ok=True)
    keys = create_member_keys(root / "keys")
    coordinator = Ed25519PrivateKey.generate()
    (root / "keys" / "coordinator-receipt.pub").write_bytes(public_key_pem(coordinator))
    frame = sample_molecules(dataset, n=n, seed=seed)
    data = pd.DataFrame({"smiles": frame["smiles"], "measured": frame["target"]})
    if private_endpoint is not None:
        # a private assay correlated with the shared one, so its head has signal to learn
        data["private"] = 0.5 * frame["target"] + 1.0
    data.to_csv(root / "assays.csv", index=False)
    lines = [
        "[participant]", 'name = "site-factory"', 'state-dir = "state"',
        f"max-epsilon = {max_epsilon}", "delta = 1e-5",
        'receipt-key = "keys/receipt_key.pem"',
        'coordinator-key = "keys/coordinator-receipt.pub"', "",
        "[data]", 'files = ["assays.csv"]', 'smiles-column = "smiles"',
        "valid-fraction = 0.15", f"split-seed = {seed}", "",
        "[training]", "threads = 1", "",
        f"[endpoints.{endpoint}]", 'column = "measured"', 'task = "regression"', "",
    ]
    if private_endpoint is not None:
        lines += [f"[endpoints.{private_endpoint}]", 'column = "private"',
                  'task = "regression"', ""]
    config_path = root / "participant.toml"
    config_path.write_text("\n".join(lines), encoding="utf-8")
    fspec = get_spec(FEATURIZER)
    mspec = ModelSpec(input_dim=feature_dim(fspec), hidden_dims=tuple(hidden_dims),
                      dropout=0.0, endpoints=(EndpointSpec(
                          name=endpoint, task="regression", target_offset=target_offset,
                          target_scale=target_scale),))
    return SiteKit(root=root, config_path=config_path, keys=keys, coordinator_key=coordinator,
                   data=data, featurization_spec=fspec, model_spec=mspec,
                   global_weights=get_weights(build_model(mspec, seed=seed)))
