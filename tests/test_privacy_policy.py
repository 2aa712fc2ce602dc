"""A node's privacy pin (client/privacy_policy.py): every way a server's client settings can weaken it is refused,
naming the key; equal and stronger settings are accepted."""

import pytest

from assembly.build import client_privacy
from client.privacy_policy import PrivacyPolicy, weakening
from flb.config import load_config
from flb.errors import ConfigError

EXAMPLES = 1000  # delta stays well below 1/n
UPDATE_Z1 = PrivacyPolicy(mechanism="update", noise_multiplier=1.0)
UPDATE_EPS4 = PrivacyPolicy(mechanism="update", target_epsilon=4.0)


def sent(*overrides: str):
    """The run config a server sends: local DP on (update, z = 1, C = 1, add_remove, delta 1e-5) unless overridden."""
    return load_config(None, ["client.local_dp=true", "client.dp.noise_multiplier=1.0", *overrides])


def planned(config):
    """The privacy hook a client of `config` with EXAMPLES records trains with."""
    return client_privacy(config, 0, EXAMPLES)


def refused_key(policy: PrivacyPolicy, *overrides: str) -> str | None:
    config = sent(*overrides)
    found = weakening(policy, config, planned(config))
    return found and found.key


@pytest.mark.parametrize(
    "policy, overrides, key",
    [
        (UPDATE_Z1, ["client.local_dp=false"], "client.local_dp"),
        (UPDATE_Z1, ["client.dp.mode=dpsgd"], "client.dp.mode"),
        (PrivacyPolicy(mechanism="dpsgd", noise_multiplier=1.0), [], "client.dp.mode"),
        (UPDATE_Z1, ["client.dp.noise_multiplier=0.99"], "client.dp.noise_multiplier"),
        (UPDATE_Z1, ["client.dp.noise_multiplier=0"], "client.dp.noise_multiplier"),
        # noise std 2 on sensitivity 4: a larger C with less noise relative to it
        (UPDATE_Z1, ["client.dp.clip_norm=4", "client.dp.noise_multiplier=0.5"], "client.dp.noise_multiplier"),
        (UPDATE_Z1, ["client.dp.noise_multiplier=null", "client.dp.target_epsilon=50"], "client.dp.noise_multiplier"),
        (UPDATE_Z1, ["client.dp.delta=2e-5"], "client.dp.delta"),
        (PrivacyPolicy(mechanism="update", noise_multiplier=1.0, adjacency="replace"), [], "client.dp.adjacency"),
        (UPDATE_EPS4, ["client.dp.noise_multiplier=null", "client.dp.target_epsilon=4.5"], "client.dp.target_epsilon"),
        (UPDATE_EPS4, ["client.dp.noise_multiplier=1.0"], "client.dp.target_epsilon"),  # z = 1 spends ~8.6 in 2 rounds
        (
            UPDATE_EPS4,
            [
                "client.dp.noise_multiplier=null",
                "client.dp.target_epsilon=4",
                "num_rounds=3",
                "client.dp.allow_over_target=true",
            ],
            "client.dp.allow_over_target",
        ),
        (
            PrivacyPolicy(mechanism="dpsgd", target_epsilon=4.0),
            ["client.dp.mode=dpsgd", "client.dp.noise_multiplier=1.0", "sft.batch_size=500"],
            "client.dp.target_epsilon",
        ),
    ],
    ids=[
        "local-dp-off",
        "other-mechanism",
        "dpsgd-pinned",
        "lower-z",
        "no-noise",
        "larger-clip-less-noise",
        "z-planned-for-large-epsilon",
        "higher-delta",
        "replace-to-add-remove",
        "higher-target-epsilon",
        "fixed-z-over-budget",
        "over-target-allowed",
        "larger-sample-rate",
    ],
)
def test_each_weakening_is_refused_naming_its_key(policy, overrides, key):
    assert refused_key(policy, *overrides) == key


@pytest.mark.parametrize(
    "policy, overrides",
    [
        (UPDATE_Z1, []),
        (UPDATE_Z1, ["client.dp.noise_multiplier=3"]),
        (UPDATE_Z1, ["client.dp.clip_norm=10"]),  # the noise std grows with C: same z, same guarantee
        (UPDATE_Z1, ["client.dp.delta=1e-7", "client.dp.adjacency=replace"]),
        (PrivacyPolicy(mechanism="update", noise_multiplier=1.0, adjacency="replace"), ["client.dp.adjacency=replace"]),
        (UPDATE_EPS4, ["client.dp.noise_multiplier=null", "client.dp.target_epsilon=4"]),
        (UPDATE_EPS4, ["client.dp.noise_multiplier=null", "client.dp.target_epsilon=1"]),
        (UPDATE_EPS4, ["client.dp.noise_multiplier=null", "client.dp.target_epsilon=4", "client.dp.adjacency=replace"]),
        (UPDATE_EPS4, ["client.dp.noise_multiplier=null", "client.dp.target_epsilon=4", "num_rounds=20"]),
        (UPDATE_EPS4, ["client.dp.noise_multiplier=5"]),
        (
            PrivacyPolicy(mechanism="dpsgd", target_epsilon=4.0),
            [
                "client.dp.mode=dpsgd",
                "client.dp.noise_multiplier=null",
                "client.dp.target_epsilon=4",
                "sft.batch_size=500",
            ],
        ),
    ],
    ids=[
        "equal",
        "more-noise",
        "larger-clip-same-z",
        "lower-delta-and-replace",
        "replace-kept",
        "equal-target",
        "lower-target",
        "target-under-replace",
        "target-over-more-rounds",
        "fixed-z-within-budget",
        "dpsgd-target",
    ],
)
def test_equal_or_stronger_settings_are_accepted(policy, overrides):
    assert refused_key(policy, *overrides) is None


