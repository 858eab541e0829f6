"""The coordinator starts, and sizes the shared model, on a host where RDKit cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import rdkit

from chem.featurizers import featurize, get_spec

ROOT = Path(__file__).resolve().parents[2]

FEDERATION = """\
[federation]
id = "fed"
state-dir = "state"
members = "members.json"
signing-key = "receipt_key.pem"

[model]
featurizer = "ecfp4-count-2048+rdkit2d/v1"

[[model.endpoints]]
name = "solubility"
task = "regression"
"""

# Any import of rdkit fails in the child, as on a coordinator host without it.
_CHILD = """
import importlib.abc, json, sys

class NoRDKit(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "rdkit" or name.startswith("rdkit."):
            raise ImportError("RDKit is not installed on this coordinator")
        return None

sys.meta_path.insert(0, NoRDKit())
import coordinator.server_app as server_app
import coordinator.tracking  # noqa: F401  (the tracker opens at start-up too)
from chem.featurization_spec import get_spec

cfg = server_app.config_from_run_config({"config": sys.argv[1]})
mspec = server_app.model_spec_for(cfg)
print(json.dumps({"input_dim": mspec.input_dim,
                  "spec": get_spec(cfg.model.featurizer).to_dict(),
                  "rdkit_loaded": sorted(m for m in sys.modules if m.split(".")[0] == "rdkit")}))
"""


def test_coordinator_start_up_sizes_the_model_without_importing_rdkit(tmp_path: Path) -> None:
    path = tmp_path / "federation.toml"
    path.write_text(FEDERATION)
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path)], cwd=ROOT, timeout=300,
                         capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["rdkit_loaded"] == []
    # What the coordinator announces is exactly what a site with RDKit computes.
    site_spec = get_spec("ecfp4-count-2048+rdkit2d/v1")
    assert got["spec"] == site_spec.to_dict()
    assert got["spec"]["rdkit_version"] == rdkit.__version__
    assert got["input_dim"] == featurize(["CCO"], site_spec, n_jobs=1).shape[1] == 2048 + 217
