"""Runs a scenario: the production ServerApp and ClientApp in Flower's simulation engine.

For each seed: build virtual partners' data, give each partner a real site
directory (keys, ``participant.toml``, state), write a real
``federation.toml``, keys and member list for the coordinator, then run
``flwr.simulation.run_simulation`` with the same apps a deployment uses.
Training, DP, ledgers, admission, aggregation and receipts therefore take
exactly the production code paths. An interrupted run resumes from the
coordinator's checkpoint when started again on the same output directory.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.config import FederationConfig
from coordinator.federation import RoundSummary, Weights
from coordinator.members import MemberRecord, save_members
from participant.client_app import PartitionConfigs, make_client_app
from protocols.signing import Ed25519PrivateKey, private_key_pem, public_key_pem
from simulations.datasets import load_dataset
from simulations.partners import PartnerData, build_partner_data, source_reports
from simulations.scenario import Scenario

__all__ = ["SeedRun", "check_data", "run_seed"]

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class SeedRun:
    """Where one seed's federation put its outputs."""

    seed: int
    root: Path
    partners: list[PartnerData]
    federation: FederationConfig
    participant_configs: dict[int, Path]
    rounds: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _write_key(path: Path, key: Ed25519PrivateKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_bytes(private_key_pem(key))
        os.chmod(path, 0o600)


def _key(path: Path) -> Ed25519PrivateKey:
    from protocols.signing import load_private_key

    if path.exists():
        return load_private_key(path.read_bytes())
    key = Ed25519PrivateKey.generate()
    _write_key(path, key)
    return key


def _scaling(scenario: Scenario, cache: Path) -> dict[str, tuple[float, float]]:
    """Agreed, fixed target scaling per regression endpoint (from the public data)."""
    out: dict[str, tuple[float, float]] = {}
    for e in scenario.consortium:
        if e.task == "regression" and e.dataset:
            y = load_dataset(e.dataset, cache_dir=cache).labels[:, 0]
            y = y[np.isfinite(y)]
            out[e.name] = (round(float(y.mean()), 3), round(float(y.std()) or 1.0, 3))
    return out


def _federation_toml(scenario: Scenario, seed: int, scaling: dict[str, tuple[float, float]]
                     ) -> str:
    eps = scenario.epsilon
    lines = [
        "[federation]", f'id = "{scenario.name}-seed{seed}"', f"rounds = {scenario.rounds}",
        f"min-participants = {scenario.partners}", "fraction = 1.0", "join-timeout = 120.0",
        f"round-timeout = {scenario.round_timeout}", 'weighting = "uniform"',
        f"seed = {seed}", 'state-dir = "state"', 'members = "members.json"',
        'signing-key = "keys/receipt-signing.key"', "",
        "[model]", f'featurizer = "{scenario.featurizer}"',
        f"hidden-dims = {list(scenario.hidden_dims)}", f"dropout = {scenario.dropout}",
        f"init-seed = {seed}", "",
        "[privacy]", f"max-grad-norm = {scenario.max_grad_norm}",
        f"target-epsilon = {eps if math.isfinite(eps) else 1e6}", f"delta = {scenario.delta}",
        f"local-epochs = {scenario.local_epochs}", f"batch-size = {scenario.batch_size}",
        f"learning-rate = {scenario.learning_rate}", f'optimizer = "{scenario.optimizer}"',
        f"unsafe-no-dp = {'true' if math.isinf(eps) else 'false'}", "",
        "[server-optimizer]", f'name = "{scenario.server_optimizer}"',
        f"learning-rate = {scenario.server_learning_rate}", "",
        "[admission]", "max-update-norm = 1000.0", "",
    ]
    for e in scenario.consortium:
        offset, scale = scaling.get(e.name, (0.0, 1.0))
        lines += ["[[model.endpoints]]", f'name = "{e.name}"', f'task = "{e.task}"',
                  f"target-offset = {offset}", f"target-scale = {scale}", ""]
    return "\n".join(lines)


def _participant_toml(scenario: Scenario, partner: PartnerData, names: dict[str, str]) -> str:
    eps = scenario.epsilon
    max_eps = str(eps) if math.isfinite(eps) else '"inf"'
    lines = [
        "[participant]", f'name = "partner-{partner.index}"', 'state-dir = "state"',
        f"max-epsilon = {max_eps}",
        f"delta = {scenario.delta}", 'receipt-key = "keys/receipt-signing.key"',
        'coordinator-key = "keys/coordinator-receipt.pub"', "",
        "[data]", 'files = ["train.csv"]', 'smiles-column = "smiles"',
        "valid-fraction = 0.15", f"split-seed = {partner.index}", "",
        "[training]", "threads = 1", "",
    ]
    for e in partner.endpoints:
        lines += [f"[endpoints.{e}]", f'column = "{e}"', f'task = "{names[e]}"', ""]
    return "\n".join(lines)


def prepare_seed(scenario: Scenario, root: Path, *, seed: int, cache: Path) -> SeedRun:
    """Partners' data and sites, the coordinator's config, keys and member list."""
    root.mkdir(parents=True, exist_ok=True)
    partners = build_partner_data(scenario, root, seed=seed, cache=cache)
    coord = root / "coordinator"
    coordinator_key = _key(coord / "keys" / "receipt-signing.key")
    (coord / "keys" / "receipt-signing.pub").write_bytes(public_key_pem(coordinator_key))
    tasks = {e.name: e.task for e in scenario.endpoints}
    members = []
    configs: dict[int, Path] = {}
    for p in partners:
        pdir = p.train_csv.parent
        key = _key(pdir / "keys" / "receipt-signing.key")
        (pdir / "keys" / "coordinator-receipt.pub").write_bytes(public_key_pem(coordinator_key))
        members.append(MemberRecord(name=f"partner-{p.index}",
                                    receipt_key_pem=public_key_pem(key).decode(),
                                    max_epsilon=scenario.epsilon))
        cfg_path = pdir / "participant.toml"
        cfg_path.write_text(_participant_toml(scenario, p, tasks), encoding="utf-8")
        configs[p.index] = cfg_path
    save_members(coord / "members.json", members)
    fed_path = coord / "federation.toml"
    fed_path.write_text(_federation_toml(scenario, seed, _scaling(scenario, cache)),
                        encoding="utf-8")
    return SeedRun(seed=seed, root=root, partners=partners,
                   federation=FederationConfig.load(fed_path), participant_configs=configs)


def run_seed(run: SeedRun, *, on_round: Any = None, on_reply: Any = None) -> SeedRun:
    """Run (or resume) the federation for one prepared seed in Flower's simulation engine."""
    from flwr.simulation import run_simulation

    from coordinator.server_app import make_server_app

    rounds: list[dict[str, Any]] = []

    def record(summary: RoundSummary, weights: Weights) -> None:
        rounds.append(summary.__dict__)
        if on_round is not None:
            on_round(summary)

    t0 = time.perf_counter()
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    run_simulation(
        server_app=make_server_app(run.federation, on_round=record, on_reply=on_reply),
        client_app=make_client_app(PartitionConfigs(run.participant_configs)),
        num_supernodes=len(run.partners),
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                        "init_args": {"num_cpus": max(1, min(2, os.cpu_count() or 1)),
                                      "logging_level": "ERROR", "log_to_driver": True}},
    )
    run.seconds = time.perf_counter() - t0
    jsonl = run.federation.state_dir / "rounds.jsonl"
    run.rounds = [json.loads(line) for line in jsonl.read_text().splitlines()] if \
        jsonl.exists() else rounds
    final = run.federation.state_dir / "global_model.npz"
    if not final.exists():
        raise RuntimeError(f"the federation did not finish: no {final}; see the log above")
    return run


