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

from flb.errors import ConfigError

log = logging.getLogger(__name__)


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


def spent(accountant, *, mechanism: str, delta: float, noise_multiplier: float, clip_norm: float,
          sample_rate: float, **extra) -> dict:
    """Epsilon with everything a reader needs to recompute it: mechanism, delta, z, C, q and steps."""
    return {"mechanism": mechanism, "epsilon": epsilon(accountant, delta), "delta": delta,
            "noise_multiplier": noise_multiplier, "clip_norm": clip_norm, "sample_rate": sample_rate,
            "steps": sum(entry[2] for entry in accountant.history), **extra}


class Accounted:
    """What every DP mechanism shares: one opacus RDP accountant for the whole run, its epsilon report and its
    checkpoint state. A mechanism sets `mechanism`, `accountant`, `delta`, `noise_multiplier`, `clip_norm` and
    `sample_rate`."""

    def privacy_spent(self) -> dict:
        return spent(self.accountant, mechanism=self.mechanism, delta=self.delta, noise_multiplier=self.noise_multiplier,
                     clip_norm=self.clip_norm, sample_rate=self.sample_rate)

    def state_dict(self) -> dict:
        return {"accountant": accountant_state(self.accountant)}

    def load_state_dict(self, state: dict) -> None:
        self.accountant = rdp_accountant(state.get("accountant"))


def noise_multiplier_for(*, target_epsilon: float, delta: float, sample_rate: float, steps: int, key: str) -> float:
    """The smallest z (opacus' binary search, to 0.01 in epsilon) whose `steps` compositions at sample rate
    `sample_rate` spend at most `target_epsilon` at `delta`."""
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order")
            return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                              sample_rate=sample_rate, steps=steps, accountant="rdp"))
    except ValueError:
        raise ConfigError(f"{key}: invalid value {target_epsilon!r}; no noise multiplier up to 1e6 reaches it over "
                          f"{steps} steps at delta {delta:g}; allow a larger epsilon or fewer rounds") from None


def warn_if_delta_too_large(delta: float, num_records: int, key: str, records: str) -> None:
    """delta >= 1/n allows mechanisms that publish a whole record outright; warn, as the guarantee is then weak."""
    if delta >= 1 / num_records:
        log.warning("%s = %g is >= 1/%d (one over the number of %s): the (epsilon, delta) guarantee is weak; "
                    "use a delta well below %g", key, delta, num_records, records, 1 / num_records)


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
