"""Top-level research commands: ``fedadmet baseline`` and ``fedadmet simulate``.

Parsing, progress bars and printing; the work is in :mod:`simulations`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from protocols.errors import ConfigError

if TYPE_CHECKING:
    from simulations.scenario import Scenario

__all__ = ["register"]


def baseline(
    dataset: list[str] = typer.Option(
        ["lipophilicity"], "--dataset", "-d",
        help="Vendored dataset(s): lipophilicity, solubility_aqsoldb, bbb, clintox, ..."),
    seeds: str = typer.Option("1-5", help="Seeds for the train/valid split, e.g. 1-5 or 1,3."),
    featurizer: str | None = typer.Option(None, help="Featurizer key (default: the shipped one)."),
    output: Path = typer.Option(Path("runs/baseline"), help="Directory for the JSON results."),
    cache_dir: Path = typer.Option(Path(".fedadmet-cache"), help="Feature cache directory."),
    threads: int = typer.Option(0, help="Torch threads (0: PyTorch's default)."),
    update_docs: bool = typer.Option(False, help="Rewrite the table in docs/benchmarks.md."),
    max_molecules: int | None = typer.Option(None, help="Subsample (for quick checks)."),
) -> None:
    """Centralised TDC-protocol baseline: scaffold test set (seed 42), seeds for train/valid."""
    import torch

    from simulations.baseline import (
        BaselineConfig,
        parse_seeds,
        run_baseline,
        update_docs_table,
        write_result,
    )

    if threads:
        torch.set_num_threads(threads)
    try:
        seed_list = parse_seeds(seeds)
    except ValueError as exc:
        raise ConfigError("seeds", "cannot be parsed", got=seeds, expected="e.g. 1-5 or 1,2,3"
                          ) from exc
    config = BaselineConfig() if featurizer is None else BaselineConfig(featurizer=featurizer)
    console = Console()
    results = []
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[last]}"),
                  TimeElapsedColumn(), console=console) as bar:
        for name in dataset:
            task = bar.add_task(f"{name}", total=len(seed_list), last="")

            def step(k: int, score: float, task: TaskID = task) -> None:
                bar.update(task, advance=1, last=f"seed {seed_list[k]}: {score:.3f}")

            result = run_baseline(name, seeds=seed_list, config=config, cache_dir=cache_dir,
                                  max_molecules=max_molecules, progress=step)
            path = write_result(result, output)
            results.append(result)
            console.print(f"[green]{name}[/green]: {result.metric} {result.summary()} -> {path}")
    table = Table(title="Centralised baseline (TDC protocol, scaffold split)")
    for col in ("dataset", "metric", "mean ± std", "seeds", "n train+valid / test", "seconds"):
        table.add_column(col)
    for r in results:
        table.add_row(r.dataset, r.metric.upper(), r.summary(), seeds, f"{r.n_train_valid} / "
                      f"{r.n_test}", f"{r.seconds:.0f}")
    console.print(table)
    print(json.dumps([asdict(r) for r in results], indent=2, sort_keys=True))
    if update_docs:
        update_docs_table(Path("docs/benchmarks.md"), results)


def simulate(
    scenario: str = typer.Argument(
        "admet-consortium", help="Scenario TOML path or shipped name (simulations/scenarios)."),
    rounds: int | None = typer.Option(None, help="Override the number of rounds."),
    partners: int | None = typer.Option(None, help="Override the number of partners."),
    epsilon: float | None = typer.Option(None, help="Override ε per partner (inf: no DP)."),
    seeds: str | None = typer.Option(None, help="Override seeds, e.g. 0-2."),
    learning_rate: float | None = typer.Option(None, help="Override the local DP-SGD learning "
                                               "rate."),
    hidden_dims: str | None = typer.Option(None, help="Override the trunk, e.g. 512,128."),
    output: Path | None = typer.Option(None, help="Output directory (default runs/<scenario>)."),
    cache_dir: Path = typer.Option(Path(".fedadmet-cache"), help="Feature cache directory."),
    check_data: bool = typer.Option(False, "--check-data", help="Only load and partition the "
                                    "data: print the input-data report and write it to "
                                    "data-report.json, without federating."),
    privacy_audit: bool = typer.Option(False, "--privacy-audit",
                                       help="Add partner 0's `audit privacy` to the report."),
) -> None:
    """Run a scenario: the production apps in Flower's simulation engine, plus the report."""
    from simulations.baseline import parse_seeds
    from simulations.report import eps_dir, write_report, write_sweep_report
    from simulations.runner import run_scenario
    from simulations.scenario import load_scenario

    sc = load_scenario(scenario).with_overrides(
        rounds=rounds, partners=partners, epsilon=epsilon,
        # an explicit --epsilon replaces a dp-sweep's list
        epsilon_sweep=() if epsilon is not None else None,
        seeds=tuple(parse_seeds(seeds)) if seeds else None, learning_rate=learning_rate,
        hidden_dims=_hidden_dims(hidden_dims) if hidden_dims else None)
    out = output or Path("runs") / sc.name
    console = Console()
    if check_data:
        _check_data(sc, out, cache_dir, console)
        return
    runs = sc.sweep()
    eps_text = (", ".join(r.private_label for r in runs) if len(runs) > 1 else
                sc.private_label)
    console.print(f"[bold]{sc.name}[/bold]: {sc.partners} partners, {sc.rounds} rounds, "
                  f"{eps_text}, seeds {list(sc.seeds)} -> {out}")
    results = []
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[last]}"),
                  TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("rounds", total=sc.rounds * len(sc.seeds) * len(runs), last="")
        partners = bar.add_task("partners", total=sc.partners, last="")

        def on_reply(kind: str, round_: int, replied: int, asked: int) -> None:
            bar.update(partners, completed=replied, total=asked,
                       description=f"partners ({kind}, round {round_})",
                       last=f"{replied}/{asked} replied")

        def on_round(summary: object) -> None:
            ev = getattr(summary, "evaluate", {})
            bar.update(task, advance=1, last=f"round {getattr(summary, 'round', '?')} "
                       f"accepted {getattr(summary, 'accepted', '?')} " + " ".join(
                           f"{k}={v:.3f}" for k, v in sorted(ev.items()) if k != "loss"))

        for run in runs:
            target = out / eps_dir(run.epsilon) if len(runs) > 1 else out
            bar.update(task, description=f"rounds ({run.private_label})")
            results.append(run_scenario(run, target, cache=cache_dir, progress=on_round,
                                        on_reply=on_reply))
    if len(runs) > 1:
        files = write_sweep_report(results, out)
        console.print((out / "sweep.md").read_text(encoding="utf-8"))
        console.print(f"[green]dp-sweep[/green]: {out / 'sweep.md'}, "
                      f"{out / 'privacy_utility.png'}; one report per ε under {out}/eps-*")
        return
    files = write_report(results[0], out)
    if privacy_audit:
        from simulations.privacy_arm import privacy_audit_arm

        with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                      console=console) as bar:
            audit = bar.add_task("privacy audit", total=1)
            privacy_audit_arm(sc, results[0], out, progress=lambda stage, done, total: bar.update(
                audit, description=f"privacy audit: {stage}", completed=done, total=total))
    console.print((out / "report.md").read_text(encoding="utf-8"))
    console.print(f"[green]report[/green]: {files['md']} and {files['html']}; receipts verify "
                  f"with `fedadmet audit verify {results[0]['seeds'][0]['receipts_dir']} "
                  f"--coordinator-key {out / f'seed-{sc.seeds[0]}' / 'coordinator' / 'keys'}"
                  "/receipt-signing.pub`")


def _check_data(sc: Scenario, out: Path, cache: Path, console: Console) -> None:
    from simulations.report import data_lines
    from simulations.runner import check_data

    report = check_data(sc, out, cache=cache)
    console.print("\n".join(data_lines(report)), markup=False, highlight=False)
    console.print(f"data report: {out / 'data-report.json'}", markup=False)


def _hidden_dims(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError("--hidden-dims", "must be comma-separated layer widths", got=text,
                          expected="e.g. 256 or 512,128") from None
    if not dims or min(dims) < 1:
        raise ConfigError("--hidden-dims", "widths must be positive", got=text)
    return dims


def register(app: typer.Typer) -> None:
    """Attach the research commands to the root CLI."""
    app.command("baseline")(baseline)
    app.command("simulate")(simulate)
