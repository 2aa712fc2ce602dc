"""The SuperNodes of a run seen as flb.types.Client objects, so server.coordinator drives them unchanged.

Each round the fleet sends one train message per sampled client to the node serving it, all at once, and
waits until every reply is in or `round_timeout_s` passes: a node that died mid-round costs the round its
update, not the run. Before each round it asks nodes it does not know yet which client they serve, so a node
that joins late (or restarts) takes part from the next round.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from flwr.app import Message

from flb.errors import FLBError
from flb.types import AdapterState, ClientUpdate
from flb_flower import wire

log = logging.getLogger(__name__)


@dataclass
class RemoteClient:
    """flb.types.Client for the client a SuperNode serves; its privacy state is kept here and sent along."""

    client_id: int
    num_examples: int
    data_digest: str
    fleet: "Fleet" = field(repr=False)
    state: dict = field(default_factory=dict)
    spent: dict = field(default_factory=dict)

    def fit(self, global_adapter: AdapterState, round: int) -> ClientUpdate:
        (result,) = self.fleet.fit_all([self], global_adapter, round)
        if isinstance(result, Exception):
            raise result
        return result

    def privacy_spent(self) -> dict:
        return self.spent

    def state_dict(self) -> dict:
        return self.state

    def load_state_dict(self, state: dict) -> None:
        self.state = state


class Fleet:
    def __init__(self, grid, config: dict, *, round_timeout_s: float, query_timeout_s: float, poll_s: float = 0.2):
        self.grid, self.config = grid, config
        self.round_timeout_s, self.query_timeout_s, self.poll_s = round_timeout_s, query_timeout_s, poll_s
        self.nodes: dict[int, int] = {}  # client id -> id of the node serving it
        self.info: dict[int, tuple[int, str]] = {}  # client id -> (num_examples, data_digest)
        self.silent: set[int] = set()  # listed nodes that missed a deadline: not asked again while listed
        self.clients: list[RemoteClient] = []

    def wait_for_clients(self, num_clients: int, timeout_s: float) -> list[RemoteClient]:
        """Block until a node serves every client id (round 0 records every client's data digest)."""
        deadline = time.monotonic() + timeout_s
        while missing := [i for i in range(num_clients) if i not in self.nodes]:
            if time.monotonic() > deadline:
                raise FLBError(f"no SuperNode serves partition-id {missing} after wait-for-nodes-s={timeout_s:g}; "
                               f"start one per partition (--node-config \"partition-id=N num-partitions={num_clients}\")")
            self.discover()
            time.sleep(1.0)  # each query starts a ClientApp process on the node: do not spin
        self.clients = [RemoteClient(i, *self.info[i], fleet=self) for i in range(num_clients)]
        return self.clients

    def discover(self) -> None:
        """Ask every connected node that serves no client yet which client it serves. A node that missed a
        deadline is not asked again until the SuperLink has dropped it (a restarted node comes back)."""
        listed = set(self.grid.get_node_ids())
        self.silent &= listed
        new = sorted(listed - set(self.nodes.values()) - self.silent)
        messages = [Message(wire.query_content(self.config), dst_node_id=node, message_type=wire.QUERY,
                            group_id="discover") for node in new]
        for node, reply in zip(new, self.exchange(messages, self.query_timeout_s)):
            if reply is None:
                self.silent.add(node)
            if reply is None or reply.has_error():
                log.warning("SuperNode %d did not say which client it serves: %s", node,
                            reply.error.reason if reply else f"no reply within query-timeout-s={self.query_timeout_s:g}")
                continue
            client_id, num_examples, data_digest = wire.read_info(reply.content)
            self.nodes[client_id], self.info[client_id] = node, (num_examples, data_digest)
            log.info("SuperNode %d serves client %d (%d examples)", node, client_id, num_examples)

    def fit_all(self, clients: list[RemoteClient], global_adapter: AdapterState, round: int):
        """One train message per client whose node is known, sent together; a ClientUpdate or the Exception
        saying why there is none, per client, in order."""
        self.discover()
        served = [c for c in clients if c.client_id in self.nodes]
        messages = [Message(wire.train_content(self.config, global_adapter, round, c.state), message_type=wire.TRAIN,
                            dst_node_id=self.nodes[c.client_id], group_id=f"round-{round}") for c in served]
        replies = dict(zip((c.client_id for c in served), self.exchange(messages, self.round_timeout_s)))
        log.info("round %d: %d bytes to SuperNodes, %d bytes back", round,
                 sum(wire.payload_bytes(m.content) for m in messages),
                 sum(wire.payload_bytes(r.content) for r in replies.values() if r is not None and r.has_content()))
        return [self._result(c, replies, round) for c in clients]

    def _result(self, client: RemoteClient, replies: dict, round: int) -> ClientUpdate | Exception:
        if client.client_id not in replies:
            return LookupError(f"no SuperNode serves client {client.client_id}; start one with --node-config "
                               f"\"partition-id={client.client_id} num-partitions={len(self.clients)}\"")
        reply = replies[client.client_id]
        if reply is None:
            node = self.nodes.pop(client.client_id)
            self.silent.add(node)
            return TimeoutError(f"SuperNode {node} sent no reply in round {round} within "
                                f"round-timeout-s={self.round_timeout_s:g}; raise it if the node is only slow")
        if reply.has_error():
            return RuntimeError(f"SuperNode {self.nodes[client.client_id]}: {reply.error.reason}")
        update, client.state = wire.read_update(reply.content)
        client.spent = update.privacy
        return update

    def exchange(self, messages: list, timeout_s: float) -> list:
        """Push the messages, then pull until each has its reply or the deadline passes: replies in order, None
        where none came."""
        ids = list(self.grid.push_messages(messages)) if messages else []
        replies, deadline = {}, time.monotonic() + timeout_s
        while len(replies) < len(ids) and time.monotonic() < deadline:
            time.sleep(self.poll_s)
            for reply in self.grid.pull_messages([i for i in ids if i not in replies]):
                replies[reply.metadata.reply_to_message_id] = reply
        return [replies.get(i) for i in ids]
