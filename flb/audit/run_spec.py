"""The run spec: the rules a run is checked by, anchored on chain before round 0 (docs/audit-spec.md, section 2.5).

It is the part of the resolved config.json that decides what a round must be (the strategy with every parameter,
the LoRA aggregation, the server's and the clients' DP settings, the scoring formula, the client sampling rule, how
updates and the global adapter are compressed, and the split), with the keys --resume --set may change (operational
ones) left out. A verifier reads the rules from config.json only after checking its run spec digest against the
chain, so no later edit of the file can switch recomputation off or change a formula.
"""

from __future__ import annotations

from flb.audit.digests import json_digest

# Top-level keys and dotted paths of config.json that the run spec holds, whole.
RUN_SPEC_KEYS = (
    "mode",
    "seed",
    "num_clients",
    "clients_per_round",
    "strategy",
    "server",
    "client",
    "chain.scoring",
    "chain.record_participants",
    "comm.compression",
    "comm.broadcast_compression",
    "comm.topk_fraction",
    "split.head_layers",
    "split.tail_layers",
    "split.trunk",
    "split.client_parts",
    "split.activation_noise",
    "split.activation_clip",
)
# Inside those, what --resume --set may change: neither decides what a recorded round holds.
NOT_RULES = (
    "server.max_client_failures",
    "server.round_deadline_s",
    "server.min_fit_fraction",
    "client.dp.allow_over_target",
)


def run_spec(config: dict) -> dict:
    """The run spec of a resolved config (config.json's content): a nested dict of RUN_SPEC_KEYS less NOT_RULES.
    A key the config does not have is left out."""
    spec: dict = {}
    for path in RUN_SPEC_KEYS:
        value = _get(config, path)
        if value is not _MISSING:
            _put(spec, path, value)
    for path in NOT_RULES:
        parent = _get(spec, path.rpartition(".")[0])
        if isinstance(parent, dict):
            parent.pop(path.rpartition(".")[2], None)
    return spec


def run_spec_digest(config: dict) -> str:
    """Hex sha256 of the run spec as canonical JSON (flb.audit.digests.json_digest): what the contract anchors."""
    return json_digest(run_spec(config))


_MISSING = object()


def _get(tree: dict, path: str):
    for part in path.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _MISSING
        tree = tree[part]
    return tree


def _put(tree: dict, path: str, value) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value
