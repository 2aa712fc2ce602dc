"""The data that crosses boundaries: adapter states, client updates, round records, and the two
small interfaces the round coordinator drives (a Client and a Ledger)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    AdapterState = dict[str, torch.Tensor]
else:
    AdapterState = dict


@dataclass(frozen=True)
class Attestation:
    """A client's signed statement about one update, as the ledger records it: the recorded digest (the update's
    digest, or a salted commitment to it where the chain may not hold the digest), the recorded example count (0
    where it is not published) and the client's EIP-712 signature over them (flb.audit.attestation)."""

    recorded_digest: str
    recorded_num_examples: int
    signature: str


@dataclass(frozen=True)
class SignedUpload:
    """A client's data upload: its shard's digest (or a salted commitment to it) and its signature."""

    recorded_digest: str
    signature: str


@dataclass
class ClientUpdate:
    """What one client returns from one round: its full local adapter and how it got there."""

    client_id: int
    round: int
    tensors: AdapterState
    num_examples: int
    train_loss: float | None  # None under local DP: an un-noised statistic of the client's data
    wall_time_s: float
    num_bytes: int
    digest: str
    privacy: dict = field(default_factory=dict)  # the client's own epsilon report
    attestation: Attestation | None = None  # None when the run records nothing on chain
    # what the strategy's client-side part returns beside the adapter (SCAFFOLD's delta c_i): exactly the names,
    # shapes and dtypes of the extras the round sent; empty for most strategies. `digest` covers them too
    # (flb.audit.digests.update_content).
    extras: AdapterState = field(default_factory=dict)
    # strategy.personalization: the losses the client measured on the records it holds out of its own shard, of the
    # global adapter it received and of its personal adapter (client/personal.py); empty without personal adapters
    personal: dict = field(default_factory=dict)
    # set by the server once it has opened a compressed update (comm.compression): the tensors as the client sent
    # them, which `digest`, the signature and the run directory's update file cover; `tensors` is then their decoding
    sent: AdapterState | None = None
    # set by the server once it has validated the update: the global adapter the client started from (the one it
    # was sent for its `round`); what strategy fedbuff measures its change from
    base: AdapterState | None = None

    @property
    def as_sent(self) -> AdapterState:
        """The adapter tensors as the client sent them."""
        return self.tensors if self.sent is None else self.sent


_UPDATE_FIELDS = [
    f.name for f in fields(ClientUpdate) if f.name not in ("tensors", "extras", "attestation", "sent", "base")
]


def update_header(update: ClientUpdate) -> dict:
    """A ClientUpdate's fields other than its tensors as JSON values (what a worker or a split client sends
    beside the tensors' safetensors bytes)."""
    signed = update.attestation
    return {
        **{name: getattr(update, name) for name in _UPDATE_FIELDS},
        "attestation": None
        if signed is None
        else [signed.recorded_digest, signed.recorded_num_examples, signed.signature],
    }


def update_from_header(header: dict, tensors: AdapterState, extras: AdapterState) -> ClientUpdate:
    """The ClientUpdate update_header and its tensors describe (validated later, by server.validation)."""
    attestation = header["attestation"]
    return ClientUpdate(
        **{name: header[name] for name in _UPDATE_FIELDS},
        tensors=tensors,
        extras=extras,
        attestation=None if attestation is None else Attestation(*attestation),
    )


@dataclass(frozen=True)
class RoundDeadline:
    """When a round stops waiting (server.round_deadline_s, server.min_fit_fraction): at `at` (a time.monotonic()
    instant) once `needed` updates are in, or else as soon as they are; a client whose update is not in by then is
    late (flb.errors.ClientLate)."""

    at: float
    needed: int

    def closed(self, answers: Iterable) -> bool:
        """Whether the round has stopped waiting, with `answers` in (the updates among them count)."""
        return self.closed_with(sum(isinstance(a, ClientUpdate) for a in answers))

    def closed_with(self, arrived: int) -> bool:
        """Whether the round has stopped waiting, with `arrived` updates in."""
        import time

        return arrived >= self.needed and time.monotonic() >= self.at

    def seconds_left(self) -> float:
        import time

        return max(0.0, self.at - time.monotonic())

    def late_before_turn(self, answers: list, client_id: int) -> Exception | None:
        """flb.errors.ClientLate for a client whose turn to train comes once the round has closed on `answers`."""
        from flb.errors import ClientLate

        return ClientLate.before_turn(client_id) if self.closed(answers) else None

    def on_arrival(self, answers: list, result, client_id: int):
        """`result`, or flb.errors.ClientLate where it is an update that came once the round had closed on
        `answers` (the ones before it)."""
        from flb.errors import ClientLate

        if isinstance(result, ClientUpdate) and self.closed(answers):
            return ClientLate.after_deadline(client_id)
        return result


