"""Privacy audit of the default scenario's largest site: leakage without and with DP.

Builds the ``admet-consortium`` partners (seed 0) exactly as ``simulate`` does,
takes the partner with the most training molecules (partner 0, which also
holds the private ClinTox endpoint), and runs ``fedadmet audit privacy`` on
its ``participant.toml``:

- membership inference (loss threshold, offline LiRA) on the non-private
  local-only model and on the DP-SGD model at the plan's ε (8);
- the canary audit at ε = 8 and at the smaller audit ε (1), with noise, and
  again at the audit ε with the noise switched off (``unsafe_disable_noise``)
  to show the audit flags it (at ε = 8 no affordable number of runs could).

Prints JSON, then a short table; writes the report under ``--out``.

    nice -n 10 python benchmarks/privacy_audit.py [--runs 30] [--shadows 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30, help="canary runs per side")
    ap.add_argument("--audit-epsilon", type=float, default=0.5,
                    help="the smaller claim the runs can refute (ceiling 1.28 at 30 runs)")
    ap.add_argument("--shadows", type=int, default=4)
    ap.add_argument("--canaries", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/privacy-audit-benchmark"))
    ap.add_argument("--cache", type=Path, default=Path(".fedadmet-cache"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from chem.featurizers import get_spec
    from participant.config import ParticipantConfig
    from participant.data import load_site_data
    from participant.privacy_audit import canary_audits, run_privacy_audit, site_model_spec
    from participant.privacy_audit_report import write_audit
    from simulations.privacy_arm import audit_plan
    from simulations.runner import prepare_seed
    from simulations.scenario import load_scenario

    sc = load_scenario("admet-consortium")
    run = prepare_seed(sc, args.out / "site", seed=0, cache=args.cache)
    largest = max(run.partners, key=lambda p: sum(t for t, _ in p.counts.values()))
    cfg = ParticipantConfig.load(run.participant_configs[largest.index])
    plan = audit_plan(sc, shadows=args.shadows, canaries=args.canaries, runs=args.runs,
                      audit_epsilon=args.audit_epsilon)
    t0 = time.perf_counter()
    result = run_privacy_audit(cfg, plan)
    audit_seconds = time.perf_counter() - t0
    data = load_site_data(cfg, get_spec(plan.featurizer))
    t1 = time.perf_counter()
    result["canary_audit_noise_off"] = canary_audits(
        # noise off at the refutable claim only: at ε = 8 no affordable R could flag it
        data, site_model_spec(data, cfg, plan), replace(plan, epsilon=plan.audit_epsilon),
        delta=cfg.delta,
        unsafe_disable_noise=True)
    noise_off_seconds = time.perf_counter() - t1
    paths = write_audit(result, args.out)
    load = os.getloadavg()
    summary = {
        "site": largest.index, "members": result["members"],
        "non_members": result["non_members"], "runs_per_side": args.runs,
        "shadows": args.shadows, "threads": args.threads,
        "audit_seconds": audit_seconds, "noise_off_seconds": noise_off_seconds,
        "load_average_1_5_15": load,
        "membership_inference": {
            t: {a: {"auc": m["auc"], "tpr_at_1pct_fpr": m["tpr_at_fpr"]["0.01"],
                    "tpr_at_0.1pct_fpr": m["tpr_at_fpr"]["0.001"]} for a, m in attacks.items()}
            for t, attacks in result["membership_inference"].items()},
        "canary": [{k: c[k] for k in ("target_epsilon", "claimed_epsilon",
                                      "epsilon_lower_bound", "flagged", "refutable",
                                      "unsafe_noise_disabled", "seconds")} | {
                        "ceiling": c["bound"]["ceiling"]}
                   for c in result["canary_audit"] + result["canary_audit_noise_off"]],
        "report": str(paths["md"])}
    print(json.dumps(summary, indent=2))
    print(f"\nsite {largest.index}: {result['members']} members / {result['non_members']} "
          f"non-members; audit {audit_seconds:.0f} s (+{noise_off_seconds:.0f} s noise-off), "
          f"load {load[0]:.1f}")
    print(f"{'model':28} {'attack':15} {'AUC [95% CI]':24} TPR@1%FPR")
    for t, attacks in result["membership_inference"].items():
        for a, m in attacks.items():
            auc, tpr = m["auc"], m["tpr_at_fpr"]["0.01"]
            print(f"{t:28} {a:15} {auc['value']:.3f} [{auc['lower']:.3f}, {auc['upper']:.3f}]"
                  f"   {tpr['value']:.3f} [{tpr['lower']:.3f}, {tpr['upper']:.3f}]")
    print(f"\n{'canary audit':22} {'claimed ε':>10} {'ε lower bound':>14} {'ceiling':>8}  flag")
    for c in summary["canary"]:
        name = f"ε={c['target_epsilon']:g}" + (" noise OFF" if c["unsafe_noise_disabled"]
                                              else "")
        print(f"{name:22} {c['claimed_epsilon']:10.3f} {c['epsilon_lower_bound']:14.3f} "
              f"{c['ceiling']:8.3f}  {'FLAGGED' if c['flagged'] else '-'}")


if __name__ == "__main__":
    main()