def data_report(scenario: Scenario, partners: list[PartnerData], cache: Path
                ) -> dict[str, Any]:
    """Every source's rows (read, standardised, rejected and why, merged) and each partner's."""
    return {"endpoints": source_reports(scenario, cache),
            "partners": [{"partner": p.index, "train_csv": str(p.train_csv),
                          "counts": {e: {"train": n, "test": m} for e, (n, m) in
                                     p.counts.items()}, **p.intake} for p in partners]}


def check_data(scenario: Scenario, out: Path, *, cache: Path) -> dict[str, Any]:
    """Every seed's partner data, and the report on it, without a federation.

    Written to ``out/data-report.json`` and returned.
    """
    seeds = [{"seed": seed, "data": data_report(
        scenario, build_partner_data(scenario, out / f"seed-{seed}", seed=seed, cache=cache),
        cache)} for seed in scenario.seeds]
    out.mkdir(parents=True, exist_ok=True)
    report = {"seeds": seeds}
    (out / "data-report.json").write_text(json.dumps(report, indent=2) + "\n",
                                          encoding="utf-8")
    return report

def run_scenario(scenario: Scenario, out_dir: Path, *, cache: Path,
                 progress: Any = None, on_reply: Any = None) -> dict[str, Any]:
    """All seeds: federate, compare the four arms, and return the results dict."""
    from chem.models import ModelSpec
    from coordinator.server_app import model_spec_for
    from participant.heads import PrivateHeadStore
    from protocols.receipts import parse_receipt, receipt_hash, verify_chain
    from protocols.signing import load_private_key
    from simulations.comparisons import compare_partners

    t0 = time.perf_counter()
    seeds: list[dict[str, Any]] = []
    for seed in scenario.seeds:
        run = prepare_seed(scenario, out_dir / f"seed-{seed}", seed=seed, cache=cache)
        run_seed(run, on_round=progress, on_reply=on_reply)
        state = run.federation.state_dir
        with np.load(state / "global_model.npz") as npz:
            weights = {k: npz[k] for k in npz.files}
        receipts = sorted((state / "receipts").glob("receipt-*.json"))
        key = load_private_key(run.federation.signing_key.read_bytes())  # type: ignore[union-attr]
        chain = verify_chain([p.read_bytes() for p in receipts], coordinator_key=key.public_key())
        if not chain.ok:
            raise RuntimeError(f"receipt chain failed verification: {chain.reason}")
        last = parse_receipt(receipts[-1].read_bytes())
        eps = {leaf.participant_fingerprint: float(leaf.claimed_epsilon or 0.0)
               for leaf in last.leaves}
        comparisons: list[dict[str, Any]] = []
        if scenario.compare:
            mspec: ModelSpec = model_spec_for(run.federation)
            heads = {p.index: PrivateHeadStore(p.train_csv.parent / "state").load()
                     for p in run.partners}
            rows = compare_partners(
                partner_dirs=[p.train_csv.parent for p in run.partners],
                endpoints=[e.name for e in scenario.endpoints],
                tasks={e.name: e.task for e in scenario.endpoints}, model=mspec,
                global_weights=weights, private_heads=heads, featurizer=scenario.featurizer,
                cache=cache, seed=seed)
            comparisons = [r.__dict__ for r in rows]
        seeds.append({"seed": seed, "data": data_report(scenario, run.partners, cache),
                      "rounds": run.rounds, "seconds": run.seconds,
                      "comparisons": comparisons, "epsilon": eps,
                      "receipt_chain_head": receipt_hash(last), "receipts_dir": str(
                          state / "receipts"),
                      "config_digest": run.federation.digest()})
    return {"scenario": scenario.to_dict(), "scenario_digest": scenario.digest(),
            "seeds": seeds, "seconds": time.perf_counter() - t0}
