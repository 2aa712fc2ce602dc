"""Config: every section together, and the rules across sections."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from flb.config.evaluation import EvalSettings
from flb.config.fields import described, one_of
from flb.config.sections import (
    ClientSettings,
    CommSettings,
    DPOSettings,
    ExecutionSettings,
    ModelSettings,
    PartitionSettings,
    ServerSettings,
    SFTSettings,
    SimulationSettings,
    SplitSettings,
)
from flb.config.services import ChainSettings, NotifySettings, TrackingSettings
from flb.config.strategies import HETEROGENEOUS_RANKS, STRATEGIES, StrategySettings, strategy_names
from flb.errors import require


@dataclass(frozen=True)
class Config:
    model: ModelSettings = described("Base model and LoRA.", default_factory=ModelSettings)
    sft: SFTSettings = described(
        "Local training (its learning rate, batch size and length serve client.objective dpo too).",
        default_factory=SFTSettings,
    )
    dpo: DPOSettings = described("Direct preference optimisation (client.objective dpo).", default_factory=DPOSettings)
    client: ClientSettings = described("Client options.", default_factory=ClientSettings)
    server: ServerSettings = described("Server options.", default_factory=ServerSettings)
    strategy: StrategySettings = described("Aggregation strategy.", default_factory=StrategySettings)
    partition: PartitionSettings = described("Data partitioning.", default_factory=PartitionSettings)
    eval: EvalSettings = described("Evaluation.", default_factory=EvalSettings)
    comm: CommSettings = described("Communication: compression and accounting.", default_factory=CommSettings)
    execution: ExecutionSettings = described("How the sampled clients are run.", default_factory=ExecutionSettings)
    notify: NotifySettings = described("Round notifications.", default_factory=NotifySettings)
    tracking: TrackingSettings = described("Experiment tracking.", default_factory=TrackingSettings)
    split: SplitSettings = described("Split learning (mode split).", default_factory=SplitSettings)
    simulation: SimulationSettings = described(
        "Simulated stragglers and dropouts, to study them on one machine.", default_factory=SimulationSettings
    )
    chain: ChainSettings = described(
        "Ledger backend and scoring (used when chain_record is true).", default_factory=ChainSettings
    )
    mode: str = described(
        "federated (each client trains the whole adapter) | split (the client keeps the embeddings, "
        "the first and last blocks and the head; the server trains the blocks between; see split.*).",
        default="federated",
    )
    dataset_name: str = described(
        "Training data: 'flb-tasks' (our generated tasks; with client.objective dpo, 'flb-preferences': "
        "preference pairs generated from them), a .json/.jsonl/.csv/.parquet file, a local dataset directory, or a "
        "hub name.",
        default="flb-tasks",
    )
    num_clients: int = described("Number of clients the data is partitioned over.", default=3)
    clients_per_round: int = described("Clients sampled each round.", default=3)
    num_rounds: int = described("Federated rounds.", default=2)
    local_steps: int = described("Optimizer steps each sampled client takes per round.", default=10)
    seed: int = described(
        "Seed of the random choices that decide no privacy: data split, initialisation, data order, "
        "sampling without DP (DP draws come from each party's secret generator).",
        default=42,
    )
    output_dir: str = described(
        "Runs are written to output_dir/<run-id>/; output_dir/latest links the newest.", default="runs"
    )
    chain_record: bool = described("Record data uploads and rounds on the chain ledger (see chain.*).", default=True)

    def __post_init__(self):
        one_of("mode", self.mode, ("federated", "split"))
        require(self.num_clients >= 1, "num_clients", self.num_clients, "an integer >= 1")
        require(
            1 <= self.clients_per_round <= self.num_clients,
            "clients_per_round",
            self.clients_per_round,
            f"an integer in [1, num_clients={self.num_clients}]",
        )
        require(
            self.server.min_clients <= self.clients_per_round,
            "server.min_clients",
            self.server.min_clients,
            f"an integer in [1, clients_per_round={self.clients_per_round}]",
        )
        require(self.num_rounds >= 1, "num_rounds", self.num_rounds, "an integer >= 1")
        require(self.local_steps >= 1, "local_steps", self.local_steps, "an integer >= 1")
        # numpy's and transformers' set_seed take 32-bit seeds
        require(0 <= self.seed < 2**32, "seed", self.seed, "an integer in [0, 2**32)")
        for key, name in self.strategy.chosen.items():
            if (check := STRATEGIES[name].check) is not None:
                check(self, key)
        require(
            not (self.execution.mode == "batched" and self.client.local_dp and self.client.dp.mode == "dpsgd"),
            "execution.mode",
            "batched",
            "sequential or processes with DP-SGD (opacus clips each example's "
            "gradient through the model's own layers; the stacked client adapters of batched mode are not "
            "ones it can hook, so its clipping would not be exact)",
        )
        require(
            not (self.simulation.active and self.execution.mode == "batched"),
            "execution.mode",
            self.execution.mode,
            "sequential or processes with simulation.* (batched clients train in one pass, so none can be slower)",
        )
        if self.mode == "split":
            self._check_split()
        if self.client.objective == "dpo":
            self._check_dpo()
        self._check_client_ranks()
        if self.strategy.personalization != "none":
            self._check_personalization()
        require(
            not (self.uses_dp and self.chain_record and self.chain.scoring == "quality"),
            "chain.scoring",
            self.chain.scoring,
            "flb with differential privacy (quality scores publish each client's effect on "
            "the held-out loss, which no DP mechanism covers)",
        )

    def _check_split(self) -> None:
        """What split mode does not combine with, each a one-line error naming the way out."""
        require(
            self.execution.mode == "sequential",
            "execution.mode",
            self.execution.mode,
            "sequential with mode split (the server trains the trunk with one client at a time)",
        )
        require(
            not self.uses_dp,
            "mode",
            self.mode,
            "federated with local or server DP (split mode's privacy "
            "knob is split.activation_noise; set client.local_dp=false and a strategy without dp_)",
        )
        require(
            not self.simulation.active,
            "mode",
            self.mode,
            "federated with simulation.* (a split client trains with the server step by step)",
        )
        for key in ("compression", "broadcast_compression"):
            value = getattr(self.comm, key)
            require(
                value == "none",
                f"comm.{key}",
                value,
                "none with mode split (its updates are the client's parts, and the trunk is trained on the server)",
            )
        require(
            not STRATEGIES[self.strategy.aggregator].client_objective,
            "strategy.name",
            self.strategy.name,
            "a strategy without a client-side objective (not "
            f"{' or '.join(strategy_names(client_objective=True))}) with mode split",
        )

    def _check_client_ranks(self) -> None:
        """model.lora.client_ranks and the aggregation modes made for it go together, in the modes that keep a
        client's components above its rank at zero."""
        mode, ranks = self.strategy.lora_aggregation, self.model.lora.client_ranks
        if ranks is None:
            require(
                mode not in HETEROGENEOUS_RANKS,
                "strategy.lora_aggregation",
                mode,
                "separate | ffa | svd when every client has model.lora.r (or give the clients ranks with "
                "model.lora.client_ranks, e.g. [4, 8])",
            )
            return
        require(
            mode in HETEROGENEOUS_RANKS,
            "strategy.lora_aggregation",
            mode,
            f"{' | '.join(HETEROGENEOUS_RANKS)} with model.lora.client_ranks (clients of different ranks)",
        )
        for key, value, allowed in (
            ("execution.mode", self.execution.mode, ("sequential", "processes")),
            ("mode", self.mode, ("federated",)),
            ("client.objective", self.client.objective, ("sft",)),
        ):
            require(
                value in allowed,
                key,
                value,
                f"{' | '.join(allowed)} with model.lora.client_ranks (batched clients, split mode and DPO train "
                "the full-rank adapter)",
            )
        require(
            not (self.client.local_dp and self.client.dp.mode == "dpsgd"),
            "client.dp.mode",
            self.client.dp.mode,
            "update with model.lora.client_ranks (DP-SGD's noise would reach the components above a client's rank, "
            "which must stay zero while it trains)",
        )

    def _check_personalization(self) -> None:
        """What personal adapters (strategy.personalization) do not combine with: what would not stay exact, or would
        send or publish what each client keeps to itself. Each a one-line error naming the way out."""
        strategy, fedsa = self.strategy, self.strategy.personalization == "fedsa"
        rules = [
            (self.execution.mode != "batched", "execution.mode", self.execution.mode,
             "sequential | processes with strategy.personalization (batched clients train their global adapters in "
             "one stacked pass, with no room for personal ones)"),
            (self.mode == "federated", "mode", self.mode,
             "federated with strategy.personalization (split mode keeps parts of the model on each client already: "
             "split.client_parts personal)"),
            (self.client.objective == "sft", "client.objective", self.client.objective,
             "sft with strategy.personalization (personal adapters are trained and evaluated with the SFT loss)"),
            (not self.client.local_dp, "client.local_dp", self.client.local_dp,
             "false with strategy.personalization (a personal adapter is trained without noise and each client "
             "reports its own held-out losses: local DP would cover neither)"),
            (not strategy.spec.asynchronous, "strategy.name", strategy.name,
             "a synchronous strategy with strategy.personalization (a fedbuff client trains from whichever global "
             "adapter was newest when it started; personal adapters are kept for synchronous rounds)"),
            (not (fedsa and strategy.spec.dp), "strategy.name", strategy.name,
             "a strategy without server DP with strategy.personalization fedsa (the server's noise would turn the "
             "global LoRA B, zero for every client, into noise), or personalization ditto"),
            (not (fedsa and strategy.aggregator == "scaffold"), "strategy.name", strategy.name,
             "a strategy other than scaffold with strategy.personalization fedsa (control variates over LoRA B "
             "would carry each client's private B gradients to the server)"),
            (not fedsa or strategy.lora_aggregation == "separate", "strategy.lora_aggregation",
             strategy.lora_aggregation,
             "separate with strategy.personalization fedsa (ffa freezes A, the one factor fedsa shares; svd, flexlora "
             "and hetlora merge products B_k A_k, and fedsa's B never leaves its client)"),
            (strategy.lora_aggregation in ("separate", "ffa", "svd"), "strategy.lora_aggregation",
             strategy.lora_aggregation,
             "separate | ffa | svd with strategy.personalization (a personal adapter has the global adapter's rank)"),
            (not fedsa or self.comm.compression == "none", "comm.compression", self.comm.compression,
             "none with strategy.personalization fedsa (a compressed update is decoded against the whole global "
             "adapter, and fedsa's update holds LoRA A only)"),
        ]  # fmt: skip
        for ok, key, value, allowed in rules:
            require(ok, key, value, allowed)

    def _check_dpo(self) -> None:
        """What client.objective dpo does not combine with, each a one-line error naming the way out."""
        require(
            self.execution.mode == "sequential",
            "execution.mode",
            self.execution.mode,
            "sequential with client.objective dpo (batched clients share one SFT pass, and worker processes build "
            "SFT trainers)",
        )
        require(
            self.mode == "federated",
            "mode",
            self.mode,
            "federated with client.objective dpo (split mode's trunk server trains with the SFT loss)",
        )
        require(
            not (self.client.local_dp and self.client.dp.mode == "dpsgd"),
            "client.dp.mode",
            self.client.dp.mode,
            "update with client.objective dpo (DP-SGD clips each example's gradient, and DPO's loss couples a "
            "chosen and a rejected sequence, which opacus' per-sample hooks do not see as one example)",
        )
        require(
            not self.sft.training_arguments,
            "sft.training_arguments",
            self.sft.training_arguments,
            "{} with client.objective dpo (they are SFTConfig's arguments; trl's DPOConfig takes others)",
        )

    @property
    def dpo_objective(self) -> DPOSettings | None:
        """The one place the objective is chosen: dpo's settings when the clients optimise DPO, None for SFT."""
        return self.dpo if self.client.objective == "dpo" else None

    @property
    def fewest_aggregated(self) -> int:
        """The fewest updates one aggregation can get: server.min_clients, or one fewer when leave-one-out scoring
        (chain.scoring=quality) aggregates again without each client."""
        if self.chain_record and self.chain.scoring == "quality" and self.server.min_clients > 1:
            return self.server.min_clients - 1
        return self.server.min_clients

    @property
    def server_dp(self) -> bool:
        """The server aggregates with a DP strategy."""
        return self.strategy.spec.dp

    @property
    def uses_dp(self) -> bool:
        """Some party adds DP noise: then privacy-deciding randomness is secret and the chain holds commitments."""
        return self.server_dp or self.client.local_dp

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
