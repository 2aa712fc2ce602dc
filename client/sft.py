"""A client that fine-tunes the shared LoRA model on its own shard with trl's SFTTrainer (or DPOTrainer, with
client.objective dpo: the same client, its trainer optimising preference pairs against the base as reference).

The base model is shared by every client in the process: a client only swaps the adapter in, trains `local_steps`,
and reads the adapter out. The strategy's client-side part (flb.local_objective: FedProx's proximal term, SCAFFOLD's
correction) changes each step's gradients; SCAFFOLD's client variate c_i is kept in the client's private state,
since it is derived from its data, and so is a personal adapter (strategy.personalization: client/personal.py, which
also trains ditto's and evaluates both on the records the client holds out). Randomness that decides privacy (noise,
Poisson batches, salts) comes from the client's own secret generator; the rest (dropout, data order without DP-SGD)
from the public seed, so a run without DP reproduces bit for bit. The clients that share a model in one process
share one trainer too (ClientTrainer: building a trl trainer costs about half a second, so one per client would cost
minutes before round 1 with thousands of clients); their shards are tokenized together before round 0, and each
client trains that trainer on its own rows, with a fresh optimizer every round. With DP-SGD the client trains with
its own opacus loop over its tokenized rows and the trainer's collator instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm
from transformers import TrainerCallback

from client.dpsgd import DPSGD
from client.personal import PERSONAL_PREFIX, PersonalAdapter
from client.privacy import NoPrivacy, UpdatePrivacy
from client.ranks import ClientRank, combined
from client.signing import ClientSigner
from flb.adapters.compression import compress_update, decode, payload_bytes
from flb.audit.digests import adapter_digest, records_digest, update_content
from flb.config import CommSettings, DPOSettings, SFTSettings
from flb.local_objective import GradientCorrection, LocalObjective
from flb.model.dpo import dpo_config, quiet_dpo_trainer, tokenized_pairs
from flb.model.load import adapter_parameters, get_adapter_state, set_adapter_state
from flb.model.sft_settings import quiet_trainer, round_learning_rate, sft_config, to_dataset
from flb.privacy.private_state import PrivateState
from flb.privacy.secret_random import SecretRandom
from flb.seeding import derived_seed
from flb.simulation import wait_out
from flb.types import AdapterState, ClientUpdate, SignedUpload

RESIDUAL_PREFIX = "residual/"  # in the private state's tensors; no adapter tensor name starts with it
_PERSONAL_STREAM = 0x9E  # derived_seed's last part for a ditto client's personal training


@dataclass
class SFTClient:
    """Implements flb.types.Client over a shared peft model. Its secrets (generator, accountant, salts, key) live
    in `private_dir`, which nothing on the server side reads."""

    client_id: int
    records: list[dict]
    model: object
    tokenizer: object
    settings: SFTSettings
    local_steps: int
    num_rounds: int  # sft.lr_schedule anneals over them
    seed: int
    work_dir: Path
    private_dir: Path
    use_cpu: bool = True
    privacy: UpdatePrivacy = field(default_factory=NoPrivacy)
    signer: ClientSigner | None = None  # None: the run records nothing on chain
    objective: LocalObjective = field(default_factory=LocalObjective)
    trainers: ClientTrainer | None = None  # shared with the process's other clients; None: one of its own
    comm: CommSettings = field(default_factory=CommSettings)  # how its update is compressed (comm.compression)
    slowdown: float = 1.0  # simulation.client_speed: it takes this many times its training time
    dpo: DPOSettings | None = None  # client.objective dpo's settings; None: SFT
    rank: ClientRank | None = None  # model.lora.client_ranks: its own LoRA rank; None: the global adapter's
    personal: PersonalAdapter | None = None  # strategy.personalization: its personal part and held-out records

    def __post_init__(self):
        # Built now, not at the first fit: building tokenizes the shard, and for a quantized base trl
        # casts the LoRA weights to bf16, which must happen before the initial global adapter is read.
        if self.trainers is None:
            self.trainers = ClientTrainer(
                self.model,
                self.tokenizer,
                self.settings,
                {self.client_id: self.records},
                local_steps=self.local_steps,
                work_dir=self.work_dir,
                use_cpu=self.use_cpu,
                seed=self.seed,
                dpo=self.dpo,
            )
        self._rows = self.trainers.rows_of(self.client_id, self.records)
        self.private = PrivateState(self.private_dir)
        state = self.private.latest()
        if state is None:
            self.random, self.data_record, self.variate, self.residual = SecretRandom(), None, {}, {}
            if self.signer is not None:
                self.data_record = self.signer.recorded(
                    self.data_digest, self.signer.disclosure.commit_data, self.random, self.private, "data upload"
                )
            self._save(0)
        else:
            self._restore(state)

    @property
    def num_examples(self) -> int:
        return len(self.records)

    @property
    def data_digest(self) -> str:
        return records_digest(self.records)

    @property
    def address(self) -> str | None:
        return self.signer.address if self.signer else None

    def bind_ledger(self, domain) -> None:
        self.signer.domain = domain

    def data_upload(self) -> SignedUpload:
        return self.signer.upload(self.data_record)

    def received(self, broadcast: AdapterState) -> AdapterState:
        """The global adapter from what the server sent over a wire (its comm.broadcast_compression encoding);
        MalformedPayload when it does not decode to this model's adapter."""
        if self.comm.broadcast_compression == "none":
            return broadcast
        return decode(self.comm.broadcast_compression, broadcast, like=get_adapter_state(self.model))

    def fit(self, global_adapter: AdapterState, round: int, extras: AdapterState | None = None) -> ClientUpdate:
        started = time.perf_counter()
        extras = extras or {}
        start = self.begin_round(global_adapter, round)
        if self.personal is not None:
            start = self.personal.start(self.model, start)
        parameters = adapter_parameters(self.model)
        correction = self.objective.correction(parameters, start, extras, self.variate)
        train_loss = self._train(combined(correction, self.rank.decay(parameters) if self.rank else None))
        wait_out(self.slowdown, time.perf_counter() - started)  # before the round's state is saved, as training is
        trained = get_adapter_state(self.model)
        if self.rank is not None:
            trained, start = self.rank.sent(trained, start)
        if self.personal is not None:
            seed = derived_seed(self.seed, round, self.client_id, _PERSONAL_STREAM)
            self.personal.after_training(self.model, self.trainers, self.client_id, trained, global_adapter, seed)
            trained = self.personal.sent(trained)
        return self.end_round(trained, global_adapter, round, extras, correction, train_loss, started, base=start)

    def begin_round(self, global_adapter: AdapterState, round: int) -> AdapterState:
        """The round's starting point: the client's secret state as it was before `round` (a round run again starts
        from the same one), the global adapter in the model (at the client's rank), the round's seed and learning
        rate. Returns the adapter it put in the model."""
        from transformers import set_seed

        self._restore(self.private.load_before(round))
        start = global_adapter if self.rank is None else self.rank.start(global_adapter)
        set_adapter_state(self.model, start)
        set_seed(derived_seed(self.seed, round, self.client_id))
        self.trainers.train_on(self.client_id, self._rows, round_learning_rate(self.settings, round, self.num_rounds))
        return start

    def end_round(
        self,
        trained: AdapterState,
        global_adapter: AdapterState,
        round: int,
        extras: AdapterState,
        correction: GradientCorrection | None,
        train_loss: float,
        started: float,
        base: AdapterState | None = None,
    ) -> ClientUpdate:
        """The update for the adapter this client trained: its strategy's extras, its privacy, its compression (after
        the noise: post-processing), its signature over what it sends; the client's secret state saved for the round.
        `base`: what its change is measured from, when not `global_adapter` (the global adapter at its rank)."""
        base = global_adapter if base is None else base
        returned, self.variate = self.objective.returned(correction, extras, self.variate)
        if self.personal is not None:  # a salted commitment to its personal part, signed with the update
            returned = {**returned, **self.personal.commitment(self.random, self.private, round)}
        local = self.privacy.privatize(trained, base, self.random)
        sent, self.residual = compress_update(
            self.comm.compression, local, base, self.residual, self.comm.topk_fraction
        )
        digest = adapter_digest(update_content(sent, returned))
        attestation = (
            None
            if self.signer is None
            else self.signer.attest(
                round=round,
                global_digest=adapter_digest(global_adapter),
                digest=digest,
                num_examples=self.num_examples,
                random=self.random,
                private=self.private,
            )
        )
        self._save(round)
        return ClientUpdate(
            client_id=self.client_id,
            round=round,
            tensors=sent,
            num_examples=self.num_examples,
            train_loss=None if self.privacy.privacy_spent() else train_loss,
            wall_time_s=time.perf_counter() - started,
            num_bytes=payload_bytes(sent),
            digest=digest,
            privacy=self.privacy.privacy_spent(),
            attestation=attestation,
            extras=returned,
            personal=self.personal.losses if self.personal is not None else {},
        )

    @property
    def trainer(self):
        """trl's trainer, over this client's tokenized rows since its begin_round (batched execution reads its
        batches and settings)."""
        return self.trainers.trainer

    def _train(self, correction: GradientCorrection | None) -> float:
        """`local_steps` steps with trl's trainer, or with DP-SGD over this client's tokenized rows and the trainer's
        collator; `correction` runs before each optimizer step."""
        if isinstance(self.privacy, DPSGD):
            return self.privacy.train(self.model, self.trainer, self.random, correction)
        return self.trainers.train(correction)

    def privacy_spent(self) -> dict:
        return self.privacy.privacy_spent()

    def _save(self, round: int) -> None:
        self.private.save(
            round,
            {
                "random": self.random.state_dict(),
                "privacy": self.privacy.state_dict(),
                "data_record": self.data_record,
                "active_rank": self.rank.active if self.rank else None,
            },
            tensors={
                **self.variate,
                **{RESIDUAL_PREFIX + name: t for name, t in self.residual.items()},
                **(self.personal.private_tensors() if self.personal is not None else {}),
            },
        )

    def _restore(self, state: dict) -> None:
        self.random = SecretRandom.from_state(state["random"])
        self.data_record = state["data_record"]
        if self.rank is not None:
            self.rank.active = state.get("active_rank") or self.rank.rank
        tensors = state["tensors"]
        # SCAFFOLD's c_i, top-k's error feedback (what compression has not sent yet) and the personal part apart;
        # {} where unused
        self.variate = {
            name: t for name, t in tensors.items() if not name.startswith((RESIDUAL_PREFIX, PERSONAL_PREFIX))
        }
        self.residual = {
            name.removeprefix(RESIDUAL_PREFIX): t for name, t in tensors.items() if name.startswith(RESIDUAL_PREFIX)
        }
        if self.personal is not None:
            self.personal.restore(tensors)
        if state["privacy"]:
            self.privacy.restore(state["privacy"], state["round"])


