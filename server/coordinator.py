"""The round loop, readable top to bottom: sample, fit, validate, aggregate, evaluate, save, record, checkpoint."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from flb.adapters.compression import as_received, encode
from flb.adapters.lora_aggregation import aggregation_error
from flb.audit.attestation import SALT_BYTES, commitment
from flb.audit.digests import adapter_digest, json_digest, metrics_digest, update_content
from flb.errors import ClientLate, ClientUnavailable, RunFailed, UpdateRejected, first_line
from flb.personalization import completed, expected_extras, shared_part
from flb.privacy.accounting import run_privacy
from flb.privacy.disclosure import Disclosure
from flb.privacy.private_state import PrivateState
from flb.privacy.secret_random import SecretRandom
from flb.run.comm import CommTracker
from flb.run.directory import RunDir
from flb.run.stop import durable
from flb.run.summary import round_line
from flb.seeding import round_rng
from flb.types import AdapterState, Client, ClientUpdate, FitAll, Ledger, RoundDeadline, RoundRecord
from server.buffered import BufferedRounds, Job
from server.contribution import leave_one_out_scores
from server.strategy.base import Strategy
from server.validation import Expected, outliers, validate_update

log = logging.getLogger(__name__)
_SAMPLING_STREAM, _START_STREAM = 0x5A, 0x5B


EXPECTED_FAILURES = (ClientUnavailable, UpdateRejected)


def fit_in_turn(
    clients: Sequence[Client],
    global_adapter: AdapterState,
    round: int,
    extras: AdapterState,
    deadline: RoundDeadline | None = None,
) -> list[ClientUpdate | Exception]:
    """In-process clients share one model, so they train one after another; a failure is returned, not raised, and
    the coordinator decides what it costs. Once the `deadline` has closed the round, an update that comes after is
    late, and the clients whose turn had not come are late without training."""
    results: list[ClientUpdate | Exception] = []
    for client in clients:
        if deadline and (late := deadline.late_before_turn(results, client.client_id)):
            results.append(late)
            continue
        try:
            result = client.fit(global_adapter, round, extras)
        except Exception as exc:
            log.exception("round %d: client %d failed", round, client.client_id)
            result = exc
        results.append(deadline.on_arrival(results, result, client.client_id) if deadline else result)
    return results


@dataclass
class RoundCoordinator:
    clients: list[Client]
    strategy: Strategy
    evaluate: Callable[[AdapterState], dict]
    ledger: Ledger
    run: RunDir
    peft_config: object
    clients_per_round: int
    min_clients: int
    seed: int
    disclosure: Disclosure
    random: SecretRandom = field(default_factory=SecretRandom)  # the server's secret generator (salts; sampling)
    secret_sampling: bool = False  # under DP who takes part is drawn from `random`, not from the seed
    max_update_norm: float | None = None
    max_client_failures: int = 0
    lora_a_frozen: bool = False  # ffa: an update whose LoRA A is not the global's is rejected
    client_rank: Callable[[int], int] | None = None  # model.lora.client_ranks: a client's LoRA rank, by its id
    update_compression: str = "none"  # comm.compression: how the clients' updates are encoded
    personalization: str = "none"  # strategy.personalization: what each client keeps (flb.personalization)
    broadcast_compression: str = "none"  # comm.broadcast_compression: the global adapter is as its encoding decodes
    round_deadline_s: float | None = None  # server.round_deadline_s: a round aggregates the updates in by then
    min_fit_fraction: float = 0.5  # server.min_fit_fraction: ... once this share of the sampled clients' are
    contribution_loss: Callable[[AdapterState], float] | None = None  # set: leave-one-out scores each round
    fit_all: FitAll = fit_in_turn  # the Flower app sends to every sampled SuperNode at once
    buffered: BufferedRounds | None = None  # strategy fedbuff: its clock, its jobs and how they train
    # the clients that have joined so far (a Flower fleet's nodes may join late); None: all of them, from round 0
    roster: Callable[[], list[Client]] | None = None
    comm: CommTracker = field(default_factory=CommTracker)
    learning_rate: Callable[[int], float] | None = None  # the clients' learning rate in a round, for the metrics
    declared: dict[int, dict] = field(default_factory=dict)  # client id -> its round-0 shard size and address
    on_round: Callable[[dict], None] | None = (
        None  # given each round's metrics.jsonl row once it is done (flb.run.notify)
    )
    update_parts: Callable[[AdapterState], dict[str, AdapterState]] | None = None  # mode split: a digest per part
    failures: int = 0
    num_rounds: int | None = None  # the run's last round, for the round lines
    # each client's privacy report as of the last round it was sampled in (a client that has not trained has spent
    # nothing, so a round asks only its sampled clients, however many are registered)
    client_privacy: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self):
        self.private = PrivateState(self.run.private_dir("server"))

    def run_rounds(self, global_adapter: AdapterState, first_round: int, last_round: int) -> AdapterState:
        from tqdm.auto import trange

        for round in trange(first_round, last_round + 1, desc="rounds", initial=first_round - 1, total=last_round):
            global_adapter = self.run_round(round, global_adapter)
        return global_adapter

    def record_baseline(self, global_adapter: AdapterState) -> AdapterState:
        """Round 0: the clients' addresses and signed data uploads, then the base model (LoRA B is zero) evaluated
        and recorded; the global adapter round 1 starts from (as the clients receive it)."""
        global_adapter = as_received(self.broadcast_compression, global_adapter)
        self.admit_joined()
        started = time.perf_counter()
        metrics = self.evaluate(global_adapter)
        self._complete(
            0,
            None,
            global_adapter,
            [],
            {**metrics, "num_sampled": 0, "round_time_s": 0.0, "eval_time_s": time.perf_counter() - started},
        )
        return global_adapter

    def admit_joined(self) -> None:
        """Declare the clients that have joined since the last call (all of them at round 0 but on a Flower fleet
        whose nodes join late, or never): their shard size and address, their registration and signed data upload
        on the ledger, in client id order; only declared clients are sampled. A client whose node has not joined
        holds back no other (the ledger lists each address with its id: docs/audit-spec.md, section 1)."""
        joined = self.clients if self.roster is None else self.roster()
        new = sorted((c for c in joined if c.client_id not in self.declared), key=lambda c: c.client_id)
        if not new:
            return
        if self.declared:
            log.info("clients %s joined: registering them", [c.client_id for c in new][:10])
        self.declared.update({c.client_id: {"num_examples": c.num_examples, "address": c.address} for c in new})
        if self.ledger.signing_domain is not None:
            self.ledger.register_clients({c.client_id: c.address for c in new})
            self.ledger.record_data_uploads({c.client_id: c.data_upload() for c in new})

    def admitted(self) -> list[Client]:
        """The clients that may be sampled: those declared, in client id order."""
        return [c for c in self.clients if c.client_id in self.declared]

    def restore(self, checkpoint: dict) -> None:
        """Put back the strategy's state, the clients' round-0 declarations and the server's secret generator."""
        self.strategy.load_state_dict(checkpoint["strategy"])
        self.declared = {int(k): v for k, v in checkpoint["declared"].items()}
        last_round = [m for m in self.run.metrics() if m["kind"] == "round"][-1]
        self.comm.restore(last_round)
        self.client_privacy = dict(last_round.get("privacy", {}).get("clients", {}))
        secret = self.private.load_before(checkpoint["round"] + 1)
        if secret is not None:
            self.random.load_state_dict(secret["random"])
        if self.buffered is not None:
            self.buffered.restart(checkpoint["schedule"], self.clients, self.run.round_adapter)

    def run_round(self, round: int, global_adapter: AdapterState) -> AdapterState:
        started = time.perf_counter()
        if self.roster is not None:
            self.admit_joined()
        if self.buffered is None:
            sampled = self.sample(round)
            updates, rejected, cost = self.collect(sampled, global_adapter, round)
        else:
            sampled, updates, rejected, cost = self.collect_buffered(global_adapter, round)
        if self.learning_rate is not None:
            cost["learning_rate"] = self.learning_rate(round)
        if len(updates) < self.min_clients:
            log.warning(
                "round %d skipped: %d valid updates, server.min_clients is %d", round, len(updates), self.min_clients
            )
            self._complete(
                round,
                global_adapter,
                global_adapter,
                [],
                {
                    "skipped": True,
                    "rejected": rejected,
                    "num_sampled": len(sampled),
                    "round_time_s": time.perf_counter() - started,
                    **cost,
                },
                sampled,
            )
            return global_adapter
        previous_adapter, previous_state = global_adapter, self.strategy.state_dict()
        updates = self._weighed(updates)
        # the order the chain lists the clients (by address): every strategy aggregates in it, so an auditor
        # reproduces the arithmetic from the record (docs/audit-spec.md, section 5)
        in_chain_order = sorted(updates, key=self._chain_position)
        aggregate = self.strategy.aggregate(global_adapter, in_chain_order, round, len(sampled))
        global_adapter = as_received(self.broadcast_compression, aggregate)
        aggregate_done = time.perf_counter()
        metrics = self.evaluate(global_adapter)
        metrics["lora_aggregation_error"] = aggregation_error(
            list(zip([u.tensors for u in in_chain_order], self.strategy.mean_weights(in_chain_order))), aggregate
        )
        if self.contribution_loss is not None:
            scores, unscored = leave_one_out_scores(
                self.contribution_loss,
                self.strategy,
                previous_state,
                previous_adapter,
                in_chain_order,
                metrics["eval_loss"],
                round,
            )
            by_client = dict(zip((u.client_id for u in in_chain_order), scores))
            metrics["scores"] = [by_client[u.client_id] for u in updates]  # in client id order, as the record's
            if unscored:
                metrics["unscored"] = {str(client_id): reason for client_id, reason in unscored.items()}
        if self.update_parts is not None:
            metrics["part_digests"] = {
                str(u.client_id): {
                    part: adapter_digest(tensors) for part, tensors in self.update_parts(u.tensors).items()
                }
                for u in updates
            }
        metrics.update(
            rejected=rejected,
            num_sampled=len(sampled),
            round_time_s=aggregate_done - started,
            eval_time_s=time.perf_counter() - aggregate_done,
            **cost,
        )
        self._complete(round, previous_adapter, global_adapter, updates, metrics, sampled)
        return global_adapter

    def sample(self, round: int) -> list[Client]:
        """clients_per_round of the admitted clients without replacement: under DP from the server's secret generator
        (who takes part decides the amplification by sampling), otherwise from (seed, round) alone."""
        admitted = self.admitted()
        if self.secret_sampling:
            chosen = self.random.sample(len(admitted), self.clients_per_round)
        else:
            chosen = round_rng(self.seed, round, _SAMPLING_STREAM).choice(
                len(admitted), self.clients_per_round, replace=False
            )
        return [admitted[i] for i in sorted(chosen)]

    def collect(self, sampled: list[Client], global_adapter: AdapterState, round: int):
        """Fit every sampled client, sending it the strategy's extras too, until the round's deadline if it has one;
        keep the updates that validate, log why the others do not. A failure that is neither a timeout nor a rejection
        counts against server.max_client_failures. Returns the valid updates (in client id order), the rejections, and
        the round's metrics so far: bytes sent and received (flb.run.comm) and, with a deadline, who was late. Under
        strategy.personalization each update also returns a commitment to its client's personal part (checked for its
        form and digest, read by no strategy); under fedsa it holds no LoRA B and stands for the global one's."""
        global_digest = adapter_digest(global_adapter)
        extras = self.strategy.client_extras(global_adapter)
        results = self.fit_all(sampled, global_adapter, round, extras, self._deadline(len(sampled)))
        row = self.comm.count(
            round,
            encode(self.broadcast_compression, global_adapter),
            extras,
            len(sampled),
            [r for r in results if isinstance(r, ClientUpdate)],
        )
        if self.round_deadline_s is not None:
            row["late"] = self._late(round, sampled, results)
        shared = shared_part(global_adapter, self.personalization)  # fedsa: the LoRA B each client keeps is not sent
        valid, rejected = self._validated(
            round,
            [(client, result, shared, global_digest, round) for client, result in zip(sampled, results)],
            expected_extras(extras, self.personalization),
        )
        return [completed(u, global_adapter) for u in valid], rejected, row

    def collect_buffered(self, global_adapter: AdapterState, round: int):
        """fedbuff's round (server/buffered.py): idle clients start from the newest global adapter until
        clients_per_round train, and the round is the next buffer_size arrivals on the clock, each validated against
        the global adapter it started from (one that started over max_staleness rounds ago is late, and dropped).
        Returns the clients that arrived, and what collect returns."""
        buffered = self.buffered
        buffered.begin_round(round, global_adapter)
        arrived: list[tuple[Client, Job, object]] = []
        started = buffered.start_idle(self.admitted(), round - 1, set(), self._draw_starts)
        while len(arrived) < buffered.settings.buffer_size:
            job = buffered.schedule.next_arrival()
            client = self.clients[job.client_id]
            arrived.append((client, job, buffered.arrival(client, job, round)))
            if len(arrived) < buffered.settings.buffer_size:
                waiting = {c.client_id for c, _, _ in arrived}
                started += buffered.start_idle(self.admitted(), round - 1, waiting, self._draw_starts)
        sampled, results = [client for client, _, _ in arrived], [result for _, _, result in arrived]
        row = self.comm.count(
            round,
            encode(self.broadcast_compression, global_adapter),
            {},
            started,
            [r for r in results if isinstance(r, ClientUpdate)],
        )
        row["late"] = self._late(round, sampled, results)
        starts = {job.start_round for _, job, _ in arrived}
        digests = {start: adapter_digest(buffered.versions[start]) for start in starts}  # one hash per adapter
        checks = [
            (client, result, buffered.versions[job.start_round], digests[job.start_round], job.start_round + 1)
            for client, job, result in arrived
        ]
        valid, rejected = self._validated(round, checks, {})
        return sampled, valid, rejected, row

    def _draw_starts(self, number: int, population: int, count: int) -> list[int]:
        """fedbuff: which `count` of `population` idle clients start, as `sample` draws: under DP from the server's
        secret generator, otherwise from (seed, the draw's `number`) alone."""
        if self.secret_sampling:
            return self.random.sample(population, count)
        return sorted(round_rng(self.seed, number, _START_STREAM).choice(population, count, replace=False))

    def _validated(self, round: int, checks: list[tuple], extras: AdapterState):
        """The valid updates among (client, result, the global adapter and digest it was sent, the round it was sent
        for) (in order) and the rejections; ClientLate results are neither. Logs why each rejection."""
        valid, rejected = [], []
        for client, result, base, digest, sent_round in checks:
            if isinstance(result, ClientLate):
                continue
            checked = self._checked(client, result, base, digest, extras, sent_round)
            if isinstance(checked, ClientUpdate):
                valid.append(checked)
            else:
                rejected.append({"client_id": client.client_id, "reason": checked})
        too_large = outliers(valid, self.max_update_norm)
        rejected += [{"client_id": client_id, "reason": reason} for client_id, reason in too_large.items()]
        for entry in rejected:
            log.warning("round %d: client %d update rejected: %s", round, entry["client_id"], entry["reason"])
        return [u for u in valid if u.client_id not in too_large], rejected

    def _late(self, round: int, sampled: list[Client], results: list) -> list[dict]:
        """The clients not in by the round's deadline (or too stale), for its metrics row; logged."""
        late = [
            {"client_id": client.client_id, "reason": first_line(result)}
            for client, result in zip(sampled, results)
            if isinstance(result, ClientLate)
        ]
        for entry in late:
            log.info("round %d: %s", round, entry["reason"])
        return late

    def _deadline(self, num_sampled: int) -> RoundDeadline | None:
        """This round's deadline, from now: server.round_deadline_s, waiting past it for server.min_fit_fraction of
        the sampled clients' updates."""
        if self.round_deadline_s is None:
            return None
        needed = max(1, math.ceil(self.min_fit_fraction * num_sampled))
        return RoundDeadline(time.monotonic() + self.round_deadline_s, needed)

    def _chain_position(self, update: ClientUpdate) -> tuple[int, int]:
        return int(self.declared[update.client_id]["address"] or "0", 16), update.client_id

    def _weighed(self, updates: list[ClientUpdate]) -> list[ClientUpdate]:
        """The updates as the strategy weighs them: by example count where the chain publishes counts, and all alike
        where it does not (under DP a count is private, and a weight the chain does not hold would let nobody
        recompute the round; the client metrics then say 1 example each)."""
        if self.disclosure.publish_num_examples:
            return updates
        return [replace(update, num_examples=1) for update in updates]

    def _checked(
        self, client: Client, result, global_adapter: AdapterState, global_digest: str, extras: AdapterState, round: int
    ) -> ClientUpdate | str:
        """The update to aggregate (server.validation), or why `result` cannot be aggregated; raises RunFailed when a
        client failed in a way that is not expected of a sound run once more than server.max_client_failures times."""
        if isinstance(result, BaseException):
            if not isinstance(result, EXPECTED_FAILURES):
                self.failures += 1
                if self.failures > self.max_client_failures:
                    raise RunFailed(
                        f"round {round}: client {client.client_id} failed with {type(result).__name__}: "
                        f"{first_line(result)} (failure {self.failures}, server.max_client_failures = "
                        f"{self.max_client_failures}); rounds before {round} are saved, see run.log"
                    )
            return f"{type(result).__name__}: {first_line(result)}"
        try:
            return validate_update(
                result, self._expected(client.client_id, round), global_adapter, global_digest, extras
            )
        except UpdateRejected as exc:
            return str(exc)

    def _expected(self, client_id: int, round: int) -> Expected:
        declared = self.declared[client_id]
        domain = self.ledger.signing_domain
        return Expected(
            client_id=client_id,
            round=round,
            max_examples=declared["num_examples"],
            address=declared["address"] if domain is not None else None,
            domain=domain,
            disclosure=self.disclosure,
            lora_a_frozen=self.lora_a_frozen,
            rank=self.client_rank(client_id) if self.client_rank else None,
            compression=self.update_compression,
        )

    def _complete(
        self,
        round: int,
        previous: AdapterState | None,
        global_adapter: AdapterState,
        updates: list[ClientUpdate],
        metrics: dict,
        sampled: Sequence[Client] = (),
    ) -> None:
        """Files and metrics, then the ledger record, then the server's secrets and the checkpoint: a round counts
        as done for --resume only once everything before it is durable (a stop signal waits for it); the round's line
        is logged once its metrics are. Then `on_round` hears of it."""
        digest = adapter_digest(global_adapter)
        metrics.update(self.privacy_metrics(sampled))
        client_rows = [_client_metrics(u, round) for u in updates]
        row = {"kind": "round", "round": round, "global_digest": digest, "num_clients": len(updates), **metrics}
        with durable():
            self.run.save_round(
                round,
                global_adapter,
                self.peft_config,
                {u.client_id: update_content(u.as_sent, u.extras) for u in updates},
            )
            self.run.append_metrics(*client_rows, row)
            log.info("%s", round_line(row, client_rows, self.num_rounds))  # before the ledger's line for the round
            if self.ledger.signing_domain is not None:
                self.ledger.record_round(self._record(round, previous, digest, updates, metrics, metrics_digest(row)))
            self.private.save(round, {"random": self.random.state_dict()})
            self.run.write_checkpoint(
                round,
                global_adapter,
                self.strategy.state_dict(),
                self.declared,
                schedule=None if self.buffered is None else self.buffered.schedule.state_dict(),
            )
        self.ledger.check()
        if self.on_round is not None:
            self.on_round(row)

    def _record(
        self,
        round: int,
        previous: AdapterState | None,
        digest: str,
        updates: list[ClientUpdate],
        metrics: dict,
        row_digest: str,
    ) -> RoundRecord:
        record = RoundRecord(
            round=round,
            previous_global_digest=None if previous is None else adapter_digest(previous),
            global_digest=digest,
            client_ids=[u.client_id for u in updates],
            addresses=[self.declared[u.client_id]["address"] for u in updates],
            update_digests=[u.attestation.recorded_digest for u in updates],
            num_examples=[u.attestation.recorded_num_examples for u in updates],
            signatures=[u.attestation.signature for u in updates],
            update_num_bytes=[u.num_bytes for u in updates],
            metrics=metrics,
            metrics_digest=row_digest,
            start_rounds=None if self.buffered is None else [u.round - 1 for u in updates],
        )
        if not self.disclosure.record_participants:
            record.participants_commitment = self._participants_commitment(record)
        return record

    def _participants_commitment(self, record: RoundRecord) -> str:
        """A salted commitment to who took part and what they signed; the opening stays in the server's
        private state for an auditor."""
        participants = {
            "clients": record.addresses,
            "update_digests": record.update_digests,
            "num_examples": record.num_examples,
            "signatures": record.signatures,
        }
        digest, salt = json_digest(participants), self.random.random_bytes(SALT_BYTES)
        committed = commitment(salt, digest)
        self.private.record_opening(committed, salt, digest, f"round {record.round} participants", value=participants)
        return committed

    def privacy_metrics(self, sampled: Sequence[Client]) -> dict:
        """Epsilon spent so far by the server's DP and by the local DP of every client that has trained, as each
        client reports it (the round's `sampled` clients asked anew), and the run's (the largest)."""
        for client in sampled:
            if report := client.privacy_spent():
                self.client_privacy[str(client.client_id)] = report
        clients = dict(sorted(self.client_privacy.items(), key=lambda item: int(item[0])))
        privacy = run_privacy(self.strategy.privacy_spent(), clients)
        return {"privacy": privacy} if privacy else {}


def _client_metrics(update: ClientUpdate, round: int) -> dict:
    """A client's metrics.jsonl row for `round`; with the round its update started from where that is older than the
    previous one (fedbuff)."""
    return {
        "kind": "client",
        "round": round,
        **({"start_round": update.round - 1} if update.round != round else {}),
        "client_id": update.client_id,
        "train_loss": update.train_loss,
        "num_examples": update.num_examples,
        "wall_time_s": update.wall_time_s,
        "num_bytes": update.num_bytes,
        "digest": update.digest,
        **({"privacy": update.privacy} if update.privacy else {}),
        **({"personal": update.personal} if update.personal else {}),
    }
