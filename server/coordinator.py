"""The round loop, readable top to bottom: sample, fit, validate, aggregate, evaluate, save, record, checkpoint."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from flb.accounting import run_privacy
from flb.digests import adapter_digest
from flb.errors import UpdateRejected
from flb.rundir import RunDir
from flb.seeding import round_rng
from flb.types import AdapterState, Client, ClientUpdate, Ledger, RoundRecord
from server.contribution import leave_one_out_scores
from server.strategy.base import Strategy
from server.validation import validate_update

log = logging.getLogger(__name__)
_SAMPLING_STREAM = 0x5A
FitAll = Callable[[Sequence[Client], AdapterState, int], list["ClientUpdate | Exception"]]


def fit_in_turn(clients: Sequence[Client], global_adapter: AdapterState, round: int) -> list[ClientUpdate | Exception]:
    """In-process clients share one model, so they train one after another; a failure is returned, not raised."""
    results = []
    for client in clients:
        try:
            results.append(client.fit(global_adapter, round))
        except Exception as exc:  # one failing client must not end the round for the others
            log.exception("round %d: client %d failed", round, client.client_id)
            results.append(exc)
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
    contribution_loss: Callable[[AdapterState], float] | None = None  # set: leave-one-out scores each round
    fit_all: FitAll = fit_in_turn  # the Flower app sends to every sampled SuperNode at once

    def run_rounds(self, global_adapter: AdapterState, first_round: int, last_round: int) -> AdapterState:
        from tqdm.auto import trange

        for round in trange(first_round, last_round + 1, desc="rounds", initial=first_round - 1, total=last_round):
            global_adapter = self.run_round(round, global_adapter)
        return global_adapter

    def record_baseline(self, global_adapter: AdapterState) -> None:
        """Round 0: every client's data upload, then the base model (LoRA B is zero) evaluated and recorded."""
        for client in self.clients:
            self.ledger.record_data_upload(client.client_id, client.data_digest)
        self._complete(0, global_adapter, [], {**self.evaluate(global_adapter), "num_sampled": 0, "round_time_s": 0.0})

    def restore(self, strategy_state: dict, client_states: dict[str, dict]) -> None:
        """Put back the strategy's and every client's checkpointed state (accountants, adaptive clip norm)."""
        self.strategy.load_state_dict(strategy_state)
        for client in self.clients:
            client.load_state_dict(client_states.get(str(client.client_id), {}))

    def run_round(self, round: int, global_adapter: AdapterState) -> AdapterState:
        started = time.perf_counter()
        sampled = self.sample(round)
        updates, rejected = self.collect(sampled, global_adapter, round)
        if len(updates) < self.min_clients:
            log.warning("round %d skipped: %d valid updates, server.min_clients is %d", round, len(updates),
                        self.min_clients)
            self._complete(round, global_adapter, [], {"skipped": True, "rejected": rejected, "num_sampled": len(sampled),
                                                       "round_time_s": time.perf_counter() - started})
            return global_adapter
        previous_adapter, previous_state = global_adapter, self.strategy.state_dict()
        global_adapter = self.strategy.aggregate(global_adapter, updates, round, len(sampled))
        aggregate_done = time.perf_counter()
        metrics = self.evaluate(global_adapter)
        if self.contribution_loss is not None:
            metrics["scores"] = leave_one_out_scores(self.contribution_loss, self.strategy, previous_state,
                                                     previous_adapter, updates, metrics["eval_loss"], round)
        metrics.update(rejected=rejected, num_sampled=len(sampled), round_time_s=aggregate_done - started,
                       eval_time_s=time.perf_counter() - aggregate_done)
        self._complete(round, global_adapter, updates, metrics)
        return global_adapter

    def sample(self, round: int) -> list[Client]:
        """clients_per_round clients without replacement, drawn from (seed, round) alone."""
        chosen = round_rng(self.seed, round, _SAMPLING_STREAM).choice(len(self.clients), self.clients_per_round,
                                                                       replace=False)
        return [self.clients[i] for i in sorted(chosen)]

    def collect(self, sampled: list[Client], global_adapter: AdapterState, round: int):
        """Fit every sampled client; keep the updates that validate, log why the others do not."""
        updates, rejected = [], []
        for client, result in zip(sampled, self.fit_all(sampled, global_adapter, round)):
            reason = _rejection(result, global_adapter)
            if reason is None:
                updates.append(result)
                continue
            log.warning("round %d: client %d update rejected: %s", round, client.client_id, reason)
            rejected.append({"client_id": client.client_id, "reason": reason})
        return updates, rejected

    def _complete(self, round: int, global_adapter: AdapterState, updates: list[ClientUpdate], metrics: dict) -> None:
        """Files and metrics, then the ledger record, then the checkpoint: a round counts as done for
        --resume only once everything before it is durable."""
        digest = adapter_digest(global_adapter)
        metrics.update(self.privacy_metrics())
        self.run.save_round(round, global_adapter, self.peft_config, {u.client_id: u.tensors for u in updates})
        self.run.append_metrics(*(_client_metrics(u) for u in updates),
                                {"kind": "round", "round": round, "global_digest": digest, "num_clients": len(updates),
                                 **metrics})
        self.ledger.record_round(RoundRecord(
            round=round, global_digest=digest, client_ids=[u.client_id for u in updates],
            update_digests=[u.digest for u in updates], num_examples=[u.num_examples for u in updates],
            update_num_bytes=[u.num_bytes for u in updates], metrics=metrics,
        ))
        self.run.write_checkpoint(round, global_adapter, self.strategy.state_dict(),
                                  {str(c.client_id): c.state_dict() for c in self.clients})

    def privacy_metrics(self) -> dict:
        """Epsilon spent so far by the server's DP and by every client's local DP, and the run's (the largest)."""
        clients = {str(c.client_id): c.privacy_spent() for c in self.clients}
        privacy = run_privacy(self.strategy.privacy_spent(), {k: v for k, v in clients.items() if v})
        return {"privacy": privacy} if privacy else {}


def _rejection(result: ClientUpdate | Exception, global_adapter: AdapterState) -> str | None:
    """Why a fit result cannot be aggregated (the client failed, or its update does not validate); None if it can."""
    if isinstance(result, Exception):
        return f"{type(result).__name__}: {result}"
    try:
        validate_update(result, global_adapter)
    except UpdateRejected as exc:
        return str(exc)
    return None


def _client_metrics(update: ClientUpdate) -> dict:
    return {"kind": "client", "round": update.round, "client_id": update.client_id, "train_loss": update.train_loss,
            "num_examples": update.num_examples, "wall_time_s": update.wall_time_s, "num_bytes": update.num_bytes,
            "digest": update.digest, **({"privacy": update.privacy} if update.privacy else {})}
