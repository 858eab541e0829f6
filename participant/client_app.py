"""The Flower ClientApp: a thin shell between Flower messages and :class:`Site`.

In deployment the SuperNode's node config names the site's
``participant.toml`` (``config="/path/participant.toml"``); in simulation,
:func:`make_client_app` binds one config per virtual partner. Flower types
stop here: records are decoded by :mod:`protocols.flower_codec` and the round
logic lives in :mod:`participant.site`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from participant.config import ParticipantConfig
from participant.site import Site
from protocols import flower_codec as codec

__all__ = ["app", "make_client_app"]

log = logging.getLogger(__name__)

ConfigResolver = Callable[[Context], ParticipantConfig]


def _from_node_config(context: Context) -> ParticipantConfig:
    return ParticipantConfig.from_node_config(dict(context.node_config))


def make_client_app(resolve: ConfigResolver = _from_node_config) -> ClientApp:
    """A ClientApp whose site config comes from ``resolve(context)``."""
    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        site = Site(resolve(context))
        instruction, arrays = codec.decode_instruction(msg.content)
        result = site.train(instruction, arrays)
        if result.refusal is not None:
            return Message(codec.encode_refusal(result.refusal), reply_to=msg)
        assert result.submission is not None
        return Message(codec.encode_train_reply(result.submission, result.delta,
                                                result.metrics), reply_to=msg)

    @client.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        site = Site(resolve(context))
        instruction, arrays = codec.decode_instruction(msg.content)
        metrics, refusal = site.evaluate(instruction, arrays)
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
