"""The strategies: each one's settings section, and STRATEGIES, the one registry of their names, capabilities and
rules."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flb.config.fields import described, one_of
from flb.errors import require

if TYPE_CHECKING:
    from flb.config.root import Config


@dataclass(frozen=True)
class FedProxSettings:
    mu: float = described(
        "fedprox: weight of the proximal term mu/2 ||theta - theta_global||^2 added to each client's "
        "loss (over the LoRA parameters).",
        default=0.01,
    )

    def __post_init__(self):
        require(self.mu >= 0, "strategy.fedprox.mu", self.mu, "a number >= 0")


@dataclass(frozen=True)
class FedAvgMSettings:
    server_learning_rate: float = described("fedavgm: eta, the server's step on the pseudo-gradient.", default=1.0)
    server_momentum: float = described("fedavgm: beta, the server's momentum.", default=0.9)

    def __post_init__(self):
        require(
            self.server_learning_rate > 0,
            "strategy.fedavgm.server_learning_rate",
            self.server_learning_rate,
            "a number > 0",
        )
        require(
            0 <= self.server_momentum < 1,
            "strategy.fedavgm.server_momentum",
            self.server_momentum,
            "a number in [0, 1)",
        )


def _check_server_step(name: str, eta: float, tau: float) -> None:
    require(eta > 0, f"strategy.{name}.eta", eta, "a number > 0")
    require(tau > 0, f"strategy.{name}.tau", tau, "a number > 0")


@dataclass(frozen=True)
class FedAdagradSettings:
    """FedAdagrad (Reddi et al., https://arxiv.org/abs/2003.00295): no momentum, v accumulates every squared step.
    eta_l, the clients' learning rate, is sft.learning_rate."""

    eta: float = described("fedadagrad: server learning rate.", default=0.01)
    tau: float = described("fedadagrad: adaptivity, added to the root of the second moment.", default=1e-3)

    def __post_init__(self):
        _check_server_step("fedadagrad", self.eta, self.tau)


@dataclass(frozen=True)
class FedAdamSettings:
    """FedAdam and FedYogi (Reddi et al., https://arxiv.org/abs/2003.00295); eta_l, the clients' learning rate, is
    sft.learning_rate."""

    eta: float = described("Server learning rate.", default=0.01)
    beta_1: float = described("First-moment decay.", default=0.9)
    beta_2: float = described("Second-moment decay.", default=0.99)
    tau: float = described("Adaptivity: added to the root of the second moment.", default=1e-3)

    def __post_init__(self):
        name = "fedyogi" if isinstance(self, FedYogiSettings) else "fedadam"
        _check_server_step(name, self.eta, self.tau)
        require(0 <= self.beta_1 < 1, f"strategy.{name}.beta_1", self.beta_1, "a number in [0, 1)")
        require(0 <= self.beta_2 < 1, f"strategy.{name}.beta_2", self.beta_2, "a number in [0, 1)")


@dataclass(frozen=True)
class FedYogiSettings(FedAdamSettings):
    pass


@dataclass(frozen=True)
class ScaffoldSettings:
    server_learning_rate: float = described("scaffold: eta_g, the server's step on the mean update.", default=1.0)

    def __post_init__(self):
        require(
            self.server_learning_rate > 0,
            "strategy.scaffold.server_learning_rate",
            self.server_learning_rate,
            "a number > 0",
        )


@dataclass(frozen=True)
class TrimmedMeanSettings:
    beta: float = described(
        "trimmed_mean: fraction cut from each end of every coordinate's sorted values.", default=0.2
    )

    def __post_init__(self):
        require(0 <= self.beta < 0.5, "strategy.trimmed_mean.beta", self.beta, "a number in [0, 0.5)")


@dataclass(frozen=True)
class KrumSettings:
    num_malicious: int = described("f: the Byzantine clients tolerated; needs server.min_clients >= 2f + 3.", default=0)

    def __post_init__(self):
        require(self.num_malicious >= 0, "strategy.krum.num_malicious", self.num_malicious, "an integer >= 0")


@dataclass(frozen=True)
class MultiKrumSettings:
    num_malicious: int = described("f: the Byzantine clients tolerated; needs server.min_clients >= 2f + 3.", default=0)
    num_selected: int = described("m: the updates with the best Krum scores that are averaged.", default=2)

    def __post_init__(self):
        require(self.num_malicious >= 0, "strategy.multi_krum.num_malicious", self.num_malicious, "an integer >= 0")
        require(self.num_selected >= 1, "strategy.multi_krum.num_selected", self.num_selected, "an integer >= 1")


@dataclass(frozen=True)
class BulyanSettings:
    num_malicious: int = described("f: the Byzantine clients tolerated; needs server.min_clients >= 4f + 3.", default=0)

    def __post_init__(self):
        require(self.num_malicious >= 0, "strategy.bulyan.num_malicious", self.num_malicious, "an integer >= 0")


@dataclass(frozen=True)
class NormBoundingSettings:
    max_norm: float = described(
        "norm_bounding: L2 bound (whole adapter) each update's change is clipped to.", default=1.0
    )

    def __post_init__(self):
        require(self.max_norm > 0, "strategy.norm_bounding.max_norm", self.max_norm, "a number > 0")


@dataclass(frozen=True)
class FedBuffSettings:
    """FedBuff (Nguyen et al., 2022, https://arxiv.org/abs/2106.06639): clients_per_round clients train at once,
    each from the newest global adapter when it starts; every buffer_size arrivals are one round."""

    buffer_size: int = described(
        "fedbuff: K, the arrivals that make one round (at most clients_per_round, the clients training at once).",
        default=2,
    )
    staleness: str = described(
        "fedbuff: how an update's weight falls with its staleness tau (rounds recorded since the global adapter it "
        "started from): constant (1) | polynomial ((1 + tau)^-staleness_exponent).",
        default="polynomial",
    )
    staleness_exponent: float = described("fedbuff: a in (1 + tau)^-a, the polynomial weighting.", default=0.5)
    max_staleness: int = described(
        "fedbuff: an update that started more than this many rounds before the round it arrives in is dropped "
        "(the contract refuses it too).",
        default=4,
    )
    server_learning_rate: float = described(
        "fedbuff: eta_g, the server's step on the staleness-weighted mean change.", default=1.0
    )

    def __post_init__(self):
        require(self.buffer_size >= 1, "strategy.fedbuff.buffer_size", self.buffer_size, "an integer >= 1")
        one_of("strategy.fedbuff.staleness", self.staleness, ("constant", "polynomial"))
        require(
            self.staleness_exponent >= 0,
            "strategy.fedbuff.staleness_exponent",
            self.staleness_exponent,
            "a number >= 0",
        )
        require(self.max_staleness >= 0, "strategy.fedbuff.max_staleness", self.max_staleness, "an integer >= 0")
        require(
            self.server_learning_rate > 0,
            "strategy.fedbuff.server_learning_rate",
            self.server_learning_rate,
            "a number > 0",
        )

    def weight(self, staleness: int) -> float:
        """s(tau): how much an update `staleness` rounds stale counts (docs/audit-spec.md, FedBuff)."""
        return 1.0 if self.staleness == "constant" else (1.0 + staleness) ** -self.staleness_exponent


LORA_AGGREGATIONS = ("separate", "ffa", "svd", "flexlora", "hetlora")
HETEROGENEOUS_RANKS = ("flexlora", "hetlora")  # the modes for clients of different ranks (model.lora.client_ranks)


@dataclass(frozen=True)
class HetLoRASettings:
    """HetLoRA's rank self-pruning (Cho et al., 2024, https://arxiv.org/abs/2401.06432), as this project does it: a
    client's top components (the last prune_fraction of its rank) are decayed towards zero while it trains, and
    once they carry less than prune_below of its adapter's change it drops them for good."""

    prune_fraction: float = described(
        "hetlora: the share of a client's rank (at least one component) that it decays and may prune; 0: never prune.",
        default=0.25,
    )
    tail_decay: float = described(
        "hetlora: lambda of the decay lambda * theta added to the gradients of those components each step.",
        default=0.01,
    )
    prune_below: float = described(
        "hetlora: a client prunes them when ||B_tail A_tail|| < prune_below * ||B A|| (Frobenius, every LoRA "
        "module together) after its local steps.",
        default=0.1,
    )

    def __post_init__(self):
        require(
            0 <= self.prune_fraction < 1, "strategy.hetlora.prune_fraction", self.prune_fraction, "a number in [0, 1)"
        )
        require(self.tail_decay >= 0, "strategy.hetlora.tail_decay", self.tail_decay, "a number >= 0")
        require(0 <= self.prune_below < 1, "strategy.hetlora.prune_below", self.prune_below, "a number in [0, 1)")


PERSONALIZATIONS = ("none", "fedsa", "ditto")


@dataclass(frozen=True)
class DittoSettings:
    """Ditto (Li et al., 2021, https://arxiv.org/abs/2012.04221): each client also trains a personal adapter v_k with
    the proximal term lambda/2 ||v_k - w_global||^2. `lambda` is a Python keyword, which no dataclass field (and so no
    config key) may be: the key is strategy.ditto.lam."""

    lam: float = described(
        "ditto: lambda, the weight of the proximal term lambda/2 ||v_k - w_global||^2 that pulls each client's "
        "personal adapter towards the global one (0: purely local).",
        default=0.1,
    )

    def __post_init__(self):
        require(self.lam >= 0, "strategy.ditto.lam", self.lam, "a number >= 0")


def _refused_with_dp(config: Config, key: str) -> None:
    """SCAFFOLD's rule: no differential privacy, local or server, can cover what its clients send."""
    require(
        not config.uses_dp,
        key,
        "scaffold",
        "a strategy other than scaffold with differential privacy (SCAFFOLD "
        "sends each client's control variate un-noised, a function of its data no DP mechanism covers), or set "
        "client.local_dp=false",
    )


def _tolerates(per_malicious: int) -> Callable[[Config, str], None]:
    """The rule of Krum and Multi-Krum (n >= 2f + 3 updates), and Bulyan (n >= 4f + 3) (Blanchard et al., 2017; El
    Mhamdi et al., 2018); Multi-Krum also needs m <= n - f. A round's n may be as low as `Config.fewest_aggregated`."""

    def check(config: Config, key: str) -> None:
        name, fewest = config.strategy.aggregator, config.fewest_aggregated
        settings = getattr(config.strategy, name)
        fewest_text = f"{fewest}, the fewest updates a round aggregates (server.min_clients" + (
            ")" if fewest == config.server.min_clients else " - 1: chain.scoring=quality leaves one out)"
        )
        require(
            per_malicious * settings.num_malicious + 3 <= fewest,
            f"strategy.{name}.num_malicious",
            settings.num_malicious,
            f"f with {per_malicious}f + 3 <= {fewest_text}; raise server.min_clients or "
            f"lower strategy.{name}.num_malicious",
        )
        if isinstance(settings, MultiKrumSettings):
            require(
                settings.num_selected <= fewest - settings.num_malicious,
                f"strategy.{name}.num_selected",
                settings.num_selected,
                f"m <= {fewest_text} minus strategy.{name}.num_malicious; raise "
                f"server.min_clients or lower strategy.{name}.num_selected",
            )

    return check


def _buffered_rules(config: Config, key: str) -> None:
    """FedBuff's rules: a round is buffer_size arrivals of clients_per_round training at once, each update recorded
    with the round it started from (which a sealed round cannot carry), from in-process clients or workers."""
    settings = config.strategy.fedbuff
    require(
        settings.buffer_size <= config.clients_per_round,
        "strategy.fedbuff.buffer_size",
        settings.buffer_size,
        f"an integer in [1, clients_per_round={config.clients_per_round}] (the clients training at once)",
    )
    require(
        config.server.min_clients <= settings.buffer_size,
        "server.min_clients",
        config.server.min_clients,
        f"an integer in [1, strategy.fedbuff.buffer_size={settings.buffer_size}] with fedbuff",
    )
    require(
        config.execution.mode in ("sequential", "processes") and config.mode == "federated",
        "strategy.name",
        "fedbuff",
        "a synchronous strategy with mode split or execution.mode batched (fedbuff's clients start and finish "
        "one by one; use execution.mode=processes to train them at once)",
    )
    require(
        config.server.round_deadline_s is None,
        "server.round_deadline_s",
        config.server.round_deadline_s,
        "null with fedbuff (its rounds do not wait for the slow clients: a round is strategy.fedbuff.buffer_size "
        "arrivals)",
    )
    require(
        config.chain.record_participants or not config.chain_record,
        "chain.record_participants",
        False,
        "true with fedbuff (the chain checks each update against the round it started from, which a sealed round "
        "does not publish)",
    )


def _adaptive_noise_splits(config: Config, key: str) -> None:
    """Adaptive clipping splits z between the update and the unclipped count; that needs z < 2 * sigma_b."""
    z, sigma_b = config.server.noise_multiplier, config.server.dp.clipped_count_stddev
    require(
        z == 0 or z < 2 * sigma_b,
        "server.noise_multiplier",
        z,
        f"a number < 2 * server.dp.clipped_count_stddev "
        f"= {2 * sigma_b:g} with dp_adaptive_clipping (or raise server.dp.clipped_count_stddev)",
    )


@dataclass(frozen=True)
class StrategySpec:
    """Everything FLB knows about a strategy by its name: its settings, what it can do, its rules. Its builder is
    `build` in server/strategy/<name>.py (server.strategy.build_strategy imports it: flb/ imports no server/)."""

    name: str
    settings: type | None = None  # the dataclass of its own section, strategy.<name>; None: it has none
    settings_help: str = ""  # the help text of that section
    output_is_mean: bool = False  # its output is the weighted mean of the updates (what DP noise and svd assume)
    wraps: bool = False  # it bounds the updates, then hands them to the strategy strategy.wraps names
    dp: bool = False  # server-side differential privacy: its noise is secret, its epsilon accounted
    client_objective: bool = False  # its clients change their local objective (flb.local_objective)
    asynchronous: bool = False  # its clients train from older global adapters (server/buffered.py); no wrapper
    # its rules across sections, checked on the whole config when it is chosen (`key`: strategy.name or .wraps)
    check: Callable[[Config, str], None] | None = None


STRATEGIES: dict[str, StrategySpec] = {
    spec.name: spec
    for spec in (
        StrategySpec("fedavg", output_is_mean=True),
        StrategySpec("fedprox", FedProxSettings, "FedProx.", output_is_mean=True, client_objective=True),
        StrategySpec("fedavgm", FedAvgMSettings, "FedAvgM."),
        StrategySpec("fedadagrad", FedAdagradSettings, "FedAdagrad."),
        StrategySpec("fedadam", FedAdamSettings, "FedAdam."),
        StrategySpec("fedyogi", FedYogiSettings, "FedYogi."),
        StrategySpec("scaffold", ScaffoldSettings, "SCAFFOLD.", client_objective=True, check=_refused_with_dp),
        StrategySpec("median"),
        StrategySpec("trimmed_mean", TrimmedMeanSettings, "Coordinate-wise trimmed mean."),
        StrategySpec("krum", KrumSettings, "Krum.", check=_tolerates(2)),
        StrategySpec("multi_krum", MultiKrumSettings, "Multi-Krum.", check=_tolerates(2)),
        StrategySpec("bulyan", BulyanSettings, "Bulyan.", check=_tolerates(4)),
        StrategySpec("fedbuff", FedBuffSettings, "FedBuff.", asynchronous=True, check=_buffered_rules),
        StrategySpec("norm_bounding", NormBoundingSettings, "Norm bounding.", wraps=True),
        StrategySpec("dp_fixed_clipping", wraps=True, dp=True),
        StrategySpec("dp_adaptive_clipping", wraps=True, dp=True, check=_adaptive_noise_splits),
    )
}


def strategy_names(**capabilities: bool) -> tuple[str, ...]:
    """The registered strategies with these capabilities, in registry order: strategy_names(dp=True)."""
    return tuple(
        name
        for name, spec in STRATEGIES.items()
        if all(getattr(spec, capability) == value for capability, value in capabilities.items())
    )


@dataclass(frozen=True)
class _StrategyChoice:
    name: str = described("Aggregation strategy: " + " | ".join(STRATEGIES) + ".", default="fedavg")
    wraps: str = described(
        f"The strategy a wrapper ({', '.join(strategy_names(wraps=True))}) aggregates the bounded updates with.",
        default="fedavg",
    )
    lora_aggregation: str = described(
        "How LoRA factors are merged: separate (average A and B independently) | ffa (A "
        "frozen, B averaged: exact) | svd (average B_k A_k, re-factorise to rank r; with "
        f"{' or '.join(strategy_names(output_is_mean=True))} only, without server DP) | flexlora (svd over clients "
        "of different ranks, model.lora.client_ranks: each starts from the first components of the re-factorised "
        "mean, as many as its rank) | hetlora (separate over clients of different ranks, each update zero-padded to "
        "rank r; with strategy.hetlora's rank self-pruning).",
        default="separate",
    )
    hetlora: HetLoRASettings = described(
        "lora_aggregation hetlora: each client's rank self-pruning.", default_factory=HetLoRASettings
    )
    personalization: str = described(
        "Personal adapters kept by each client (docs/strategies.md#personal-adapters): none | fedsa (LoRA A "
        "aggregated, each client's LoRA B its own, never sent) | ditto (each client also trains a personal adapter "
        "near the global one, strategy.ditto.lam).",
        default="none",
    )
    ditto: DittoSettings = described(
        "personalization ditto: the personal adapters' proximal term.", default_factory=DittoSettings
    )

    def __post_init__(self):
        one_of("strategy.name", self.name, tuple(STRATEGIES))
        one_of("strategy.wraps", self.wraps, strategy_names(wraps=False, asynchronous=False))
        one_of("strategy.lora_aggregation", self.lora_aggregation, LORA_AGGREGATIONS)
        one_of("strategy.personalization", self.personalization, PERSONALIZATIONS)
        means = strategy_names(output_is_mean=True)
        require(
            not self.spec.dp or STRATEGIES[self.wraps].output_is_mean,
            "strategy.wraps",
            self.wraps,
            f"{' | '.join(means)} with strategy.name={self.name}, whose noise is calibrated for a mean of the "
            f"clipped updates; set strategy.wraps={means[0]}, or bound the updates without DP with "
            f"strategy.name={' | '.join(strategy_names(wraps=True, dp=False))}",
        )
        if self.lora_aggregation in ("svd", "flexlora"):
            self._check_svd()
        if self.lora_aggregation in HETEROGENEOUS_RANKS:
            self._check_heterogeneous_ranks()

    def _check_svd(self) -> None:
        """svd's (and flexlora's) refusals: it re-factorises a mean of the clients' adapters, and nothing else."""
        mode, means = self.lora_aggregation, strategy_names(output_is_mean=True)
        require(
            not self.spec.asynchronous,
            "strategy.lora_aggregation",
            mode,
            f"separate | ffa with {self.name} (its rounds add changes from different global adapters)",
        )
        require(
            not self.spec.dp,
            "strategy.lora_aggregation",
            mode,
            f"separate | ffa with {self.name} (its DP guarantee is for a noised mean of the clipped updates, "
            "not noised SVD factors)",
        )
        require(
            STRATEGIES[self.aggregator].output_is_mean,
            "strategy.lora_aggregation",
            mode,
            f"separate | ffa with {self.aggregator} ({mode} re-factorises a mean: use it with {' | '.join(means)})",
        )

    def _check_heterogeneous_ranks(self) -> None:
        """What clients of different ranks cannot be aggregated with: a client's zero-padded components are ones it
        did not train, so neither clipping its change (server DP, norm_bounding) nor a control variate (SCAFFOLD) nor
        fedbuff's change from a start adapter applies to them."""
        for name in self.chosen.values():
            spec = STRATEGIES[name]
            require(
                not (spec.wraps or spec.asynchronous or name == "scaffold"),
                "strategy.lora_aggregation",
                self.lora_aggregation,
                f"separate | ffa with {name} (it measures each update from the full-rank global adapter, and a "
                "client of a lower rank leaves the components above its rank untrained)",
            )

    @property
    def spec(self) -> StrategySpec:
        """The registry's entry for strategy.name."""
        return STRATEGIES[self.name]

    @property
    def chosen(self) -> dict[str, str]:
        """The strategies configured, by the key that names each: strategy.name, and strategy.wraps under a wrapper."""
        return {"strategy.name": self.name, **({"strategy.wraps": self.wraps} if self.spec.wraps else {})}

    @property
    def aggregator(self) -> str:
        """The strategy that aggregates: `wraps` under a wrapper, else `name`."""
        return self.wraps if self.spec.wraps else self.name

    @property
    def lora_a_frozen(self) -> bool:
        """ffa: every LoRA A stays at its shared initialisation; only B is trained, noised and averaged."""
        return self.lora_aggregation == "ffa"


# strategy.name, strategy.wraps and strategy.lora_aggregation, then one section strategy.<name> per registered
# strategy with settings of its own, made from the registry so that no second list of names exists
StrategySettings = dataclasses.make_dataclass(
    "StrategySettings",
    [
        (spec.name, spec.settings, described(spec.settings_help, default_factory=spec.settings))
        for spec in STRATEGIES.values()
        if spec.settings is not None
    ],
    bases=(_StrategyChoice,),
    frozen=True,
)
StrategySettings.__module__ = __name__  # pickled by name (the processes execution mode sends the config)
