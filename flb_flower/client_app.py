"""The ClientApp: hands each message to this node's worker (flb_flower.node_worker), which keeps the base model
and the client loaded for the run and answers as flb_flower.node says, and returns its reply. Flower 1.41 starts a
fresh ClientApp process for every message, so this module imports no torch, transformers or model."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from flb_flower import node_worker, wire

app = ClientApp()


@app.query()
def query(message: Message, context: Context) -> Message:
    return Message(node_worker.ask(context.node_config, wire.QUERY, message.content), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    return Message(node_worker.ask(context.node_config, wire.TRAIN, message.content), reply_to=message)
