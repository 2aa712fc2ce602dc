"""A node's own privacy floor: the local DP a Flower node pins in its node config, and whether a run keeps it.

Without a pin a node trains with the client.dp settings the server sends, so a server could switch its noise off.
With one, the node refuses a run whose settings protect its unit of privacy less than the pin:

- local DP on, with the pinned mechanism (update and dpsgd release different things: neither is "more private");
- adjacency: replace is the stronger unit (a shard against any other); a node that pins it refuses add_remove;
- delta never higher than the pin;
- noise: the std relative to the sensitivity never lower. Noise std is z * C and the sensitivity is C (add_remove)
  or 2C (replace), so z alone measures it; a larger clip norm C raises the noise with it. The z compared is the one
  the client would add: planned from client.dp.target_epsilon where the server sends no noise_multiplier, and kept
  in the client's private state from the run's first message (a server cannot plan a small z, then send a config
  that looks strong);
- epsilon: the most the run can spend (what the client's accountant holds, then that z with the client in every
  round left), under the node's adjacency and at its delta, never above the pinned target; nor may the run go past
  its target (client.dp.allow_over_target).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from flb.errors import ConfigError, FLBError, invalid_value, require

NODE_CONFIG_KEYS = ("dp-mechanism", "dp-noise-multiplier", "dp-target-epsilon", "dp-delta", "dp-adjacency")


class WeakerPrivacy(FLBError):
    """The run's client DP settings are weaker than what this node pins; it does not train."""


@dataclass(frozen=True)
class PrivacyPolicy:
    """What a node pins: `mechanism` (update | dpsgd), at least one of a smallest `noise_multiplier` and a largest
    `target_epsilon` over the run, a largest `delta`, and the `adjacency` its guarantee must hold for."""

    mechanism: str
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    adjacency: str = "add_remove"

    def __post_init__(self):
        _node_require(self.mechanism in ("update", "dpsgd"), "dp-mechanism", self.mechanism, "update | dpsgd")
        _node_require(
            self.adjacency in ("add_remove", "replace"), "dp-adjacency", self.adjacency, "add_remove | replace"
        )
        _node_require(
            self.noise_multiplier is not None or self.target_epsilon is not None,
            "dp-noise-multiplier",
            None,
            "a number >= 0, or set dp-target-epsilon (one of them is required with dp-mechanism)",
        )
        _node_require(
            self.noise_multiplier is None or self.noise_multiplier >= 0,
            "dp-noise-multiplier",
            self.noise_multiplier,
            "a number >= 0",
        )
        _node_require(
            self.target_epsilon is None or self.target_epsilon > 0,
            "dp-target-epsilon",
            self.target_epsilon,
            "a number > 0",
        )
        _node_require(0 < self.delta < 1, "dp-delta", self.delta, "a number in (0, 1)")
        _node_require(
            not (self.mechanism == "dpsgd" and self.adjacency == "replace"),
            "dp-adjacency",
            self.adjacency,
            "add_remove with dp-mechanism dpsgd (no run can use replace with dpsgd)",
        )

    @classmethod
    def from_node_config(cls, node_config: Mapping) -> PrivacyPolicy | None:
        """The policy a node config pins (its dp-* keys), or None when it pins none."""
        pinned = {key: value for key, value in node_config.items() if str(key).startswith("dp-")}
        unknown = sorted(set(pinned) - set(NODE_CONFIG_KEYS))
        if unknown:
            why = " (noise std is z * C: C alone does not change the guarantee)" if unknown[0] == "dp-clip-norm" else ""
            raise ConfigError(
                f"node config {unknown[0]}: unknown key; the privacy pin takes {', '.join(NODE_CONFIG_KEYS)}{why}"
            )
        if not pinned:
            return None
        if "dp-mechanism" not in pinned:
            raise ConfigError(
                "node config dp-mechanism: required when the node pins its privacy (dp-* keys); "
                "set dp-mechanism='update' or 'dpsgd'"
            )
        delta = _number(pinned, "dp-delta")
        return cls(
            mechanism=str(pinned["dp-mechanism"]),
            noise_multiplier=_number(pinned, "dp-noise-multiplier"),
            target_epsilon=_number(pinned, "dp-target-epsilon"),
            delta=cls.delta if delta is None else delta,
            adjacency=str(pinned.get("dp-adjacency", cls.adjacency)),
        )


