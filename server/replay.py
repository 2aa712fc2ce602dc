"""Each round's aggregate again, from the published updates and under the rules the chain anchors: what
`python -m chain.explorer RUN --verify --recompute` compares with the recorded global digests (docs/audit-spec.md,
section 5).

The strategy is built from the run's config.json (whose run spec digest the verifier has checked against the chain)
and driven exactly as the coordinator drives it: round after round from round 1, so a stateful strategy (the FedOpt
family's moments, SCAFFOLD's control variate) carries its state, each round starting from the previous recorded
global adapter, the updates in the chain's order (decoded as comm.compression says, from the global adapter each
started from: the previous one, or under fedbuff the one of its recorded start round),
weighed by their on-chain example counts (all alike where counts are not published), and the aggregate put through
comm.broadcast_compression as the clients received it. Rounds whose aggregate depends on a secret cannot be
replayed, and say why.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from flb.adapters.compression import as_received, open_update
from flb.adapters.ranks import padded
from flb.audit.digests import EXTRAS_PREFIX
from flb.types import AdapterState, ClientUpdate

SERVER_NOISE = "server DP: the server's noise is secret"
SPLIT_TRUNK = "mode split: the trunk is trained on the server from hidden states, not aggregated from updates"


# One recorded round with clients, as the verifier read it: its number, the previous global adapter (its file checked
# against the chain) and per update, in the chain's order: its file content, its on-chain example count, the round
# whose global adapter it started from and that adapter (the previous round and adapter but under fedbuff).
PublishedRound = tuple[int, AdapterState, list[tuple[AdapterState, int, int, AdapterState]]]


def not_replayable(config: dict) -> str | None:
    """Why no round of a run with this config can be recomputed from its published updates, or None."""
    from flb.config import STRATEGIES

    if config.get("mode") == "split":
        return SPLIT_TRUNK
    spec = STRATEGIES.get(config["strategy"]["name"])
    if spec is not None and spec.dp:
        return SERVER_NOISE
    return None


def replay(config: dict, rounds: Iterable[PublishedRound]) -> Iterator[tuple[int, AdapterState]]:
    """(round, recomputed global adapter) for every round given, in order (rounds without clients are not given:
    the coordinator does not aggregate them). Call only when not_replayable(config) is None."""
    from flb.config import config_from_dict
    from flb.privacy.disclosure import Disclosure
    from flb.privacy.secret_random import SecretRandom
    from server.strategy import build_strategy

    settings = config_from_dict(config)
    strategy = build_strategy(settings, SecretRandom())  # no draw: the strategies replayed here are deterministic
    counts_published = Disclosure.of(settings).publish_num_examples
    for number, previous, published in rounds:
        updates = [
            _update(position, start + 1, content, count if counts_published else 1, base, previous, settings)
            for position, (content, count, start, base) in enumerate(published)
        ]
        aggregate = strategy.aggregate(previous, updates, number, len(updates))
        yield number, as_received(settings.comm.broadcast_compression, aggregate)


def _update(
    position: int,
    round: int,
    content: AdapterState,
    num_examples: int,
    base: AdapterState,
    previous: AdapterState,
    settings,
) -> ClientUpdate:
    """A published update as the strategy sees it: sent for `round` from `base`, its adapter (decoded from what the
    client sent, under comm.compression, from `base`), its extras (SCAFFOLD's delta c_i) and its weight; a client's of
    a lower rank (model.lora.client_ranks: its `base` is the global adapter at its rank) padded with zero components
    to the rank of `previous`, as the coordinator pads it. MalformedPayload for one that does not decode."""
    sent = {name: t for name, t in content.items() if not name.startswith(EXTRAS_PREFIX)}
    extras = {name.removeprefix(EXTRAS_PREFIX): t for name, t in content.items() if name.startswith(EXTRAS_PREFIX)}
    return ClientUpdate(
        client_id=position,
        round=round,
        # an update that leaves tensors out (fedsa's LoRA B, kept by its client) stands for `base` with those unchanged
        tensors={**base, **padded(open_update(settings.comm.compression, sent, base), previous)},
        num_examples=num_examples,
        train_loss=None,
        wall_time_s=0.0,
        num_bytes=0,
        digest="",
        extras=extras,
        base=padded(base, previous),
    )
