"""The Flower ClientApp: a thin shell between Flower messages and :class:`Site`.

In deployment the SuperNode's node config names the site's
``participant.toml`` (``config="/path/participant.toml"``); in simulation,
:func:`make_client_app` binds one config per virtual partner. Flower types
stop here: records are decoded by :mod:`protocols.flower_codec` and the round
logic lives in :mod:`participant.site`.

Nothing but a stable reason code leaves on failure: an exception inside a
round becomes a refusal with its code (:func:`participant.site.reason_for`);
one before the instruction is even readable becomes a Flower ``Error`` whose
reason is the code alone. The traceback goes to this site's log, never into
the reply, where Flower would otherwise copy ``str(exception)`` (paths, column
names) and the coordinator into every member's receipt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from participant.config import ParticipantConfig
from participant.site import Site, reason_for
from protocols import flower_codec as codec
from protocols.errors import ProtocolError
from protocols.messages import RoundInstruction

__all__ = ["app", "make_client_app"]

log = logging.getLogger(__name__)

ConfigResolver = Callable[[Context], ParticipantConfig]


def _from_node_config(context: Context) -> ParticipantConfig:
    return ParticipantConfig.from_node_config(dict(context.node_config))


def _error_reply(msg: Message, exc: BaseException) -> Message:
    """A Flower error reply carrying only a reason code (details logged here)."""
    code = "malformed-instruction" if isinstance(exc, ProtocolError) else reason_for(exc)
    log.error("cannot act on message %s: %s", msg.metadata.message_id, code, exc_info=exc)
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=code), reply_to=msg)


def _open(msg: Message, context: Context, resolve: ConfigResolver
          ) -> tuple[Site, RoundInstruction, dict[str, np.ndarray]]:
    site = Site(resolve(context))
    instruction, arrays = codec.decode_instruction(msg.content)
    return site, instruction, arrays


def make_client_app(resolve: ConfigResolver = _from_node_config) -> ClientApp:
    """A ClientApp whose site config comes from ``resolve(context)``."""
    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        try:
            site, instruction, arrays = _open(msg, context, resolve)
        except Exception as exc:  # nothing but a reason code may leave the site
            return _error_reply(msg, exc)
        try:
            result = site.train(instruction, arrays)
        except Exception as exc:  # nothing but a reason code may leave the site
            return Message(codec.encode_refusal(site.refusal_for(instruction, exc)),
                           reply_to=msg)
        if result.refusal is not None:
            return Message(codec.encode_refusal(result.refusal), reply_to=msg)
        assert result.submission is not None
        return Message(codec.encode_train_reply(result.submission, result.delta,
                                                result.metrics), reply_to=msg)

    @client.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        try:
            site, instruction, arrays = _open(msg, context, resolve)
        except Exception as exc:  # nothing but a reason code may leave the site
            return _error_reply(msg, exc)
        try:
            metrics, refusal = site.evaluate(instruction, arrays)
        except Exception as exc:  # nothing but a reason code may leave the site
            refusal = site.refusal_for(instruction, exc)
        if refusal is not None:
            return Message(codec.encode_refusal(refusal), reply_to=msg)
        return Message(codec.encode_evaluate_reply(metrics), reply_to=msg)

    return client


class PartitionConfigs:
    """Simulation resolver: ``partition-id`` -> that partner's participant.toml."""

    def __init__(self, paths: Mapping[int, Path]) -> None:
        self.paths = {int(k): Path(v) for k, v in paths.items()}

    def __call__(self, context: Context) -> ParticipantConfig:
        return ParticipantConfig.load(self.paths[int(context.node_config["partition-id"])])


app = make_client_app()
