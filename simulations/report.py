"""The simulation report: results.json, report.md, report.html and PNG plots.

The table gives, per partner and endpoint, the four arms (mean ± std across
seeds) and the share of the local-only-to-pooled gap closed by federated +
fine-tune. Wording is honest: where federation does not beat local-only, the
report says so.

Results-dict schema (what ``simulations.runner.run_scenario`` returns)::

    {
      "scenario": Scenario.to_dict(),          # resolved scenario; epsilon "inf" if non-private
      "scenario_digest": str,                  # SHA-256 of RFC 8785 canonical JSON
      "seconds": float,                        # wall time, all seeds
      "seeds": [{
        "seed": int,
        "data": {                              # simulations.runner.data_report
          "endpoints": {name: {source, held_by, files, rows_read, standardised, rejected,
                               reasons {reason: n}, structures, duplicates_merged
                               {endpoint: n}, invalid_rows [{file, row, column, value,
                               reason}] (the first 20), invalid_rows_not_shown}},
          "partners": [{partner, train_csv, counts {endpoint: {train, test}},
                        rows_read, standardised, rejected, reasons, ...}],
        },
        "config_digest": str,                  # the coordinator's federation config digest
        "seconds": float,                      # wall time of this seed's federation
        "rounds": [RoundSummary.__dict__],     # round, evaluate {endpoint metric: value},
                                               # seconds, accepted, ... (learning curves)
        "comparisons": [ArmResult.__dict__],   # partner, endpoint, metric, arm, value, n_test
                                               # arm in ARMS (four arms + mean-predictor)
        "epsilon": {fingerprint: float},       # final claimed cumulative ε per partner
        "receipt_chain_head": str,             # hash of the last receipt
        "receipts_dir": str,
      }],
    }

``write_report`` adds ``summary`` (one row per partner and endpoint, per-arm
values across seeds, gap closed by federated and by federated + fine-tune,
flags) and ``mean_gap_closed`` (over consortium endpoints, of seed means)
before writing ``results.json`` (NaN written as null, so the file is strict
JSON). ``write_sweep_report`` takes one results
dict per ε of a dp-sweep and draws the privacy-utility curve.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from chem.metrics import HIGHER_IS_BETTER
from simulations.comparisons import MIN_GAP, gap_closed

__all__ = ["ARMS", "data_lines", "eps_dir", "figures_of_merit", "summarise", "write_report",
           "write_sweep_report"]

ARMS = ("local-only", "federated", "federated+finetune", "pooled", "mean-predictor")


def _fmt(values: list[float]) -> str:
    v = [x for x in values if math.isfinite(x)]
    if not v:
        return "n/a"
    if len(v) == 1:  # one seed has no spread to show: "± 0.000" would claim one
        return f"{v[0]:.3f}"
    return f"{np.mean(v):.3f} ± {np.std(v):.3f}"


def _improvement(local: float, arm: float, *, higher_is_better: bool) -> float:
    """How much ``arm`` beats ``local`` in the metric's own direction (negative: worse)."""
    return (arm - local) if higher_is_better else (local - arm)


def figures_of_merit(rows: list[dict[str, Any]], arm: str) -> dict[str, Any]:
    """Over cells (partner x endpoint, seed means): how much of the gap ``arm`` closes.

    ``aggregate``: Σ(local − arm) / Σ(local − pooled), sign-corrected per metric, so a
    cell where pooled ≈ local adds ~0 to the denominator instead of exploding a ratio
    (the mean of per-cell ratios is kept beside it, with its median); ``wins``: cells
    where ``arm`` beats local-only on seed means; ``beats_mean_predictor``: the same
    against the training-mean baseline.
    """
    num = den = 0.0
    wins = beats_baseline = 0
    ratios = []
    for r in rows:
        means = {a: float(np.mean(v)) if v else math.nan for a, v in r["arms"].items()}
        better = HIGHER_IS_BETTER[r["metric"]]
        lo, value, po = means["local-only"], means[arm], means["pooled"]
        gain = _improvement(lo, value, higher_is_better=better)
        wins += int(gain > 0)
        beats_baseline += int(_improvement(means["mean-predictor"], value,
                                           higher_is_better=better) > 0)
        if math.isfinite(gain) and math.isfinite(po):
            num += gain
            den += _improvement(lo, po, higher_is_better=better)
        ratio = gap_closed(lo, value, po, higher_is_better=better, min_gap=MIN_GAP)
        if math.isfinite(ratio):
            ratios.append(ratio)
    return {"arm": arm, "cells": len(rows), "wins": wins,
            "beats_mean_predictor": beats_baseline,
            "aggregate": num / den if den > 0 else math.nan,
            "mean": float(np.mean(ratios)) if ratios else math.nan,
            "median": float(np.median(ratios)) if ratios else math.nan,
            "ratios_defined": len(ratios)}


