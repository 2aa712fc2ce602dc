"""The SuperNodes of a run seen as flb.types.Client objects, so server.coordinator drives them unchanged.

Each round the fleet sends one train message per sampled client to the node serving it, all at once, and
waits until every reply is in or `round_timeout_s` passes: a node that died mid-round (no reply, or the
SuperLink reporting it unavailable) costs the round its update, not the run, and a malformed reply is a
rejected update with its reason. Before each round it asks nodes it does not know yet which client they
serve, so a node that joins late (or restarts) takes part from the next round: a run starts once every client's
node has joined, or, after wait-for-nodes-s, with those that have if they are at least `min_joined`; a client whose
node joins later is registered before the first round it can be sampled in (server.coordinator, `roster`). The
config sent to nodes has the credentials in its URLs redacted: nodes never reach the server's chain node.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from flwr.app import Message
from flwr.common.constant import ErrorCode

from flb.errors import ClientLate, ClientUnavailable, RunFailed, UpdateRejected
from flb.types import AdapterState, ClientUpdate, ProxyClient, RoundDeadline, SignedUpload
from flb_flower import wire

log = logging.getLogger(__name__)
# Errors the SuperLink itself returns when a node is gone or its message expired: the node is unavailable.
UNAVAILABLE = (ErrorCode.NODE_UNAVAILABLE, ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE)


def _answered(reply: Message | None) -> bool:
    """A reply that carries an update (it may still be rejected): what a round's deadline counts."""
    return reply is not None and not reply.has_error() and reply.has_content()