def test_the_refusal_names_the_key_the_nodes_value_and_the_servers():
    config = sent("client.dp.noise_multiplier=0.5")
    found = weakening(UPDATE_Z1, config, planned(config))
    assert str(found) == (
        "client.dp.noise_multiplier: this node pins at least 1 (dp-noise-multiplier), the server "
        "sends 0.5; this node does not train with weaker privacy than its node config pins"
    )


def test_the_noise_compared_is_the_one_the_client_keeps_not_the_one_the_config_shows():
    """A client built under a weak config keeps that z in its private state; a config that looks strong does not
    hide it."""
    weak, strong = sent("client.dp.noise_multiplier=0.3"), sent("client.dp.noise_multiplier=2")
    restored = planned(strong)
    restored.restore(planned(weak).state_dict(), rounds_done=0)
    found = weakening(UPDATE_Z1, strong, restored)
    assert found.key == "client.dp.noise_multiplier"
    assert found.server == "2, but the client's private state for this run keeps z = 0.3"


def test_the_epsilon_compared_includes_what_the_client_already_spent():
    """Two rounds already spent at z = 0.5 count: z = 5 for the two rounds left does not bring the run under the
    target (4 rounds at z = 5 alone would)."""
    import torch

    from flb.privacy.secret_random import SecretRandom

    config = sent("client.dp.noise_multiplier=5", "num_rounds=4")
    spent = planned(sent("client.dp.noise_multiplier=0.5", "num_rounds=4"))
    adapter, random = {"w": torch.zeros(2)}, SecretRandom()
    for _ in range(2):
        spent.privatize(adapter, adapter, random)
    restored = planned(config)
    restored.restore({**spent.state_dict(), "noise_multiplier": 5.0}, rounds_done=2)
    assert weakening(UPDATE_EPS4, config, restored).key == "client.dp.target_epsilon"
    assert weakening(UPDATE_EPS4, config, planned(config)) is None


def test_a_node_config_pins_its_policy_with_dp_keys():
    node = {
        "partition-id": 0,
        "dp-mechanism": "update",
        "dp-noise-multiplier": 1,
        "dp-target-epsilon": "8",
        "dp-delta": 1e-6,
        "dp-adjacency": "replace",
    }
    assert PrivacyPolicy.from_node_config(node) == PrivacyPolicy(
        mechanism="update", noise_multiplier=1.0, target_epsilon=8.0, delta=1e-6, adjacency="replace"
    )
    assert PrivacyPolicy.from_node_config({"partition-id": 0}) is None
    assert PrivacyPolicy.from_node_config({"dp-mechanism": "dpsgd", "dp-target-epsilon": 2}).delta == 1e-5


@pytest.mark.parametrize(
    "node, message",
    [
        ({"dp-noise-multiplier": 1.0}, "node config dp-mechanism: required"),
        (
            {"dp-mechanism": "update"},
            "node config dp-noise-multiplier: invalid value None; allowed: a number >= 0, or set dp-target-epsilon",
        ),
        (
            {"dp-mechanism": "gaussian", "dp-noise-multiplier": 1.0},
            "node config dp-mechanism: invalid value 'gaussian'",
        ),
        (
            {"dp-mechanism": "update", "dp-noise-multiplier": "lots"},
            "node config dp-noise-multiplier: invalid value 'lots'",
        ),
        ({"dp-mechanism": "update", "dp-target-epsilon": 0}, "node config dp-target-epsilon: invalid value 0.0"),
        (
            {"dp-mechanism": "update", "dp-noise-multiplier": 1.0, "dp-delta": 1},
            "node config dp-delta: invalid value 1.0",
        ),
        (
            {"dp-mechanism": "update", "dp-noise-multiplier": 1.0, "dp-clip-norm": 1.0},
            "node config dp-clip-norm: unknown key",
        ),
        (
            {"dp-mechanism": "dpsgd", "dp-noise-multiplier": 1.0, "dp-adjacency": "replace"},
            "node config dp-adjacency: invalid value 'replace'; allowed: add_remove with dp-mechanism dpsgd",
        ),
    ],
)
def test_a_malformed_pin_is_a_node_config_error(node, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PrivacyPolicy.from_node_config(node)