def _num(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else "n/a"


def summarise(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows: partner, endpoint, metric, per-arm values across seeds, gap closed."""
    cells: dict[tuple[int, str, str], dict[str, list[float]]] = defaultdict(
        lambda: defaultdict(list))
    for seed_run in results["seeds"]:
        for row in seed_run["comparisons"]:
            cells[(row["partner"], row["endpoint"], row["metric"])][row["arm"]].append(
                row["value"])
    private = {e["name"] for e in results["scenario"].get("endpoints", [])
               if isinstance(e, dict) and e.get("private_to") is not None}
    out = []
    for (partner, endpoint, metric), arms in sorted(cells.items()):
        better = HIGHER_IS_BETTER[metric]
        gaps = [gap_closed(lo, ft, po, higher_is_better=better, min_gap=MIN_GAP)
                for lo, ft, po in zip(arms["local-only"], arms["federated+finetune"],
                                      arms["pooled"], strict=False)]
        beats = [((ft > lo) if better else (ft < lo)) for lo, ft in zip(
            arms["local-only"], arms["federated+finetune"], strict=False)]
        fed_gaps = [gap_closed(lo, fe, po, higher_is_better=better, min_gap=MIN_GAP)
                    for lo, fe, po in zip(arms["local-only"], arms["federated"],
                                          arms["pooled"], strict=False)]
        fed_beats = [((fe > lo) if better else (fe < lo)) for lo, fe in zip(
            arms["local-only"], arms["federated"], strict=False)]
        means = {a: float(np.mean(v)) if v else math.nan for a, v in arms.items()}
        of_means = gap_closed(means.get("local-only", math.nan),
                              means.get("federated+finetune", math.nan),
                              means.get("pooled", math.nan), higher_is_better=better,
                              min_gap=MIN_GAP)
        lo_m, ft_m = means.get("local-only", math.nan), means.get("federated+finetune", math.nan)
        out.append({"partner": partner, "endpoint": endpoint, "metric": metric,
                    "private": endpoint in private, "gap_closed_of_means": of_means,
                    "finetune_beats_local_on_mean": (ft_m > lo_m) if better else (ft_m < lo_m),
                    "arms": {a: arms.get(a, []) for a in ARMS},
                    "gap_closed": gaps, "gap_closed_federated": fed_gaps,
                    "gap_too_small": any(math.isnan(g) for g in gaps),
                    "finetune_beats_local_all_seeds": all(beats),
                    "federated_beats_local_all_seeds": all(fed_beats)})
    return out


def _strict_json(value: Any) -> Any:
    """NaN and infinities are not JSON: write them as null (ε = inf stays the string "inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict_json(v) for v in value]
    if isinstance(value, np.generic):
        return _strict_json(value.item())
    return value


def _round_seconds(results: dict[str, Any]) -> list[float]:
    return [float(r["seconds"]) for s in results["seeds"] for r in s["rounds"]
            if isinstance(r.get("seconds"), int | float)]


def _plots(results: dict[str, Any], rows: list[dict[str, Any]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    curves: dict[str, list[list[float]]] = defaultdict(list)
    for seed_run in results["seeds"]:
        per_key: dict[str, list[float]] = defaultdict(list)
        for r in seed_run["rounds"]:
            for k, v in r["evaluate"].items():
                if k != "loss":
                    per_key[k].append(v)
        for k, v in per_key.items():
            curves[k].append(v)
    if curves:
        fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.2), squeeze=False)
        for ax, (key, series) in zip(axes[0], sorted(curves.items()), strict=True):
            for s in series:
                ax.plot(range(1, len(s) + 1), s, marker="o")
            ax.set_title(key)
            ax.set_xlabel("round")
        fig.tight_layout()
        path = out / "learning_curves.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    if rows:
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows)), 3.6))
        width = 0.2
        arms = ("local-only", "federated", "federated+finetune", "pooled")
        for i, arm in enumerate(arms):
            means = [np.nanmean(r["arms"][arm]) if r["arms"][arm] else np.nan for r in rows]
            ax.bar(np.arange(len(rows)) + (i - 1.5) * width, means, width, label=arm)
        ax.set_xticks(np.arange(len(rows)))
        ax.set_xticklabels([f"P{r['partner']} {r['endpoint']}\n{r['metric']}" for r in rows],
                           fontsize=7)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / "partners.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _per_round(results: dict[str, Any]) -> str:
    secs = _round_seconds(results)
    if not secs:
        return ""
    return f" ({np.mean(secs):.1f} s per round on average, slowest {max(secs):.1f} s)"