@dataclass
class RoundRecord:
    """One completed round, as the ledger records it. Per client (one entry each, in the same order): its id, its
    registered address, the recorded digest and example count it signed, its signature and update size.
    `participants_commitment` is set instead of publishing them when chain.record_participants is false."""

    round: int
    previous_global_digest: str | None  # None for round 0
    global_digest: str
    client_ids: list[int]
    addresses: list[str]
    update_digests: list[str]
    num_examples: list[int]
    signatures: list[str]
    update_num_bytes: list[int]
    metrics: dict
    metrics_digest: str  # of the round's metrics.jsonl row (flb.audit.digests.metrics_digest), anchored with the record
    participants_commitment: str | None = None
    # strategy fedbuff: per client, the round whose global adapter its update started from (each signed that
    # round + 1 and its global digest); None in a synchronous run, where every client started from the previous one
    start_rounds: list[int] | None = None


@runtime_checkable
class Client(Protocol):
    client_id: int
    num_examples: int
    address: str  # the account it signs with

    def bind_ledger(self, domain) -> None:
        """Sign from now on for this contract (a flb.audit.attestation.SigningDomain)."""

    def data_upload(self) -> SignedUpload:
        """Its shard's recorded digest, signed for the bound ledger."""

    def received(self, broadcast: AdapterState) -> AdapterState:
        """The global adapter from what crossed a wire to it (comm.broadcast_compression's encoding of it)."""

    def fit(self, global_adapter: AdapterState, round: int, extras: AdapterState | None = None) -> ClientUpdate:
        """Train from `global_adapter`; `extras` are the strategy's tensors sent with it (SCAFFOLD's server control
        variate; None or empty for most strategies)."""

    def privacy_spent(self) -> dict:
        """Epsilon its local DP has spent so far, as the client reports it; {} without local DP."""


# How a round fits its sampled clients: (clients, global adapter, round, the strategy's extras for the clients, the
# round's deadline or None) -> an update or a failure per client, in order (flb.errors.ClientLate for one not in by
# the deadline). server.coordinator.fit_in_turn in one process; the worker pool, the Flower fleet and the split
# trunk have their own.
FitAll = Callable[[Sequence[Client], AdapterState, int, AdapterState, RoundDeadline | None], list]


class Jobs(Protocol):
    """How strategy fedbuff's clients train: one job per client at a time, started from a global adapter and awaited
    on its own, while others train (server.buffered.FitWhenAwaited in one process; the worker pool)."""

    def submit(self, client: Client, global_adapter: AdapterState, round: int) -> None: ...

    def result(self, client: Client) -> ClientUpdate | Exception:
        """The update of `client`'s started job once it is done, or why there is none."""


@dataclass
class ProxyClient:
    """A Client that trains elsewhere (on a Flower SuperNode, in a worker process): kept here is what it declared
    (example count, signing address) and its last epsilon report; everything else goes to its `host` (the fleet
    or the pool: bind_ledger(domain), data_upload(client_id), fit_all(clients, global_adapter, round, extras)).
    Its secrets stay where it trains."""

    client_id: int
    num_examples: int
    address: str | None
    host: object = field(repr=False)
    spent: dict = field(default_factory=dict)  # the host sets it from each update's report

    def bind_ledger(self, domain) -> None:
        self.host.bind_ledger(domain)

    def data_upload(self) -> SignedUpload:
        return self.host.data_upload(self.client_id)

    def fit(self, global_adapter: AdapterState, round: int, extras: AdapterState | None = None) -> ClientUpdate:
        (result,) = self.host.fit_all([self], global_adapter, round, extras or {})
        if isinstance(result, Exception):
            raise result
        return result

    def privacy_spent(self) -> dict:
        return self.spent


class Ledger(Protocol):
    """Where data uploads and rounds are recorded; `chain/` implements it on an EVM."""

    signing_domain: object  # flb.audit.attestation.SigningDomain, or None when nothing is recorded

    def register_clients(self, addresses: dict[int, str]) -> None: ...

    def record_data_uploads(self, uploads: dict[int, SignedUpload]) -> None: ...

    def record_round(self, record: RoundRecord) -> None: ...

    def check(self) -> None:
        """Raise flb.errors.RunFailed when a record cannot be sent for a permanent cause."""

    def close(self) -> str | None:
        """Finish sending; why the records are not all on chain, or None when they are."""


class NullLedger:
    """The ledger when `chain_record` is false: records nothing."""

    signing_domain = None

    def register_clients(self, addresses: dict[int, str]) -> None:
        pass

    def record_data_uploads(self, uploads: dict[int, SignedUpload]) -> None:
        pass

    def record_round(self, record: RoundRecord) -> None:
        pass

    def check(self) -> None:
        pass

    def close(self) -> None:
        return None
