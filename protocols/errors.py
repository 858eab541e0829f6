"""The one exception hierarchy for fedadmet.

Every error says what was got, what was expected, and how to fix it, so that a
member company's operator can act on a log line without reading source code
(after sigstore-python's ``Error.diagnostics()`` and Flower's exit-code help).

``protocols`` is imported by every other package, so this module is the root
of the hierarchy and depends on nothing but the standard library.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AdmissionError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DeploymentError",
    "FedAdmetError",
    "IntegrityError",
    "InvalidMoleculeError",
    "MessageValidationError",
    "MissingColumnError",
    "PrivacyBudgetExceeded",
    "ProtocolError",
    "ReceiptVerificationError",
    "ReplyBoundsError",
    "RoundFailedError",
    "SignatureError",
    "SpecMismatchError",
    "TrackingError",
]


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class FedAdmetError(Exception):
    """Root of every error fedadmet raises on purpose.

    Parameters
    ----------
    message:
        One sentence naming what went wrong.
    got, expected:
        The offending value and what would have been accepted. Either may be
        omitted when it carries no information.
    fix:
        What the user should do next.
    """

    def __init__(
        self,
        message: str,
        *,
        got: Any = None,
        expected: Any = None,
        fix: str | None = None,
    ) -> None:
        self.message = message
        self.got = got
        self.expected = expected
        self.fix = fix
        super().__init__(self.diagnostics())

    def diagnostics(self) -> str:
        """Render the error as one human-readable paragraph."""
        parts = [self.message.rstrip(".") + "."]
        if self.got is not None:
            parts.append(f"Got: {_short(self.got)}.")
        if self.expected is not None:
            parts.append(f"Expected: {self.expected}.")
        if self.fix:
            parts.append(f"Fix: {self.fix.rstrip('.')}.")
        return " ".join(parts)


class ConfigError(FedAdmetError):
    """A configuration key is missing, unknown, or has an invalid value."""

    def __init__(
        self,
        key: str,
        message: str,
        *,
        got: Any = None,
        expected: Any = None,
        fix: str | None = None,
        source: str | None = None,
    ) -> None:
        self.key = key
        self.source = source
        where = f" in {source}" if source else ""
        super().__init__(
            f"config key `{key}`{where}: {message}", got=got, expected=expected, fix=fix
        )


class DataError(FedAdmetError):
    """Input data cannot be used (empty file, unreadable format, no valid rows)."""


class MissingColumnError(DataError):
    """A required column is absent; the message lists the columns that were found."""

    def __init__(self, column: str, found: list[str], *, path: str | None = None) -> None:
        self.column = column
        self.found = list(found)
        where = f" in {path}" if path else ""
        super().__init__(
            f"required column `{column}` not found{where}",
            got=self.found,
            expected=f"a column named {column!r}",
            fix="rename the column in the file or set the column name in the config",
        )


class InvalidMoleculeError(DataError):
    """A SMILES string cannot be parsed or standardised; ``reason`` says why."""

    def __init__(self, message: str, *, smiles: str, reason: str) -> None:
        self.smiles = smiles
        self.reason = reason
        super().__init__(message, got=smiles, expected="a valid SMILES string",
                         fix="fix or remove the row; valid rows are processed regardless")


class IntegrityError(FedAdmetError):
    """Stored bytes do not match their recorded digest (vendored data, checkpoint, cache)."""


class SpecMismatchError(FedAdmetError):
    """A featurization or model spec digest differs between parties."""


class ProtocolError(FedAdmetError):
    """A message between parties is malformed or violates the protocol."""


class MessageValidationError(ProtocolError):
    """A wire message failed validation when it was built or parsed."""


class ReplyBoundsError(MessageValidationError):
    """A reply's arrays are not the model's, checked from metadata before decoding.

    ``reason`` is a stable code (``undeclared-tensor``, ``missing-tensor``,
    ``wrong-stype``, ``wrong-dtype``, ``wrong-shape``, ``oversized``, ``metadata-mismatch``)
    fit for a receipt.
    """

    def __init__(self, reason: str, message: str, *, got: Any = None,
                 expected: Any = None) -> None:
        self.reason = reason
        super().__init__(message, got=got, expected=expected)


class SignatureError(ProtocolError):
    """An Ed25519 signature is missing, malformed, or does not verify."""


class ReceiptVerificationError(ProtocolError):
    """A round receipt failed one of the participant's or auditor's checks.

    ``check`` names the failed check in a machine-readable way (for example
    ``"signature"``, ``"chain"``, ``"inclusion"``, ``"model-digest"``,
    ``"round-monotone"``), and ``round`` the receipt's round when known.
    """

    def __init__(
        self,
        check: str,
        message: str,
        *,
        round: int | None = None,
        got: Any = None,
        expected: Any = None,
        fix: str | None = None,
    ) -> None:
        self.check = check
        self.round = round
        where = f" (round {round})" if round is not None else ""
        super().__init__(
            f"receipt check `{check}` failed{where}: {message}", got=got, expected=expected, fix=fix
        )


class AdmissionError(ProtocolError):
    """An update was not admitted to aggregation; ``reason`` is machine-readable."""

    def __init__(self, reason: str, message: str, *, got: Any = None, expected: Any = None) -> None:
        self.reason = reason
        super().__init__(f"update rejected ({reason}): {message}", got=got, expected=expected)


class PrivacyBudgetExceeded(FedAdmetError):
    """Training would take the cumulative privacy spend past the configured budget."""


class RoundFailedError(FedAdmetError):
    """A federated round could not complete (for example too few participants)."""


class CheckpointError(FedAdmetError):
    """A checkpoint cannot be written, read, or resumed from."""


class TrackingError(FedAdmetError):
    """MLflow tracking or model registration failed."""


class DeploymentError(FedAdmetError):
    """A deployment process (SuperLink, SuperNode, proxy) failed to start or stopped."""
