"""A member's site folder: the ``participant.toml`` template and its keys.

``fedadmet participant init`` (:mod:`fedadmet.cli.participant`) calls
:func:`init_site`; the template is written only after it loads through
:class:`participant.config.ParticipantConfig` as it is.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

from participant.config import ParticipantConfig
from participant.keys import MemberKeys, create_member_keys
from protocols.errors import DeploymentError

__all__ = ["init_site", "participant_template"]


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _toml_str(value: str | Path) -> str:
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def participant_template(*, name: str, coordinator: str, root_certificate: str | Path,
                         local_port: int = 9094) -> str:
    """The ``participant.toml`` that ``init`` writes; paths relative to the site folder."""
    return f"""\
# This site's configuration. Nothing in it, and nothing it points to, leaves your site.
# Relative paths are resolved against this file's folder. Fill in [data] and [endpoints].

[participant]
name = {_toml_str(name)}
state-dir = "state"
# Your privacy budget: a round that would take the spent epsilon past it is refused.
max-epsilon = 8.0
delta = 1e-5
receipt-key = "keys/receipt_key.pem"
# The coordinator's receipt-signing public key, given to you at enrolment.
coordinator-key = "keys/coordinator_receipt.pub.pem"
# MLflow store for fine-tuning (local only); default: sqlite in the state dir.
# tracking-uri = "sqlite:////opt/fl/state/mlflow.db"
# Halt after this many rounds whose spent update the coordinator's receipt marks dropped.
max-dropped-rounds = 2

[coordinator]
address = {_toml_str(coordinator)}
root-certificate = {_toml_str(root_certificate)}
node-key = "keys/node_key"
# The SuperNode's local runtime port; different for each SuperNode on one host.
local-port = {local_port}
# Seconds between the SuperExec's checks for a new task (Flower's default is 1.0);
# each federated message waits for the next check.
task-poll-interval = 0.2
# Code pinning: by default the daemon runs only ClientApp code identical to the
# installed fedadmet. To pin exact bundles instead, add a table (docs/deployment.md):
# [code-pin]
# fab-sha256 = ["<sha256 of the FAB your operator announced>"]

[data]
files = ["data/assays.csv"]
smiles-column = "smiles"
valid-fraction = 0.15
split-seed = 0

# One table per endpoint: [endpoints.<federation endpoint name>]
[endpoints.lipophilicity]
column = "logD"
task = "regression"

[training]
finetune-epochs = 100
finetune-patience = 10
finetune-lr = 0.001
trunk-lr-factor = 0.1
# DP batches and noise from a CSPRNG (Opacus's secure_mode); slower, off by default.
secure-mode = false

# Federated evaluation (docs/threat-model.md): "noised" sends bounded held-out metrics
# with Gaussian noise, charged to your ledger; "local" sends none and only logs them.
[evaluation]
release = "noised"
noise-multiplier = 10.0
"""


def init_site(directory: Path, *, coordinator: str, root_certificate: Path | None,
              local_port: int) -> tuple[Path, MemberKeys]:
    """Create the node key pair, the receipt-signing key and ``participant.toml``."""
    toml = directory / "participant.toml"
    if toml.exists():
        raise DeploymentError("participant.toml already exists; not overwriting it",
                              got=str(toml))
    text = participant_template(
        name=directory.resolve().name, coordinator=coordinator, local_port=local_port,
        root_certificate=root_certificate.resolve() if root_certificate else "ca.crt")
    # the template must load as it is: a typo here would greet every new member
    ParticipantConfig.from_mapping(tomllib.loads(text),
                                   base_dir=directory.resolve())
    keys = create_member_keys(directory / "keys")
    _write_text(toml, text)
    return toml, keys
