"""Privacy accounting for every DP mechanism in FLB, with opacus' RDP accountant (we write none of our own).

One accountant per guarantee (the server's, each client's). Its state is opacus' history of
(noise multiplier z, sample rate q, steps), kept as JSON in checkpoint.json, so a resumed run reports
exactly the epsilon an uninterrupted one would. Renyi DP: Mironov, 2017 (https://arxiv.org/abs/1702.07476);
the subsampled Gaussian: Mironov, Talwar and Zhang, 2019 (https://arxiv.org/abs/1908.10530).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

from flb.errors import ConfigError

log = logging.getLogger(__name__)
MAX_NOISE_MULTIPLIER = 1e6
WEAK_EPSILON = 10.0  # above it an (epsilon, delta) guarantee says little: a run planned past it is warned of
NOISE_JUMP = 2.0  # an extension that multiplies z by this much or more is warned of: the model will learn little more


def rdp_accountant(state: dict | None = None):
    """A fresh opacus RDPAccountant, or one restored from `accountant_state` output."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    if state:
        accountant.load_state_dict({"mechanism": "rdp", "history": [tuple(entry) for entry in state["history"]]})
    return accountant


def accountant_state(accountant) -> dict:
    """JSON-ready state: the list of [z, q, steps] the accountant has composed."""
    return {"history": [list(entry) for entry in accountant.history]}


def epsilon(accountant, delta: float) -> float | None:
    """Epsilon spent so far at `delta`; None when unbounded (a step with z = 0)."""
    with warnings.catch_warnings():  # "optimal order is the smallest/largest alpha": still a valid bound
        warnings.filterwarnings("ignore", message="Optimal order")
        spent = accountant.get_epsilon(delta=delta)
    return float(spent) if math.isfinite(spent) else None


def spent(
    accountant, *, mechanism: str, delta: float, noise_multiplier: float, clip_norm: float, sample_rate: float, **extra
) -> dict:
    """Epsilon with everything a reader needs to recompute it: mechanism, delta, z, C, q, the step count and the
    accountant's whole history of (z, q, steps) segments (opacus' RDPAccountant on it gives the same epsilon)."""
    history = accountant_state(accountant)["history"]
    return {
        "mechanism": mechanism,
        "epsilon": epsilon(accountant, delta),
        "delta": delta,
        "noise_multiplier": noise_multiplier,
        "clip_norm": clip_norm,
        "sample_rate": sample_rate,
        "steps": sum(entry[2] for entry in history),
        "history": history,
        **extra,
    }


class Accounted:
    """What every DP mechanism shares: one opacus RDP accountant for the whole run, its epsilon report and its
    checkpoint state. A mechanism sets `mechanism`, `accountant`, `delta`, `noise_multiplier` (z: noise std is
    z * C), `clip_norm` (C) and `sample_rate`. `sensitivity` is how far, in units of C, one unit of privacy can
    move what is noised: 1 under add/remove adjacency, 2 under replace, so the accountant composes z / sensitivity.
    """

    adjacency = "add_remove"
    sensitivity = 1.0
    steps_per_round = 1  # accountant steps in one round the party takes part in
    knob = "server.noise_multiplier"  # the config key that sets z

    @property
    def accounting_multiplier(self) -> float:
        return self.noise_multiplier / self.sensitivity

    def epsilon_after(self, rounds: int) -> float | None:
        """Epsilon once `rounds` more rounds at the current z follow what was spent (None: unbounded, z = 0)."""
        history = accountant_state(self.accountant)["history"] + [
            [self.accounting_multiplier, self.sample_rate, rounds * self.steps_per_round]
        ]
        return epsilon(rdp_accountant({"history": history}), self.delta)

    def multiplier_for(self, target_epsilon: float, rounds: int) -> float | None:
        """The smallest z whose `rounds` more rounds, after what was spent, spend at most `target_epsilon`; None when
        none does."""
        found = noise_multiplier_for(
            target_epsilon=target_epsilon,
            delta=self.delta,
            sample_rate=self.sample_rate,
            steps=max(rounds * self.steps_per_round, 1),
            history=accountant_state(self.accountant)["history"],
        )
        return None if found is None else found * self.sensitivity

    def weak_fix(self, rounds: int) -> str:
        """What lowers the epsilon of `rounds` rounds to WEAK_EPSILON."""
        needed = self.multiplier_for(WEAK_EPSILON, rounds)
        return f"raise {self.knob} (now {self.noise_multiplier:g}) to {needed:.3g} or more, or run fewer rounds"

    def privacy_spent(self) -> dict:
        return spent(
            self.accountant,
            mechanism=self.mechanism,
            delta=self.delta,
            noise_multiplier=self.noise_multiplier,
            clip_norm=self.clip_norm,
            sample_rate=self.sample_rate,
            adjacency=self.adjacency,
            sensitivity=self.sensitivity * self.clip_norm,
        )

    def state_dict(self) -> dict:
        return {"accountant": accountant_state(self.accountant)}

    def load_state_dict(self, state: dict) -> None:
        self.accountant = rdp_accountant(state.get("accountant"))


