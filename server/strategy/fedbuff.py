"""FedBuff (Nguyen et al., 2022, https://arxiv.org/abs/2106.06639): the server adds the staleness-weighted mean of the
buffered clients' changes, each from the global adapter that client started from, to the current global adapter.
Which clients arrive when is server/buffered.py's; this is the arithmetic alone, specified to the bit in
docs/audit-spec.md (FedBuff) so that plain numpy reproduces it."""

from __future__ import annotations

from flb.config import FedBuffSettings
from flb.types import AdapterState, ClientUpdate
from server.strategy.base import BuildContext, Strategy


class FedBuff(Strategy):
    def __init__(self, *, settings: FedBuffSettings):
        self.settings = settings

    def aggregate(
        self, global_adapter: AdapterState, updates: list[ClientUpdate], round: int, num_sampled: int
    ) -> AdapterState:
        """global + eta_g * sum_k w_k s(tau_k) (x_k - b_k) / sum_k w_k, per element in float64 in the updates'
        order, rounded once to the tensor's dtype: x_k an update, b_k its `base` (the global adapter it started
        from, signed as round `update.round - 1`), tau_k = round - update.round."""
        import torch

        total = float(sum(u.num_examples for u in updates))
        eta = self.settings.server_learning_rate
        coefficients = [eta * u.num_examples * self.settings.weight(round - u.round) / total for u in updates]
        result = {}
        for name, current in global_adapter.items():
            change = torch.zeros_like(current, dtype=torch.float64)
            for update, coefficient in zip(updates, coefficients):
                change = change + (update.tensors[name].to(torch.float64) - update.base[name].to(torch.float64)) * (
                    coefficient
                )
            result[name] = (current.to(torch.float64) + change).to(current.dtype)
        return result


def build(context: BuildContext) -> FedBuff:
    return FedBuff(settings=context.config.strategy.fedbuff)