class ClientTrainer:
    """One trl trainer (SFT, or DPO when `dpo` is given) for the clients that share `model`, built over their shards
    (client id -> records): trl tokenizes them all in one pass, and each client trains on its own rows of the result.
    A client added later has its shard tokenized alone, as trl tokenizes a train set."""

    def __init__(
        self,
        model,
        tokenizer,
        settings: SFTSettings,
        shards: dict[int, list[dict]],
        *,
        local_steps: int,
        work_dir: Path,
        use_cpu: bool,
        seed: int,
        dpo: DPOSettings | None = None,
    ):
        output_dir = Path(work_dir) / "clients"
        if dpo is None:
            args = sft_config(settings, max_steps=local_steps, output_dir=output_dir, use_cpu=use_cpu, seed=seed)
            self.trainer = quiet_trainer(model, tokenizer, args, to_dataset(_owned(shards)))
        else:
            args = dpo_config(settings, dpo, max_steps=local_steps, output_dir=output_dir, use_cpu=use_cpu, seed=seed)
            self.trainer = quiet_dpo_trainer(model, tokenizer, args, to_dataset(_owned(shards)))
        self.dpo = dpo
        self.tokenized = self.trainer.train_dataset
        self._rows = _rows_by_owner(self.tokenized[OWNER_COLUMN], shards)
        self._progress, self._corrected = StepProgress("client"), CorrectedSteps()
        self.trainer.add_callback(self._progress)
        self.trainer.add_callback(self._corrected)

    def rows_of(self, client_id: int, records: list[dict]):
        """Client `client_id`'s tokenized rows (a datasets.Dataset): from the shards tokenized together, or
        `records` tokenized now."""
        if client_id in self._rows:
            return self.tokenized.select(self._rows.pop(client_id))
        return self.tokenize(client_id, records)

    def tokenize(self, client_id: int, records: list[dict]):
        """Client `client_id`'s `records` tokenized alone, as trl tokenizes a train set (a datasets.Dataset)."""
        trainer, dataset = self.trainer, to_dataset(_owned({client_id: records}))
        if self.dpo is not None:
            tokenized = tokenized_pairs(trainer, dataset)
        else:
            tokenized = trainer._prepare_dataset(
                dataset, trainer.processing_class, trainer.args, trainer.args.packing, None, "train"
            )
        _rows_by_owner(tokenized[OWNER_COLUMN], {client_id: records})  # the same check: rows left to train on
        return tokenized

    def eval_loss(self, adapter: AdapterState, rows) -> float:
        """The mean loss of `adapter` (put in the model) on tokenized `rows`, as trl computes the training loss."""
        set_adapter_state(self.trainer.model, adapter)
        return float(self.trainer.evaluate(eval_dataset=rows)["eval_loss"])

    def train_on(self, client_id: int, rows, learning_rate: float) -> None:
        """Point the trainer at a client's rows for its round."""
        self.trainer.train_dataset = rows
        self.trainer.args.learning_rate = learning_rate
        self._progress.label = f"client {client_id}"

    def train(self, correction: GradientCorrection | None) -> float:
        """The round's local steps on the rows given to train_on, with a fresh optimizer; the mean loss."""
        trainer = self.trainer
        trainer.optimizer, trainer.lr_scheduler = None, None
        self._corrected.correction = correction
        try:
            result = trainer.train()
        finally:
            self._corrected.correction = None
        trainer.optimizer, trainer.lr_scheduler = None, None  # keep memory flat across clients
        return float(result.training_loss)


