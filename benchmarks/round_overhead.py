"""Round overhead of a real deployment: round wall time minus the slowest member's training.

Everything is real and on 127.0.0.1, set up as ``tests/integration/consortium.py`` does
for the deployment tests: ``fedadmet coordinator init/start/enroll`` (TLS SuperLink with
node authentication, fleet-only nginx on the public port), and M members, each a stock
``flower-supernode`` + ``flower-superexec`` (``--isolation process``, code pin) reached
through the public port. On that one set-up, for each SuperExec task poll interval
(``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``; Flower's default is 1 s), it runs side by side:

- **ours**: the consortium FAB (``coordinator.server_app`` / ``participant.client_app``),
  submitted with ``fedadmet coordinator run``: DP-SGD train, admission, aggregation,
  signed receipt, checkpoint and an evaluate message per round. Round starts come from
  the federation's ``rounds.jsonl``, the slowest member's DP-SGD seconds from the
  members' own logs (a site never sends its training time);
- **stock**: a trivial Flower app (``tests/integration/trivial_app``: Flower's own
  ``FedAvg.start`` with a train and an evaluate message per round, a 4-float model),
  submitted with ``flwr run`` over loopback. Its ServerApp stamps each round's end.

Overhead = round wall time − slowest member's training time. Round 1 is reported apart
(cold feature cache, first FAB install). Prints JSON, then a table.

    python benchmarks/round_overhead.py [--rounds 4] [--members 3] [--poll 1.0 0.2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from coordinator.superlink import write_flwr_home  # noqa: E402
from participant.pinning import CodePin, bundle_files, code_digest  # noqa: E402
from tests.integration.consortium import (  # noqa: E402
    BIN,
    Consortium,
    consortium,
    env,
    kill_group,
    rounds_logged,
    wait_for,
)

TRIVIAL_APP = REPO / "tests" / "integration" / "trivial_app"
# participant.site: "<federation> round <r>: <n> DP-SGD steps in <s> s"
TRAINED = re.compile(r"(\S+) round (\d+): \d+ DP-SGD steps in ([0-9.]+) s")


def trivial_pin(work: Path) -> tuple[Path, CodePin]:
    """A copy of the trivial app and a pin on its code (members also keep the default)."""
    app = work / "stock-app"  # Flower app directory names: letters, digits, hyphens
    shutil.copytree(TRIVIAL_APP, app, ignore=shutil.ignore_patterns("__pycache__", "*.fab"))
    subprocess.run([str(BIN / "flwr"), "build", "--app", str(app)], cwd=work, check=True,
                   capture_output=True, timeout=120, env={**env(), "FLWR_HOME": str(work)})
    fab = next(work.glob("*.fab"))
    digest = code_digest(bundle_files(fab.read_bytes()))
    fab.unlink()
    return app, CodePin(code_sha256=frozenset({digest}), installed_fedadmet=True)


def run_ours(c: Consortium, name: str, *, rounds: int, members: int) -> dict[str, Any]:
    config = c.write_federation(name, rounds=rounds, min_participants=members,
                                round_timeout=240.0)
    t0 = time.monotonic()
    proc = c.submit(config)
    try:
        rc = proc.wait(timeout=120 + 240 * rounds)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise
    wall = time.monotonic() - t0
    if rc != 0:
        raise SystemExit(f"{name} failed (exit {rc}); see {config.with_suffix('.log')}")
    logged = rounds_logged(c.dir / "state" / name)
    starts = [float(r["started_at"]) for r in logged]  # type: ignore[arg-type]
    # start to next start: tracking and checkpointing count too (the last round: its own)
    rounds_s = [b - a for a, b in itertools.pairwise(starts)] + [float(logged[-1]["seconds"])]  # type: ignore[arg-type]
    return {"submit_to_done_s": wall, "round_s": rounds_s,
            "train_s": slowest_training(c, name, rounds=len(logged))}


def slowest_training(c: Consortium, federation: str, *, rounds: int) -> list[float]:
    """Per round, the slowest member's DP-SGD seconds, from the members' own logs.

    Sites log it and never send it (it tracks the Poisson batch sizes).
    """
    slowest = [0.0] * rounds
    for m in c.members:
        for fed, rnd, seconds in TRAINED.findall(m.log.read_text(errors="replace")):
            if fed == federation and 1 <= int(rnd) <= rounds:
                slowest[int(rnd) - 1] = max(slowest[int(rnd) - 1], float(seconds))
    if not all(slowest):
        raise SystemExit(f"{federation}: a round without any member's training time in the "
                         "logs (participant.site logs it at INFO)")
    return slowest


def run_stock(c: Consortium, app: Path, work: Path, *, rounds: int,
              members: int) -> dict[str, Any]:
    home = work / "flwr-home"
    write_flwr_home(home, port=c.port, ca_cert=c.ca_cert)
    result = work / f"stock-{time.monotonic_ns()}.json"
    cfg = (f"num-server-rounds={rounds} min-nodes={members} round-timeout=240.0 "
           f'fraction-evaluate=1.0 result-file="{result}"')
    t0 = time.monotonic()
    proc = subprocess.Popen([str(BIN / "flwr"), "run", str(app), "--run-config", cfg],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**env(), "FLWR_HOME": str(home)}, start_new_session=True)
    try:
        wait_for(result.exists, timeout_s=120 + 240 * rounds, what="the stock app's run",
                 every_s=0.1)
    finally:
        kill_group(proc)
    wall = time.monotonic() - t0
    out = json.loads(result.read_text())
    train = out["train_metrics"]
    return {"submit_to_done_s": wall, "round_s": out["round_s"],
            "train_s": [float(train[str(r)]["train-seconds"])
                        for r in range(1, len(out["round_s"]) + 1)]}


def summarise(run: dict[str, Any]) -> dict[str, Any]:
    over = [r - t for r, t in zip(run["round_s"], run["train_s"], strict=True)]
    later = over[1:] or over
    return {**run, "overhead_s": over, "round1_overhead_s": over[0],
            "overhead_median_s": statistics.median(later),
            "round_median_s": statistics.median(run["round_s"][1:] or run["round_s"]),
            "train_median_s": statistics.median(run["train_s"][1:] or run["train_s"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--poll", type=float, nargs="+", default=[1.0, 0.2],
                    help="SuperExec task poll intervals to compare (s)")
    ap.add_argument("--keep", type=Path, default=None,
                    help="work in this directory and keep it (logs, states) for inspection")
    args = ap.parse_args()
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        raise SystemExit("nginx is needed for the public port (the README's test command "
                         "installs it)")
    results: dict[str, Any] = {"rounds": args.rounds, "members": args.members, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="fedadmet-round-overhead-") as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        app, pin = trivial_pin(root)
        with consortium(root / "c", members=args.members) as c:
            for i, poll in enumerate(args.poll):
                name = f"ours-{i}"
                c.serve(name, poll_interval=poll, code_pin=pin)
                stock = summarise(run_stock(c, app, root, rounds=args.rounds,
                                            members=args.members))
                ours = summarise(run_ours(c, name, rounds=args.rounds, members=args.members))
                results["runs"][str(poll)] = {"ours": ours, "stock": stock,
                                              "ratio": ours["overhead_median_s"]
                                              / stock["overhead_median_s"]}
    print(json.dumps(results, indent=2))
    print(f"\n{args.members} members, {args.rounds} rounds; medians of rounds 2..N (s)")
    print(f"{'poll s':>7}{'app':>7}{'round':>8}{'train':>8}{'overhead':>10}"
          f"{'round 1 ovh':>13}{'ours/stock':>12}")
    for poll, r in results["runs"].items():
        for app_name in ("stock", "ours"):
            s = r[app_name]
            ratio = f"{r['ratio']:.2f}x" if app_name == "ours" else ""
            print(f"{poll:>7}{app_name:>7}{s['round_median_s']:>8.2f}{s['train_median_s']:>8.2f}"
                  f"{s['overhead_median_s']:>10.2f}{s['round1_overhead_s']:>13.2f}{ratio:>12}")


if __name__ == "__main__":
    main()