@dataclass(frozen=True)
class NoisePlan:
    """How a client's z is chosen: `noise_multiplier` fixed, or (None) the smallest z whose worst case, the client
    in every one of `num_rounds` rounds at `steps_per_round` accountant steps each, spends at most
    `target_epsilon`. `allow_over_target` (--allow-over-budget) lets an extended run keep the z it had instead of
    planning a larger one; its epsilon may then pass the target (the report then says so)."""

    noise_multiplier: float | None
    target_epsilon: float | None
    num_rounds: int
    steps_per_round: int
    allow_over_target: bool = False
    owner: str = "client"  # who the plan is for, as log lines name it ("client 2")


class PlannedNoise(Accounted):
    """A client mechanism whose z follows a NoisePlan. The plan is made once and kept in the private state; when
    the run is extended (more rounds than planned) z is planned again for the remaining rounds on top of the
    accountant's history, so the total stays within the target (a warning when that multiplies z by NOISE_JUMP or
    more), or the run is refused; `allow_over_target` keeps the run's z instead and warns of the epsilon it reaches."""

    def __init__(self, plan: NoisePlan, *, adjacency: str):
        self.plan, self.adjacency = plan, adjacency
        self.sensitivity = 2.0 if adjacency == "replace" else 1.0
        self.steps_per_round = plan.steps_per_round
        self.knob = "client.dp.noise_multiplier" if plan.noise_multiplier is not None else "client.dp.target_epsilon"
        self.accountant = rdp_accountant()
        self.planned_rounds, self.over_target, self._announced = plan.num_rounds, False, None
        self.noise_multiplier = self._planned_multiplier(rounds_done=0)

    def _planned_multiplier(self, rounds_done: int) -> float:
        plan = self.plan
        if plan.noise_multiplier is not None:
            return plan.noise_multiplier
        remaining = plan.num_rounds - rounds_done
        if rounds_done and plan.allow_over_target:
            return self._kept_multiplier(remaining)
        found = self.multiplier_for(plan.target_epsilon, remaining)
        if found is None:
            raise self._unreachable(rounds_done, remaining)
        if rounds_done:
            self._announce(found, remaining)
        return found

    def _unreachable(self, rounds_done: int, remaining: int) -> ConfigError:
        plan = self.plan
        if rounds_done == 0:
            return ConfigError(
                f"client.dp.target_epsilon: invalid value {plan.target_epsilon!r}; no noise multiplier "
                f"up to {MAX_NOISE_MULTIPLIER:g} reaches it over {remaining * plan.steps_per_round} "
                f"steps at delta {self.delta:g}; allow a larger epsilon or fewer rounds"
            )
        return ConfigError(
            f"num_rounds: {plan.num_rounds} rounds would spend more than client.dp.target_epsilon = "
            f"{plan.target_epsilon:g} (already spent {epsilon(self.accountant, self.delta):.3f} in "
            f"{rounds_done} rounds); ask for fewer rounds, or pass --allow-over-budget to go on at "
            "the current noise"
        )

    def _announce(self, planned: float, remaining: int) -> None:
        """Say once per extension what the new z is; a warning when it is NOISE_JUMP times the run's or more."""
        plan = self.plan
        if self._announced == (plan.num_rounds, remaining):  # restored again before the round is saved
            return
        self._announced = (plan.num_rounds, remaining)
        if planned < NOISE_JUMP * self.noise_multiplier:
            log.info(
                "%s: extended to %d rounds: noise multiplier z = %.4g for the remaining rounds keeps epsilon within %g",
                plan.owner,
                plan.num_rounds,
                planned,
                plan.target_epsilon,
            )
            return
        log.warning(
            "%s: extended to %d rounds: z rises from %.4g to %.4g (%.3gx the noise) to keep epsilon within "
            "client.dp.target_epsilon = %g; expect the model to learn little more; --allow-over-budget keeps "
            "z = %.4g instead (epsilon would be %s)",
            plan.owner,
            plan.num_rounds,
            self.noise_multiplier,
            planned,
            planned / self.noise_multiplier,
            plan.target_epsilon,
            self.noise_multiplier,
            _shown_epsilon(self.epsilon_after(remaining)),
        )

    def _kept_multiplier(self, remaining: int) -> float:
        """--allow-over-budget: the run's z for the remaining rounds, and the epsilon it will reach."""
        plan = self.plan
        reached = self.epsilon_after(remaining)
        self.over_target = self.over_target or reached is None or reached > plan.target_epsilon
        if self._announced != (plan.num_rounds, remaining):
            self._announced = (plan.num_rounds, remaining)
            log.log(
                logging.WARNING if self.over_target else logging.INFO,
                "%s: extended to %d rounds as --allow-over-budget asks: z stays %.4g; epsilon will be %s "
                "(client.dp.target_epsilon = %g)",
                plan.owner,
                plan.num_rounds,
                self.noise_multiplier,
                _shown_epsilon(reached),
                plan.target_epsilon,
            )
        return self.noise_multiplier

    def weak_fix(self, rounds: int) -> str:
        if self.plan.noise_multiplier is None:
            return f"lower client.dp.target_epsilon (now {self.plan.target_epsilon:g}) to {WEAK_EPSILON:g} or less"
        return super().weak_fix(rounds)

    def privacy_spent(self) -> dict:
        report = super().privacy_spent()
        if self.plan.target_epsilon is not None and self.plan.noise_multiplier is None:
            report.update(target_epsilon=self.plan.target_epsilon, planned_rounds=self.planned_rounds)
        if self.over_target:
            report["over_target_allowed"] = True
        return report

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "noise_multiplier": self.noise_multiplier,
            "planned_rounds": self.planned_rounds,
            "over_target": self.over_target,
        }

    def restore(self, state: dict, rounds_done: int) -> None:
        """Continue from a saved state after the client's round `rounds_done`; plan again if the run was extended."""
        self.load_state_dict(state)
        self.noise_multiplier = state["noise_multiplier"]
        self.over_target = state.get("over_target", False)
        if state["planned_rounds"] != self.plan.num_rounds:
            self.noise_multiplier = self._planned_multiplier(rounds_done)
            self.planned_rounds = self.plan.num_rounds