OWNER_COLUMN = "flb_client_id"  # which client a row is of, while the shards are tokenized together


def _owned(shards: dict[int, list[dict]]) -> list[dict]:
    return [{**record, OWNER_COLUMN: client_id} for client_id, shard in shards.items() for record in shard]


def _rows_by_owner(owners: list[int], shards: dict[int, list[dict]]) -> dict[int, list[int]]:
    """Row numbers per client; DataError for a client trl left no row to train on (it drops an example whose
    answer sft.max_length cuts off entirely)."""
    from flb.errors import DataError

    rows: dict[int, list[int]] = {client_id: [] for client_id in shards}
    for row, owner in enumerate(owners):
        rows[owner].append(row)
    empty = [client_id for client_id, kept in rows.items() if not kept]
    if empty:
        alike = f" ({len(empty)} clients alike)" if len(empty) > 1 else ""
        raise DataError(
            f"client {empty[0]}: none of its {len(shards[empty[0]])} examples fits sft.max_length once "
            f"tokenized{alike}; raise sft.max_length or give the clients shorter examples"
        )
    return rows


class CorrectedSteps(TrainerCallback):
    """Runs the round's GradientCorrection, if any, before each of the trainer's optimizer steps (after clipping)."""

    correction: GradientCorrection | None = None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.correction is not None:
            self.correction.apply()


class StepProgress(TrainerCallback):
    """A tqdm bar over one client's local steps; `label` names the client."""

    def __init__(self, label: str):
        self.label = label
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = tqdm(total=state.max_steps, desc=self.label, leave=False)

    def on_step_end(self, args, state, control, **kwargs):
        self.bar.update(1)

    def on_train_end(self, args, state, control, **kwargs):
        self.bar.close()
