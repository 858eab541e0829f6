"""The privacy audit's outputs: ``privacy-audit.json``, a ROC plot, a markdown section.

The I/O shell of ``fedadmet audit privacy`` (and of ``simulate
--privacy-audit``): the numbers come from :mod:`participant.privacy_audit`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["markdown_section", "roc_plot", "write_audit"]


def roc_plot(result: dict[str, Any], path: Path) -> Path:
    """Every target's attacks on one log-log ROC plot (Carlini et al. 2022's view)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for target, attacks in result["membership_inference"].items():
        for attack, m in attacks.items():
            fpr, tpr = m["roc"]["fpr"], m["roc"]["tpr"]
            ax.plot([max(f, 1e-4) for f in fpr], [max(t, 1e-4) for t in tpr],
                    label=f"{target}, {attack} (AUC {m['auc']['value']:.3f})")
    ax.plot([1e-4, 1], [1e-4, 1], "k--", lw=0.8, label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(1e-3, 1)
    ax.set_ylim(1e-3, 1)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title(f"membership inference: {result['site']}")
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _ci(i: dict[str, float], digits: int = 3) -> str:
    return f"{i['value']:.{digits}f} [{i['lower']:.{digits}f}, {i['upper']:.{digits}f}]"


def markdown_section(result: dict[str, Any], *, plot_name: str | None, level: int = 2) -> str:
    """The audit as a markdown section, headed at ``level``."""
    h = "#" * level
    lines = [f"{h} Privacy audit: {result['site']}", "",
             f"{result['members']} members vs {result['non_members']} non-members, a random "
             f"half each of the site's molecules (Carlini et al. 2022), so only membership "
             f"tells them apart; intervals are {int(100 * _confidence(result))} % bootstrap "
             f"intervals. Wall time {result['seconds']:.0f} s.", "",
             "| model | attack | ROC AUC | TPR @ 0.1 % FPR | TPR @ 1 % FPR |",
             "|---|---|---|---|---|"]
    received = result.get("received_membership", {})
    for target, attacks in result["membership_inference"].items():
        # † a received model: its members are fixed (see the note below the table)
        name = f"{target} †" if "lira-offline" not in attacks and received else target
        for attack, m in attacks.items():
            lines.append(f"| {name} | {attack} | {_ci(m['auc'])} | "
                         f"{_ci(m['tpr_at_fpr']['0.001'])} | {_ci(m['tpr_at_fpr']['0.01'])} |")
    if any("lira-offline" not in a for a in result["membership_inference"].values()) and received:
        lines += ["", f"† A received model's members are fixed: its {received['members']} "
                  f"training-split members are attacked against the {received['non_members']} "
                  "held-out scaffold-split molecules, other chemical series, so its figures "
                  "also measure the gap between series and overstate membership leakage."]
    lines += ["", f"{h}# Canary audit of DP-SGD", "",
              "| target ε | canaries | runs (with / without) | claimed ε (accountant) | "
              "empirical ε lower bound (95 %) | ceiling at these runs | verdict |",
              "|---|---|---|---|---|---|---|"]
    for c in result["canary_audit"] + result.get("canary_audit_noise_off", []):
        if c["unsafe_noise_disabled"]:
            verdict = ("flagged, as it must be: the audit can fail" if c["flagged"]
                       else "**NOT flagged**: too few runs for the audit to detect missing noise")
        else:
            verdict = ("**FLAGGED**: the implementation leaks more than it claims" if c["flagged"]
                       else "consistent" if c["refutable"]
                       else "consistent (inconclusive: these runs cannot show a bound this high)")
        target = f"{c['target_epsilon']:g}" + (" (UNSAFE: noise off)"
                                               if c["unsafe_noise_disabled"] else "")
        lines.append(f"| {target} | {c['canaries']} | {c['runs']} / {c['runs']} "
                     f"| {c['claimed_epsilon']:.3f} | {c['epsilon_lower_bound']:.3f} | "
                     f"{c['bound']['ceiling']:.3f} | {verdict} |")
    if result.get("unsafe_noise_disabled") or result.get("canary_audit_noise_off"):
        lines += ["", "**Noise-off control** (UNSAFE rows): those canary runs trained with "
                  "noise_multiplier 0 while the claim stayed the calibrated one, an "
                  "implementation that forgot its noise; the audit must flag them."]
    lines += ["", "The lower bound follows Jagielski et al. 2020 (Clopper-Pearson intervals, "
              "threshold chosen on half of the runs); a sound implementation keeps it below "
              "the claim. `docs/privacy-audit.md` explains how to read these numbers."]
    if plot_name:
        lines += ["", f"![membership-inference ROC]({plot_name})"]
    return "\n".join(lines) + "\n"


def _confidence(result: dict[str, Any]) -> float:
    for attacks in result["membership_inference"].values():
        for m in attacks.values():
            return float(m["confidence"])
    return 0.95


def _strict(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return value


def write_audit(result: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write ``privacy-audit.json``, ``privacy-audit-roc.png`` and ``privacy-audit.md``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "privacy-audit.json", "roc": out / "privacy-audit-roc.png",
             "md": out / "privacy-audit.md"}
    paths["json"].write_text(json.dumps(_strict(result), indent=2, allow_nan=False) + "\n",
                             encoding="utf-8")
    roc_plot(result, paths["roc"])
    paths["md"].write_text(markdown_section(result, plot_name=paths["roc"].name),
                           encoding="utf-8")
    return paths