def warn_if_weak(who: str, mechanisms: list[Accounted], num_rounds: int) -> None:
    """One WARNING when the weakest of `mechanisms` (the server's, or every client's) will have spent more than
    WEAK_EPSILON (or an unbounded epsilon) after `num_rounds` rounds at its z, naming the key that lowers it."""
    if not mechanisms:
        return
    planned = [(mechanism.epsilon_after(num_rounds), mechanism) for mechanism in mechanisms]
    reached, weakest = max(planned, key=lambda pair: math.inf if pair[0] is None else pair[0])
    if reached is not None and reached <= WEAK_EPSILON:
        return
    log.warning(
        "%s: epsilon will be %s after %d rounds at delta %g (above %g: a weak guarantee); %s",
        who,
        _shown_epsilon(reached),
        num_rounds,
        weakest.delta,
        WEAK_EPSILON,
        weakest.weak_fix(num_rounds),
    )


def _shown_epsilon(value: float | None) -> str:
    return "unbounded (z = 0)" if value is None else f"{value:.3g}"


def noise_multiplier_for(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    history: list | tuple = (),
    tolerance: float = 0.01,
) -> float | None:
    """The smallest z (binary search to `tolerance` in epsilon, as opacus' get_noise_multiplier) such that
    `history` followed by `steps` steps at (z, sample_rate) spends at most `target_epsilon` at `delta`; None
    when no z up to 1e6 does (the history alone may already spend the target)."""
    accountant = rdp_accountant()

    def spent_with(z: float) -> float:
        accountant.history = [tuple(entry) for entry in history] + [(z, sample_rate, steps)]
        value = epsilon(accountant, delta)
        return math.inf if value is None else value

    low, high = 0.0, 10.0
    while (spent_high := spent_with(high)) > target_epsilon:
        high *= 2
        if high > MAX_NOISE_MULTIPLIER:
            return None
    while target_epsilon - spent_high > tolerance:
        middle = (low + high) / 2
        spent_middle = spent_with(middle)
        if spent_middle < target_epsilon:
            high, spent_high = middle, spent_middle
        else:
            low = middle
    return high


def warn_if_delta_too_large(delta: float, num_records: int, key: str, records: str) -> None:
    """delta >= 1/n allows mechanisms that publish a whole record outright; warn, as the guarantee is then weak."""
    if delta >= 1 / num_records:
        log.warning(
            "%s = %g is >= 1/%d (one over the number of %s): the (epsilon, delta) guarantee is weak; "
            "use a delta well below %g",
            key,
            delta,
            num_records,
            records,
            1 / num_records,
        )


def run_privacy(server: dict, clients: dict[str, dict]) -> dict:
    """A round's privacy metrics: the server's and each client's spend, and the run's epsilon (the largest of
    them, None when any is unbounded); {} when the run uses no DP."""
    parts = ([server] if server else []) + list(clients.values())
    if not parts:
        return {}
    epsilons = [part["epsilon"] for part in parts]
    privacy = {"epsilon": None if None in epsilons else max(epsilons)}
    if server:
        privacy["server"] = server
    if clients:
        privacy["clients"] = clients
    return privacy