def _comparison_lines(results: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """The arms table and what it shows, or why there is none."""
    if not rows:
        # A scale scenario (compare = false): no arms, so no claims about them.
        return ["No comparison arms were run (the scenario sets `compare = false`): this run "
                "measures the federation itself (wall time per round, privacy spent, receipts)."]
    lines = ["| partner | endpoint | metric | local-only | federated | federated + fine-tune "
             "| pooled | mean predictor | gap closed (of means) | gap closed per seed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a = r["arms"]
        lines.append(f"| {r['partner']} | {r['endpoint']} | {r['metric'].upper()} | "
                     f"{_fmt(a['local-only'])} | {_fmt(a['federated'])} | "
                     f"{_fmt(a['federated+finetune'])} | {_fmt(a['pooled'])} | "
                     f"{_fmt(a['mean-predictor'])} | {_num(r['gap_closed_of_means'])} | "
                     f"{_fmt(r['gap_closed'])} |")
    losers = [r for r in rows if not r["finetune_beats_local_all_seeds"]]
    fed_losers = [r for r in rows if not r["federated_beats_local_all_seeds"]]
    flat = [r for r in rows if r["gap_too_small"]]
    wins = results["finetune_beats_local"]
    fom = results["figures_of_merit"]
    lines += ["", "The federated arms use the final round's global model (no best-round "
              "selection).", ""]
    lines += _merit_lines(fom)
    if wins["cells"]:
        lines += ["", "Mean share of the local-to-pooled gap closed by federated + fine-tune "
                  "(on seed means), over consortium endpoints where pooling beats local-only "
                  f"by at least {MIN_GAP}: {_num(results['mean_gap_closed'])} (median "
                  f"{_num(results['median_gap_closed'])}; mean of per-seed ratios "
                  f"{_num(results['mean_gap_closed_per_seed'])}). Federated + fine-tune beat "
                  f"local-only in {wins['wins_on_seed_means']} of {wins['cells']} consortium "
                  f"cells on seed means, and in {wins['wins']} of {wins['cells']} consortium "
                  "cells in every seed."]
    lines.append("")
    if losers:
        lines.append("Federated + fine-tune did **not** beat local-only in every seed for: "
                     + ", ".join(f"partner {r['partner']} {r['endpoint']}" for r in losers) + ".")
    else:
        lines.append("Federated + fine-tune beat local-only for every partner and endpoint in "
                     "every seed.")
    if fed_losers:
        lines.append("The federated model without fine-tuning did **not** beat local-only in "
                     "every seed for: " + ", ".join(
                         f"partner {r['partner']} {r['endpoint']}" for r in fed_losers) + ".")
    if flat:
        lines.append(f"Gap closed is n/a (pooled does not beat local-only by {MIN_GAP} in "
                     "some seed, so the share is undefined there) for: " + ", ".join(
                         f"partner {r['partner']} {r['endpoint']}" for r in flat) + ".")
    return lines


def _merit_lines(fom: dict[str, Any]) -> list[str]:
    """The figures of merit table: aggregate share, wins, median and mean of ratios."""
    kind = fom["cells"]
    lines = [f"Figures of merit over the {kind} cells (seed means; aggregate share "
             "Σ(local − arm) / Σ(local − pooled), sign-corrected per metric):", "",
             "| arm | aggregate share of the gap | beats local-only | beats mean predictor "
             "| median ratio | mean ratio | cells with a defined ratio |",
             "|---|---|---|---|---|---|---|"]
    for arm, label in (("federated", "federated"), ("federated+finetune",
                                                     "federated + fine-tune")):
        f = fom[arm]
        lines.append(f"| {label} | **{_num(f['aggregate'])}** | {f['wins']} of {f['cells']} "
                     f"| {f['beats_mean_predictor']} of {f['cells']} | {_num(f['median'])} | "
                     f"{_num(f['mean'])} | {f['ratios_defined']} of {f['cells']} |")
    return lines


def data_lines(results: dict[str, Any]) -> list[str]:
    """The input-data section: every source's rows and each partner's, from ``chem.tables``."""
    from chem.standardize import InvalidRow

    runs = [s for s in results["seeds"] if s.get("data")]
    if not runs:
        return []
    lines = ["## Input data", "",
             "Every file goes through the loader a site uses (`chem.tables`): rows whose SMILES "
             "or label cannot be used are rejected and listed, and duplicate standardised "
             "structures are merged per endpoint (mean; majority label, ties dropped).", "",
             "| endpoint | source | held by | rows read | standardised | rejected rows | "
             "rejected label cells | duplicate rows merged | distinct structures |",
             "|---|---|---|---|---|---|---|---|---|"]
    endpoints = runs[0]["data"]["endpoints"]
    for name, d in endpoints.items():
        cells = sum(d["reasons"].values()) - d["rejected"]
        lines.append(f"| {name} | {Path(d['source']).name} | {d['held_by']} | "
                     f"{d['rows_read']} | {d['standardised']} | {d['rejected']} | {cells} | "
                     f"{sum(d['duplicates_merged'].values())} | {d['structures']} |")
    for name, d in endpoints.items():
        if d["reasons"]:
            lines += ["", f"Rejected in {name}: " + "; ".join(
                f"{why}: {n}" for why, n in d["reasons"].items()) + "."]
            lines += [f"- {InvalidRow(**r).describe()}" for r in d["invalid_rows"]]
            if d["invalid_rows_not_shown"]:
                lines.append(f"- ... and {d['invalid_rows_not_shown']} more (all counted above)")
    lines += ["", "Each partner's training file, as its own loader reads it:", "",
              "| seed | partner | rows read | standardised | rejected | duplicate rows merged | "
              "train / test per endpoint |", "|---|---|---|---|---|---|---|"]
    for run in runs:
        for p in run["data"]["partners"]:
            counts = ", ".join(f"{e} {c['train']} / {c['test']}" for e, c in p["counts"].items())
            lines.append(f"| {run['seed']} | {p['partner']} | {p.get('rows_read', 0)} | "
                         f"{p.get('standardised', 0)} | {p.get('rejected', 0)} | "
                         f"{sum(p.get('duplicates_merged', {}).values())} | {counts} |")
    return lines


def write_report(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write results.json, report.md, report.html and the plots into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    rows = summarise(results)
    results = {**results, "summary": rows}
    # The figure of merit is over consortium endpoints: a private endpoint's "pooled"
    # arm is its one holder's data, so there is no gap to close. It is the gap of the
    # seed means: a per-seed ratio of two noisy differences explodes when one seed's
    # pooled-minus-local gap is small (the per-seed figure is kept for reference).
    consortium = [r for r in rows if not r["private"]]
    gaps = [r["gap_closed_of_means"] for r in consortium
            if math.isfinite(r["gap_closed_of_means"])]
    results["mean_gap_closed"] = float(np.mean(gaps)) if gaps else math.nan
    results["median_gap_closed"] = float(np.median(gaps)) if gaps else math.nan
    per_seed = [float(np.mean(fin)) for r in consortium
                if (fin := [g for g in r["gap_closed"] if math.isfinite(g)])]
    results["mean_gap_closed_per_seed"] = float(np.mean(per_seed)) if per_seed else math.nan
    results["finetune_beats_local"] = {
        "cells": len(consortium),
        "wins": sum(r["finetune_beats_local_all_seeds"] for r in consortium),
        "wins_on_seed_means": sum(r["finetune_beats_local_on_mean"] for r in consortium)}
    # Consortium cells when there are any; an all-private consortium (only the trunk
    # shared) is judged on its private cells, where "pooled" is the holder's own data.
    judged = consortium or rows
    results["figures_of_merit"] = {
        "cells": "consortium" if consortium else "private",
        "reported_model": "final round's global model (no best-round selection)",
        **{arm: figures_of_merit(judged, arm) for arm in ("federated", "federated+finetune")}}
    (out / "results.json").write_text(
        json.dumps(_strict_json(results), indent=2, default=str, allow_nan=False) + "\n",
        encoding="utf-8")
    plots = _plots(results, rows, out)
    lines = [f"# fedadmet simulation: {results['scenario']['name']}", "",
             f"Scenario digest `{results['scenario_digest'][:16]}`, seeds "
             f"{results['scenario']['seeds']}, ε = {results['scenario']['epsilon']} per partner "
             f"(δ = {results['scenario']['delta']}), {results['scenario']['rounds']} rounds, "
             f"{results['scenario']['partners']} partners. Wall time "
             f"{results['seconds']:.0f} s" + _per_round(results) + ".", "",
             "Each partner is evaluated on its own scaffold-split held-out test set "
             "(mean ± std across seeds).", ""]
    lines += _comparison_lines(results, rows)
    lines += ["", *data_lines(results)]
    lines += ["", "Privacy spent per partner (final claimed cumulative ε, from the receipts):", ""]
    for seed_run in results["seeds"]:
        eps = seed_run["epsilon"]
        lines.append(f"- seed {seed_run['seed']}: " + ", ".join(
            f"{k[:19]}… ε={v:.2f}" for k, v in sorted(eps.items())) +
            f"; receipt-chain head `{seed_run['receipt_chain_head'][:16]}`")
    lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    md = "\n".join(lines) + "\n"
    (out / "report.md").write_text(md, encoding="utf-8")
    body = _html_body(lines)
    images = "".join(f'<img src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}"'
                     f' alt="{p.stem}"><br>' for p in plots)
    (out / "report.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>fedadmet report</title>"
        f"</head><body>{body}{images}</body></html>", encoding="utf-8")
    return {"results": out / "results.json", "md": out / "report.md",
            "html": out / "report.html", **{p.stem: p for p in plots}}


def _html_body(lines: list[str]) -> str:
    """report.md's lines as HTML: every markdown table a table, every other line a paragraph."""
    parts: list[str] = []
    table: list[list[str]] = []
    for line in [*lines, ""]:
        if line.startswith("|"):
            if not set(line) <= set("|-: "):  # the |---| separator row is markup only
                table.append([c.strip() for c in line.strip("|").split("|")])
            continue
        if table:
            head, *body = table
            parts.append("<table border=1 cellpadding=4><tr>" + "".join(
                f"<th>{html.escape(h)}</th>" for h in head) + "</tr>" + "".join(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                for row in body) + "</table>")
            table = []
        if line and not line.startswith("!"):
            parts.append(f"<p>{html.escape(line)}</p>")
    return "".join(parts)


def _eps_value(raw: Any) -> float:
    return math.inf if raw == "inf" else float(raw)


def eps_dir(epsilon: float) -> str:
    """``eps-8``, ``eps-inf``: a dp-sweep's folder for one ε."""
    return "eps-inf" if math.isinf(epsilon) else f"eps-{epsilon:g}"


def write_sweep_report(runs: list[dict[str, Any]], out: Path) -> dict[str, Path]:
    """A dp-sweep: one report per ε under ``out/eps-<ε>``, plus the privacy-utility curve.

    The curve plots, per endpoint, the federated metric (mean over partners and
    seeds) against ε; local-only and pooled (both non-private, independent of ε)
    are drawn as horizontal reference lines. ε = inf is drawn at the right edge.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not runs:
        raise ValueError("write_sweep_report needs at least one run")
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    points: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    tuned: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    refs: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in sorted(runs, key=lambda r: _eps_value(r["scenario"]["epsilon"])):
        eps = _eps_value(run["scenario"]["epsilon"])
        sub = write_report(run, out / eps_dir(eps))
        files[f"md-{eps_dir(eps)}"] = sub["md"]
        for row in summarise(run):
            key = (row["endpoint"], row["metric"])
            fed = [v for v in row["arms"]["federated"] if math.isfinite(v)]
            if fed:
                points[key].append((eps, float(np.mean(fed))))
            ft = [v for v in row["arms"]["federated+finetune"] if math.isfinite(v)]
            if ft:
                tuned[key].append((eps, float(np.mean(ft))))
            for arm in ("local-only", "pooled"):
                refs[key][arm] += [v for v in row["arms"][arm] if math.isfinite(v)]
    curves = {k: sorted({e: [m for e2, m in v if e2 == e] for e, _ in v}.items())
              for k, v in points.items()}
    finite = [e for v in curves.values() for e, _ in v if math.isfinite(e)]
    inf_x = (max(finite) * 2 if finite else 1.0)
    fig, axes = plt.subplots(1, max(1, len(curves)), figsize=(4 * max(1, len(curves)), 3.2),
                             squeeze=False)
    table = ["| endpoint | metric | ε | federated (mean over partners) | federated + fine-tune "
             "| local-only | pooled |", "|---|---|---|---|---|---|---|"]
    for ax, ((endpoint, metric), series) in zip(axes[0], sorted(curves.items()), strict=False):
        xs = [inf_x if math.isinf(e) else e for e, _ in series]
        ys = [float(np.mean(ms)) for _, ms in series]
        ax.plot(xs, ys, marker="o", label="federated")
        ft_by_eps = {e: float(np.mean([m for e2, m in tuned[(endpoint, metric)] if e2 == e]))
                     for e, _ in series if any(e2 == e for e2, _ in tuned[(endpoint, metric)])}
        if ft_by_eps:
            ax.plot([inf_x if math.isinf(e) else e for e in ft_by_eps], list(ft_by_eps.values()),
                    marker="s", label="federated + fine-tune")
        ref = refs[(endpoint, metric)]
        for arm, style in (("local-only", ":"), ("pooled", "--")):
            if ref[arm]:
                ax.axhline(float(np.mean(ref[arm])), linestyle=style, color="grey", label=arm)
        ax.set_xscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels(["∞" if math.isinf(e) else f"{e:g}" for e, _ in series])
        ax.set_xlabel("ε per partner")
        ax.set_title(f"{endpoint} ({metric.upper()})")
        ax.legend(fontsize=7)
        for (e, _), y in zip(series, ys, strict=True):
            shown = "inf" if math.isinf(e) else f"{e:g}"
            ft_text = f"{ft_by_eps[e]:.3f}" if e in ft_by_eps else "n/a"
            table.append(f"| {endpoint} | {metric.upper()} | {shown} | {y:.3f} | {ft_text} "
                         f"| {_fmt(ref['local-only'])} | {_fmt(ref['pooled'])} |")
    fig.tight_layout()
    plot = out / "privacy_utility.png"
    fig.savefig(plot, dpi=110)
    plt.close(fig)
    md = "\n".join(["# fedadmet dp-sweep: privacy-utility", "",
                    "Federated (and federated + fine-tuned) metric against ε per partner "
                    "(δ fixed), mean over partners and seeds; local-only and pooled "
                    "are non-private references. ε = inf means non-private federated training.",
                    "", *table, "", f"![privacy_utility]({plot.name})", ""])
    (out / "sweep.md").write_text(md, encoding="utf-8")
    return {**files, "md": out / "sweep.md", "privacy_utility": plot}
