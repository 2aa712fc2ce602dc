"""Strategies by name. flb.config.STRATEGIES is the one registry: a name, its settings, what it can do; the strategy
itself is `build(context)` in server/strategy/<name>.py. Wrappers (norm bounding and the DP strategies) bound the
updates, then aggregate with the strategy `strategy.wraps` names; `--use_server_dp=true` selects dp_fixed_clipping."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from flb.config import STRATEGIES, Config
from flb.privacy.secret_random import SecretRandom
from server.strategy.base import BuildContext, Strategy


def builder(name: str) -> Callable[[BuildContext], Strategy]:
    """`build` of server/strategy/<name>.py, for a registered `name`."""
    spec = STRATEGIES[name]  # a KeyError for a module that is not registered: the registry is the one list
    return importlib.import_module(f"{__name__}.{spec.name}").build


def build_strategy(config: Config, random: SecretRandom) -> Strategy:
    """The configured strategy; DP strategies draw their noise from `random`, the server's secret generator."""
    inner = builder(config.strategy.wraps)(BuildContext(config, random)) if config.strategy.spec.wraps else None
    return builder(config.strategy.name)(BuildContext(config, random, inner))