class Fleet:
    def __init__(
        self,
        grid,
        config: dict,
        *,
        wait_for_nodes_s: float,
        round_timeout_s: float,
        query_timeout_s: float,
        poll_s: float = 0.2,
    ):
        from flb.run.redaction import redact_config

        self.grid, self.config = grid, redact_config(config)
        self.wait_for_nodes_s, self.round_timeout_s = wait_for_nodes_s, round_timeout_s
        self.query_timeout_s, self.poll_s = query_timeout_s, poll_s
        self.run_id = ""
        self.base_model_digest = ""  # the server's base model (flb.model.load.base_model_digest), known once joined
        self.domain: dict | None = None  # the ledger's signing domain, sent with every message once bound
        self.nodes: dict[int, int] = {}  # client id -> id of the node serving it
        self.info: dict[int, tuple[int, str | None]] = {}  # client id -> (num_examples, address)
        self.silent: set[int] = set()  # listed nodes that missed a deadline: not asked again while listed
        self.uploads: dict[int, SignedUpload | RunFailed] = {}  # signed data uploads fetched, not yet recorded
        self.asked: set[int] = set()  # clients whose data upload has been asked for
        self.clients: list[ProxyClient] = []
        # strategy fedbuff's jobs (flb.types.Jobs): client id -> (its train message's id, the round it was sent for,
        # when it was sent); replies pulled for jobs not awaited yet
        self.submitted: dict[int, tuple[str, int, float]] = {}
        self.pulled: dict[str, Message] = {}

    def join(
        self, run_id: str, num_clients: int, base_model_digest: str, *, min_joined: int | None = None
    ) -> list[ProxyClient]:
        """The run's clients, each keeping its secrets under its state-dir/<run_id> and training only the base model
        with this digest: block until a node serves every client id, or until wait-for-nodes-s has passed with at
        least `min_joined` (None: all) served; `roster` says which have joined (a client whose node has not yet
        declares nothing)."""
        self.run_id, self.base_model_digest = run_id, base_model_digest
        deadline = time.monotonic() + self.wait_for_nodes_s
        self.discover()
        while missing := [i for i in range(num_clients) if i not in self.nodes]:
            if time.monotonic() > deadline:
                if num_clients - len(missing) < (num_clients if min_joined is None else min_joined):
                    raise self._nodes_missing(missing, num_clients)
                log.warning(
                    "no SuperNode serves %d of the %d clients yet (partition-id %s%s): starting with the %d that "
                    "joined; each of the others takes part once its node joins",
                    len(missing),
                    num_clients,
                    missing[:5],
                    "..." if len(missing) > 5 else "",
                    num_clients - len(missing),
                )
                break
            time.sleep(1.0)  # each query starts a ClientApp process on the node: do not spin
            self.discover()
        self.clients = [ProxyClient(i, *self.info.get(i, (0, None)), host=self) for i in range(num_clients)]
        return self.clients

    def roster(self) -> list[ProxyClient]:
        """The clients whose node has joined so far (asking the nodes not known yet), in client id order."""
        self.discover()
        for client in self.clients:
            client.num_examples, client.address = self.info.get(client.client_id, (0, None))
        return [client for client in self.clients if client.client_id in self.info]

    def _nodes_missing(self, missing: list[int], num_clients: int) -> RunFailed:
        """Why round 0 cannot start, with the likely causes: a node that never reached the SuperLink says why only
        in its own log."""
        return RunFailed(
            f"no SuperNode serves partition-id {missing} after wait-for-nodes-s={self.wait_for_nodes_s:g} "
            f"({len(self.grid.get_node_ids())} connected); start one per partition (--node-config "
            f'"partition-id=N num-partitions={num_clients}"). If one was started, see its log: '
            'unregistered under --enable-supernode-auth ("Failed to activate SuperNode": run `flwr '
            "supernode register`), a --root-certificates that does not verify the SuperLink's "
            "certificate, or an error answering this ServerApp (logged above)"
        )

    def discover(self) -> None:
        """Ask every connected node that serves no client yet which client it serves. A node that missed a
        deadline is not asked again until the SuperLink has dropped it (a restarted node comes back)."""
        listed = set(self.grid.get_node_ids())
        self.silent &= listed
        new = sorted(listed - set(self.nodes.values()) - self.silent)
        messages = [self._query(node, wire.DESCRIBE, "discover") for node in new]
        for node, reply in zip(new, self.exchange(messages, self.query_timeout_s)):
            if reply is None:
                self.silent.add(node)
            if reply is None or reply.has_error():
                log.warning(
                    "SuperNode %d did not say which client it serves: %s",
                    node,
                    reply.error.reason if reply else f"no reply within query-timeout-s={self.query_timeout_s:g}",
                )
                continue
            try:
                client_id, num_examples, address = wire.read_info(reply.content)
            except (KeyError, TypeError, ValueError) as exc:  # ValueError: a reply without content too
                log.warning("SuperNode %d sent a malformed description (%s); ignored", node, exc)
                continue
            self.nodes[client_id], self.info[client_id] = node, (num_examples, address)
            log.info("SuperNode %d serves client %d (%d examples)", node, client_id, num_examples)

    def bind_ledger(self, domain) -> None:
        self.domain = domain.to_dict()

    def data_upload(self, client_id: int) -> SignedUpload:
        """Client `client_id`'s data upload, signed on its node for the bound ledger. A request asks every joined
        client's node not asked yet at once: each answer starts a ClientApp process, so they run side by side, not in
        turn."""
        if client_id not in self.uploads:
            pending = [i for i in self.nodes if i == client_id or i not in self.asked]
            self.asked.update(pending)
            messages = [self._query(self.nodes[i], wire.UPLOAD, "upload") for i in pending]
            for i, reply in zip(pending, self.exchange(messages, self.query_timeout_s)):
                self.uploads[i] = self._upload(i, reply)
        upload = self.uploads.pop(client_id, None) or RunFailed(f"client {client_id}: no SuperNode serves it")
        if isinstance(upload, RunFailed):
            raise upload
        return upload

    def _upload(self, client_id: int, reply) -> SignedUpload | RunFailed:
        if reply is None or reply.has_error():
            return RunFailed(
                f"client {client_id}: its SuperNode did not sign its data upload "
                f"({reply.error.reason if reply else 'no reply within query-timeout-s'})"
            )
        try:
            return wire.read_upload(reply.content)
        except (KeyError, TypeError, ValueError) as exc:
            return RunFailed(
                f"client {client_id}: its SuperNode sent a malformed data upload ({type(exc).__name__}: {exc})"
            )

    def _query(self, node: int, action: str, group: str) -> Message:
        return Message(
            wire.query_content(self.config, self.run_id, action, self.domain, self.base_model_digest),
            dst_node_id=node,
            message_type=wire.QUERY,
            group_id=group,
        )

    def fit_all(
        self,
        clients: list[ProxyClient],
        global_adapter: AdapterState,
        round: int,
        extras: AdapterState,
        deadline: RoundDeadline | None = None,
    ):
        """One train message per client whose node is known (the global adapter and the strategy's extras), sent
        together, waited for until the replies are in, round-timeout-s passes or the `deadline` closes the round; a
        ClientUpdate or the Exception saying why there is none, per client, in order (ClientLate for a node that
        had not answered when the deadline closed the round: it is slow, not gone)."""
        self.discover()
        served = [c for c in clients if c.client_id in self.nodes]
        messages = [self._train_message(c, global_adapter, round, extras) for c in served]
        closed = None if deadline is None else (lambda replies: deadline.closed_with(sum(map(_answered, replies))))
        answers = self.exchange(messages, self.round_timeout_s, closed)
        replies = dict(zip((c.client_id for c in served), answers))
        late = closed is not None and closed(answers)  # a node with no reply by then is slow, not gone
        log.info(
            "round %d: %d bytes to SuperNodes, %d bytes back",
            round,
            sum(wire.payload_bytes(m.content) for m in messages),
            sum(wire.payload_bytes(r.content) for r in replies.values() if r is not None and r.has_content()),
        )
        return [self._result(c, replies, round, late) for c in clients]

    def _train_message(self, client: ProxyClient, global_adapter: AdapterState, round: int, extras: AdapterState):
        return Message(
            wire.train_content(
                self.config, self.run_id, global_adapter, round, self.domain, self.base_model_digest, extras
            ),
            message_type=wire.TRAIN,
            dst_node_id=self.nodes[client.client_id],
            group_id=f"round-{round}",
        )

    def submit(self, client: ProxyClient, global_adapter: AdapterState, round: int) -> None:
        """Send `client`'s node a train message now (fedbuff); its reply is awaited by `result`."""
        self.discover()
        if client.client_id not in self.nodes:
            return  # result says so
        (message_id,) = self.grid.push_messages([self._train_message(client, global_adapter, round, {})])
        self.submitted[client.client_id] = (message_id, round, time.monotonic())

    def result(self, client: ProxyClient) -> ClientUpdate | Exception:
        """The reply to `client`'s submitted train message, waited for until round-timeout-s after it was sent (the
        other nodes' replies pulled meanwhile are kept for their turn)."""
        if client.client_id not in self.submitted:
            return self._result(client, {}, 0, late=False)
        message_id, round, sent = self.submitted.pop(client.client_id)
        while message_id not in self.pulled and time.monotonic() < sent + self.round_timeout_s:
            time.sleep(self.poll_s)
            waiting = [message_id, *(m for m, _, _ in self.submitted.values() if m not in self.pulled)]
            for reply in self.grid.pull_messages(waiting):
                self.pulled[reply.metadata.reply_to_message_id] = reply
        return self._result(client, {client.client_id: self.pulled.pop(message_id, None)}, round, late=False)

    def _result(self, client: ProxyClient, replies: dict, round: int, late: bool) -> ClientUpdate | Exception:
        """The reply to client's train message as a ClientUpdate, or why there is none: ClientUnavailable (no node,
        no reply, node gone), ClientLate (no reply when the round's deadline closed it: `late`), UpdateRejected (a
        malformed reply), or the node's own error."""
        if client.client_id not in replies:
            return ClientUnavailable(
                f"no SuperNode serves client {client.client_id}; start one with --node-config "
                f'"partition-id={client.client_id} num-partitions={len(self.clients)}"'
            )
        reply = replies[client.client_id]
        if reply is None and late:
            return ClientLate.still_training(client.client_id)
        if reply is None or (reply.has_error() and reply.error.code in UNAVAILABLE):
            node = self.nodes.pop(client.client_id)
            self.silent.add(node)
            why = (
                (
                    f"sent no reply in round {round} within round-timeout-s={self.round_timeout_s:g}; raise it if the "
                    "node is only slow"
                )
                if reply is None
                else f"is unavailable in round {round}: {reply.error.reason}"
            )
            return ClientUnavailable(f"SuperNode {node} {why}")
        if reply.has_error():
            return RuntimeError(f"SuperNode {self.nodes[client.client_id]}: {reply.error.reason}")
        if not reply.has_content():
            return UpdateRejected(f"client {client.client_id}: the reply holds no update")
        try:
            update = wire.read_update(reply.content, client.client_id)
        except UpdateRejected as exc:
            return exc
        client.spent = update.privacy
        return update

    def exchange(self, messages: list, timeout_s: float, closed: Callable[[list], bool] | None = None) -> list:
        """Push the messages, then pull until each has its reply, `timeout_s` passes or `closed(replies so far)`:
        replies in order, None where none came."""
        ids = list(self.grid.push_messages(messages)) if messages else []
        replies, deadline = {}, time.monotonic() + timeout_s
        while len(replies) < len(ids) and time.monotonic() < deadline:
            if closed is not None and closed(list(replies.values())):
                break
            time.sleep(self.poll_s)
            for reply in self.grid.pull_messages([i for i in ids if i not in replies]):
                replies[reply.metadata.reply_to_message_id] = reply
        return [replies.get(i) for i in ids]