@dataclass(frozen=True)
class Weakening:
    """One setting of the run that is weaker than the node's pin: the run config key, the node's pinned value and
    what the server sent."""

    key: str
    node: str
    server: str

    def __str__(self) -> str:
        return (
            f"{self.key}: this node pins {self.node}, the server sends {self.server}; this node does not train "
            "with weaker privacy than its node config pins"
        )


def weakening(policy: PrivacyPolicy, config, privacy) -> Weakening | None:
    """The first way the run's client settings (`config`: the flb.config.Config the server sent) and the privacy hook
    the client would train with (`privacy`: client.privacy.local_privacy's, its state restored) protect this node's
    records less than `policy` does, or None when they protect them at least as well. The hook's z, not the config's,
    is compared: a client restored from its private state adds the noise planned when it was first built."""
    client, dp = config.client, config.client.dp
    if not client.local_dp:
        return Weakening("client.local_dp", f"true (dp-mechanism={policy.mechanism})", "false")
    if dp.mode != policy.mechanism:
        return Weakening("client.dp.mode", f"{policy.mechanism} (dp-mechanism)", dp.mode)
    if policy.adjacency == "replace" and dp.adjacency != "replace":
        return Weakening("client.dp.adjacency", "replace (dp-adjacency)", dp.adjacency)
    if dp.delta > policy.delta:
        return Weakening("client.dp.delta", f"at most {policy.delta:g} (dp-delta)", f"{dp.delta:g}")
    if policy.target_epsilon is not None and dp.allow_over_target:
        return Weakening("client.dp.allow_over_target", "false (dp-target-epsilon)", "true")
    z = privacy.noise_multiplier
    sent_z = _sent_noise(dp, z)
    if policy.noise_multiplier is not None and z < policy.noise_multiplier:
        return Weakening(
            "client.dp.noise_multiplier", f"at least {policy.noise_multiplier:g} (dp-noise-multiplier)", sent_z
        )
    if policy.target_epsilon is not None:
        spent = worst_case_epsilon(
            privacy, config.num_rounds, 2.0 if policy.adjacency == "replace" else 1.0, policy.delta
        )
        if spent is None or spent > policy.target_epsilon:
            reach = "unbounded epsilon" if spent is None else f"epsilon up to {spent:.4g}"
            return Weakening(
                "client.dp.target_epsilon",
                f"at most {policy.target_epsilon:g} (dp-target-epsilon)",
                f"{sent_z}: {reach} over {config.num_rounds} rounds at delta {policy.delta:g}",
            )
    return None


def worst_case_epsilon(privacy, num_rounds: int, sensitivity: float, delta: float) -> float | None:
    """The most `privacy` (a client.privacy hook with a NoisePlan) can have spent at the end of a `num_rounds` run, at
    `delta`, when one unit of privacy moves what is noised by `sensitivity` x C: what its accountant holds, then its z
    in every step it has left if the client took part in every round. None when unbounded (no noise)."""
    from flb.privacy.accounting import accountant_state, epsilon, rdp_accountant

    history = [
        [z * privacy.sensitivity / sensitivity, q, steps]
        for z, q, steps in accountant_state(privacy.accountant)["history"]
    ]
    left = num_rounds * privacy.plan.steps_per_round - sum(steps for *_, steps in history)
    if left > 0:
        history.append([privacy.noise_multiplier / sensitivity, privacy.sample_rate, left])
    return epsilon(rdp_accountant({"history": history}), delta)


def _sent_noise(dp, z: float) -> str:
    """The z the client would use, as the server's settings lead to it."""
    if dp.noise_multiplier == z:
        return f"{z:g}"
    if dp.noise_multiplier is None:
        return f"z = {z:.4g} (planned for client.dp.target_epsilon {dp.target_epsilon:g})"
    return f"{dp.noise_multiplier:g}, but the client's private state for this run keeps z = {z:.4g}"


def _number(pinned: Mapping, key: str) -> float | None:
    if key not in pinned:
        return None
    try:
        return float(pinned[key])
    except (TypeError, ValueError):
        raise invalid_value(f"node config {key}", pinned[key], "a number") from None


def _node_require(ok: bool, key: str, value, allowed: str) -> None:
    require(ok, f"node config {key}", value, allowed)
