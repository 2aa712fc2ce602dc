"""Shared fixtures: a tiny random Llama with SmolLM2's real tokenizer, saved as a local model dir."""

from __future__ import annotations

import os

import pytest

from tests.flower_loopback import FLOWER_RUN
from tests.tiny_model import save_tiny_llama, tiny_run_overrides

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """2 layers, hidden 64: one LoRA step takes well under a second; the tokenizer is SmolLM2's own."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def flower_reference_run(tiny_model_dir, tmp_path_factory):
    """The in-process run of the Flower loopback tests' config (tiny_run_overrides + FLOWER_RUN): its run
    directory. test_flower_secure.py compares its Flower run with it."""
    import assembly
    from flb.config import load_config

    overrides = tiny_run_overrides(tiny_model_dir, tmp_path_factory.mktemp("in-process") / "runs") + FLOWER_RUN
    return assembly.run(load_config(None, overrides))


@pytest.fixture
def flower_task(monkeypatch):
    """Flower's Message needs the identity a ServerApp process would have; set it for one test only."""
    from flwr.supercore.task_identity import TaskIdentity

    for attribute, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attribute, value)


@pytest.fixture
def run_and_resume_after_round_1(tmp_path):
    """run(overrides) -> (the whole run, a copy of its directory as it stood after round 1 resumed to the end): the
    copy holds every party's secrets and the strategy's state as they were, so both must end alike."""
    from flb.config import load_config
    from tests.snapshots import run_and_resume_after_round_1 as run_and_resume

    return lambda overrides: run_and_resume(load_config(None, overrides), tmp_path / "after-round-1")


@pytest.fixture(scope="session")
def one_round_run(tiny_model_dir, tmp_path_factory):
    """A finished 1-round run of the tiny model (no chain), tracked in TensorBoard and MLflow. Shared: tests that
    change it work on a copy."""
    import assembly
    from flb.config import load_config

    overrides = [
        f"model.model_path={tiny_model_dir}",
        f"output_dir={tmp_path_factory.mktemp('runs')}",
        "num_clients=2",
        "clients_per_round=2",
        "num_rounds=1",
        "local_steps=1",
        "eval.size=8",
        "eval.max_new_tokens=2",
        "sft.max_length=96",
        "chain_record=false",
        "tracking.backends=[tensorboard,mlflow]",
    ]
    return assembly.run(load_config(None, overrides))


@pytest.fixture
def tiny_overrides(tiny_model_dir, tmp_path):
    """--set overrides for a fast federated run on the tiny model."""
    return tiny_run_overrides(tiny_model_dir, tmp_path / "runs")


# The files that start Flower federations: their round time-outs are sized for one federation at a time on 2 cores
FLOWER_FILES = ("tests/test_flower.py", "tests/test_flower_secure.py")


@pytest.hookimpl(optionalhook=True)  # a run without pytest-xdist (one file, by hand) does not know the hook
def pytest_xdist_make_scheduler(config, log):
    """tests/run.sh's two workers (pytest-xdist, --dist loadfile): each file's tests on one worker, so its module
    fixtures are built once, and the Flower files together on one, back to back, while the other works through the
    rest. (xdist's loadgroup would say this with marks, but it does not group under pytest 9.)"""
    from xdist.scheduler import LoadFileScheduling

    class FlowerTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return "flower" if scope in FLOWER_FILES else scope

    return FlowerTogether(config, log) if config.getvalue("dist") == "loadfile" else None


def pytest_collection_modifyitems(config, items):
    """The Flower files first: the longest unit of work starts at once instead of ending the run."""
    items.sort(key=lambda item: str(item.path.relative_to(config.rootpath)) not in FLOWER_FILES)  # stable
