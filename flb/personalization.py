"""Personal adapters (strategy.personalization): what of an adapter stays with its client, and the commitment an update
carries in its place. Shared by the clients (client/personal.py), the round coordinator and the replay of a run.

- fedsa (FedSA-LoRA, Guo et al., 2025, https://arxiv.org/abs/2410.01463): every LoRA B is the client's own and never
  leaves it; an update holds the LoRA A matrices (and any other trained tensor) only. The server's global adapter
  keeps each B at its shared initialisation (zero), so an update stands for the global adapter with its A replaced.
- ditto (Li et al., 2021, https://arxiv.org/abs/2012.04221): the update is the whole adapter, as without
  personalization; the personal adapter v_k is trained beside it and never sent.

Either way each update's extras hold `personal_commitment`: sha256(salt || digest of the client's personal part), 32
bytes, the salt from the client's secret generator. It is in the update's digest, so the signature and the chain's
record bind it, and in the published update file, so every verifier recomputes the digest; no strategy reads it.
"""

from __future__ import annotations

from dataclasses import replace

from flb.types import AdapterState, ClientUpdate

COMMITMENT = "personal_commitment"  # in an update's extras; extras/personal_commitment in its file
COMMITMENT_BYTES = 32  # a sha256


def is_private(name: str, personalization: str) -> bool:
    """Whether adapter tensor `name` stays with its client under `personalization`: fedsa's LoRA B."""
    return personalization == "fedsa" and ".lora_B." in name


def shared_part(state: AdapterState, personalization: str) -> AdapterState:
    """What of an adapter crosses the wire: all of it but the private tensors."""
    return {name: t for name, t in state.items() if not is_private(name, personalization)}


def private_part(state: AdapterState, personalization: str) -> AdapterState:
    return {name: t for name, t in state.items() if is_private(name, personalization)}


def commitment_tensor(commitment: str):
    """A hex sha256 as the uint8 tensor an update's extras carry."""
    import torch

    return torch.tensor(list(bytes.fromhex(commitment)), dtype=torch.uint8)


def expected_extras(extras: AdapterState, personalization: str) -> AdapterState:
    """The extras a round's updates must return: the strategy's (`extras`, as sent) and, with personal adapters, the
    commitment's slot (its name, shape and dtype: what server.validation checks)."""
    if personalization == "none":
        return extras
    import torch

    return {**extras, COMMITMENT: torch.zeros(COMMITMENT_BYTES, dtype=torch.uint8)}


def completed(update: ClientUpdate, global_adapter: AdapterState) -> ClientUpdate:
    """A validated update as the strategies take it: an update that leaves tensors of the global adapter out (fedsa's
    LoRA B) stands for the global adapter with those unchanged; `sent` keeps what the client sent (its file, its
    digest)."""
    if set(update.tensors) == set(global_adapter):
        return update
    return replace(update, tensors={**global_adapter, **update.tensors}, sent=update.as_sent, base=global_adapter)
