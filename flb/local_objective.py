"""The client-side part of a strategy: what it changes in a client's local optimizer steps. A client receives it
from the (public) config; the server sends it only tensors (`extras`), never code.

Before each optimizer step (after trl's gradient clipping, or after DP-SGD's noise) every trainable LoRA gradient
g becomes g + mu (theta - theta_global) + (c - c_i):
- FedProx: mu (theta - theta_global) is the exact gradient of the proximal term mu/2 ||theta - theta_global||^2
  (Li et al., 2020, https://arxiv.org/abs/1812.06127). It is added as a gradient rather than through trl's loss
  so that it counts once per step whatever the gradient accumulation, and so that DP-SGD keeps it: opacus would
  drop a loss term without per-example gradients. There it comes after the noise and depends on no example
  (theta is itself DP), so it is post-processing and the guarantee stands.
- SCAFFOLD: c - c_i, the server's control variate minus the client's, corrects the client's drift
  (Karimireddy et al., 2020, https://arxiv.org/abs/1910.06378, Algorithm 1).

SCAFFOLD's next client variate, Option II, is c_i+ = c_i - c + (x - y_i) / (K eta_l). Under plain SGD that equals
the mean of the K uncorrected gradients (y_i = x - eta_l sum_k (g_k + c - c_i)). The local optimizer here is AdamW,
whose steps are not eta_l times a gradient: the formula would put c_i in units of Adam steps while the correction
is added to gradients. So c_i+ = mean_k g_k: Option II under SGD, and in gradient units under AdamW (the paper's
guarantees assume SGD).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flb.adapters.arithmetic import subtract
from flb.config import StrategySettings
from flb.types import AdapterState

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class LocalObjective:
    """The configured strategy's client-side part, as assembly.build_client hands it to each client."""

    proximal_mu: float = 0.0  # FedProx's mu; 0: no proximal term
    scaffold: bool = False

    @classmethod
    def of(cls, strategy: StrategySettings) -> LocalObjective:
        """What the aggregating strategy asks of clients (`strategy.aggregator`: also when a DP wrapper wraps it)."""
        return cls(
            proximal_mu=strategy.fedprox.mu if strategy.aggregator == "fedprox" else 0.0,
            scaffold=strategy.aggregator == "scaffold",
        )

    def correction(
        self,
        parameters: dict[str, torch.nn.Parameter],
        global_adapter: AdapterState,
        extras: AdapterState,
        variate: AdapterState,
    ) -> GradientCorrection | None:
        """This round's correction of `parameters` (the trainable adapter parameters, by adapter name), or None when
        the strategy changes nothing. `extras` holds SCAFFOLD's c, `variate` the client's c_i ({}: zero)."""
        if not self.proximal_mu and not self.scaffold:
            return None
        drift = subtract(extras, _or_zeros(variate, extras)) if self.scaffold else None
        return GradientCorrection(parameters, mu=self.proximal_mu, anchor=global_adapter, drift=drift)

    def returned(
        self, correction: GradientCorrection | None, extras: AdapterState, variate: AdapterState
    ) -> tuple[AdapterState, AdapterState]:
        """(what the update returns beside the adapter, the client's variate from now on): SCAFFOLD's
        (delta c_i, c_i+); nothing, and the variate unchanged, for other strategies."""
        if not self.scaffold:
            return {}, variate
        mean_gradient = correction.mean_gradient()
        new_variate = {
            name: mean_gradient[name].to(c.dtype) if name in mean_gradient else c.new_zeros(c.shape)
            for name, c in extras.items()
        }  # a frozen parameter (no gradient) keeps c_i = 0
        return subtract(new_variate, _or_zeros(variate, extras)), new_variate


def _or_zeros(variate: AdapterState, like: AdapterState) -> AdapterState:
    """A client's variate; zero before its first SCAFFOLD round (c_i = 0, as in the paper)."""
    return variate or {name: tensor.new_zeros(tensor.shape) for name, tensor in like.items()}


class GradientCorrection:
    """One round's change to the gradients; `apply()` runs right before each optimizer step."""

    def __init__(
        self, parameters: dict[str, torch.nn.Parameter], *, mu: float, anchor: AdapterState, drift: AdapterState | None
    ):
        import torch

        self.parameters, self.mu, self.steps = parameters, mu, 0
        self.anchor = {n: anchor[n].to(p.device, p.dtype) for n, p in parameters.items()} if mu else {}
        self.drift = {n: drift[n].to(p.device, p.dtype) for n, p in parameters.items()} if drift is not None else None
        self.gradient_sums = {n: torch.zeros_like(p) for n, p in parameters.items()} if drift is not None else {}

    def apply(self) -> None:
        import torch

        with torch.no_grad():
            for name, parameter in self.parameters.items():
                if parameter.grad is None:
                    parameter.grad = torch.zeros_like(parameter)
                if self.drift is not None:
                    self.gradient_sums[name].add_(parameter.grad)
                    parameter.grad.add_(self.drift[name])
                if self.mu:
                    parameter.grad.add_(parameter - self.anchor[name], alpha=self.mu)
        self.steps += 1

    def mean_gradient(self) -> AdapterState:
        """The mean of the gradients `apply()` saw before correcting them, on the CPU."""
        return {name: (total / self.steps).cpu() for name, total in self.gradient_sums.items()}
