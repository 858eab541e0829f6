"""Privacy audit of the default scenario's largest site: leakage without and with DP.

Builds the ``admet-consortium`` partners (seed 0) exactly as ``simulate`` does,
takes the partner with the most training molecules (partner 0, which also
holds the private ClinTox endpoint), and runs ``fedadmet audit privacy`` on
its ``participant.toml``:

- membership inference (loss threshold, offline LiRA) on the non-private
  local-only model and on the DP-SGD model at the plan's ε (8), members a
  random half of the site's molecules;
- the canary audit at ε = 8 and at the smaller audit ε, with noise, and
  the audit's own noise-off control at the audit ε, which must be flagged
  (at ε = 8 no affordable number of runs could).

Prints JSON (wall and CPU seconds, load average), then a short table; writes
the report under ``--out``.

    nice -n 10 python benchmarks/privacy_audit.py [--runs 40] [--shadows 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40, help="canary runs per side")
    ap.add_argument("--canary-rows", type=int, default=256)
    ap.add_argument("--audit-epsilon", type=float, default=0.5,
                    help="the smaller claim the runs can refute (ceiling 1.28 at 30 runs)")
    ap.add_argument("--shadows", type=int, default=4)
    ap.add_argument("--canaries", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/privacy-audit-benchmark"))
    ap.add_argument("--cache", type=Path, default=Path(".fedadmet-cache"))
    ap.add_argument("--site", type=Path, default=None,
                    help="participant.toml of a site prepared earlier (skips preparation)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from participant.config import ParticipantConfig
    from participant.privacy_audit import run_privacy_audit
    from participant.privacy_audit_report import write_audit
    from simulations.privacy_arm import audit_plan
    from simulations.runner import prepare_seed
    from simulations.scenario import load_scenario

    sc = load_scenario("admet-consortium")
    if args.site is None:
        run = prepare_seed(sc, args.out / "site", seed=0, cache=args.cache)
        largest = max(run.partners, key=lambda p: sum(t for t, _ in p.counts.values()))
        site, args.site = largest.index, run.participant_configs[largest.index]
    else:
        site = -1  # given: a site prepared earlier (e.g. partner-0 of a previous run)
    cfg = ParticipantConfig.load(args.site)
    plan = audit_plan(sc, shadows=args.shadows, canaries=args.canaries, runs=args.runs,
                      audit_epsilon=args.audit_epsilon, canary_rows=args.canary_rows)
    stages: dict[str, float] = {}
    since: dict[str, float] = {}  # the current stage -> when it began

    def progress(stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        for name, began in since.items():
            stages[name] = stages.get(name, 0.0) + now - began
        since.clear()
        if stage:
            since[stage] = now

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    load0, c0, t0 = os.getloadavg(), cpu(), time.perf_counter()
    result = run_privacy_audit(cfg, plan, progress=progress)
    audit_seconds, audit_cpu = time.perf_counter() - t0, cpu() - c0
    progress("", 0, 0)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "raw-result.json").write_text(json.dumps(result, default=str), encoding="utf-8")
    paths = write_audit(result, args.out)
    load = os.getloadavg()
    summary = {
        "site": site, "participant_toml": str(args.site), "members": result["members"],
        "non_members": result["non_members"], "runs_per_side": args.runs,
        "shadows": args.shadows, "threads": args.threads,
        "audit_seconds": audit_seconds, "audit_cpu_seconds": audit_cpu,
        "seconds_by_stage": stages,
        "load_average_1_5_15_before": load0, "load_average_1_5_15_after": load,
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
    print(f"\nsite {site}: {result['members']} members / {result['non_members']} "
          f"non-members; audit {audit_seconds:.0f} s wall, {audit_cpu:.0f} s CPU, "
          f"load {load0[0]:.1f} -> {load[0]:.1f}")
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
