"""execution.mode batched: clients trained together give the updates they get trained one by one."""

from __future__ import annotations

from pathlib import Path

import pytest

import assembly
from client import batched
from flb.config import load_config
from flb.model.load import get_adapter_state
from flb.scheduler import Admission
from tests.tiny_model import tiny_run_overrides


def build(overrides: list[str], work: Path, extra=()):
    """The prepared model and three in-process clients (fp32, LoRA dropout 0), and the initial global adapter."""
    config = load_config(None, overrides + ["num_clients=3", "clients_per_round=3", *extra])
    prepared = assembly.prepare(config)
    clients = [
        assembly.build_client(
            prepared.config,
            i,
            shard,
            prepared.model,
            prepared.tokenizer,
            work_dir=work / "work",
            private_dir=work / f"private_{i}",
        )
        for i, shard in enumerate(prepared.shards)
    ]
    return prepared, clients, get_adapter_state(prepared.model)


@pytest.fixture(scope="module")
def trio(tiny_model_dir, tmp_path_factory):
    """build() on the tiny run's config, shared by the tests that only train round 1 (a round run again starts from
    the same secret state, so each test sees the same clients)."""
    work = tmp_path_factory.mktemp("batched")
    return build(tiny_run_overrides(tiny_model_dir, work / "runs"), work)


def largest_difference(first, second) -> float:
    return max((first.tensors[name] - second.tensors[name]).abs().max().item() for name in first.tensors)


def largest_move(update, start) -> float:
    return max((update.tensors[name] - start[name]).abs().max().item() for name in start)


@pytest.mark.parametrize(
    "extra",
    [
        [],
        # FedProx's gradient term, two micro-batches per optimizer step (each client's loss normalised over both),
        # gradient clipping that binds, FFA's frozen A
        [
            "strategy.name=fedprox",
            "strategy.fedprox.mu=0.5",
            "strategy.lora_aggregation=ffa",
            "sft.training_arguments={gradient_accumulation_steps: 2, max_grad_norm: 0.05}",
        ],
    ],
    ids=["adamw", "fedprox-accumulation-clipping-ffa"],
)
def test_batched_updates_equal_sequential_ones(tiny_overrides, tmp_path, trio, extra):
    """In fp32 the two differ by float summation order only (AdamW's division by sqrt(v) amplifies it: 1.8e-5 seen on
    an AMD EPYC): at most 1e-4 on any LoRA weight, where the updates move weights by ~3e-2 (3 AdamW steps of 1e-2),
    and the same training loss within 1e-5."""
    prepared, clients, start = build(tiny_overrides, tmp_path, extra) if extra else trio
    sequential = [client.fit(start, 1, {}) for client in clients]
    together = batched.train_together(clients, prepared.model, prepared.tokenizer, start, 1, {})
    assert [u.client_id for u in together] == [0, 1, 2]
    for one, other in zip(sequential, together):
        assert largest_move(one, start) > 1e-3
        assert largest_difference(one, other) < 1e-4
        assert one.train_loss == pytest.approx(other.train_loss, abs=1e-5)
        assert one.num_examples == other.num_examples
    assert largest_difference(sequential[0], sequential[1]) > 1e-3  # each client got its own data and adapter
    if extra:
        assert all(torch_equal(u.tensors, start, "lora_A") for u in together)


def torch_equal(tensors, start, part: str) -> bool:
    return all((tensors[name] == start[name]).all() for name in start if part in name)


def test_a_clients_update_does_not_depend_on_its_group(trio):
    """Bitwise: what makes a resumed batched run end where the uninterrupted one does, whatever groups the
    scheduler formed in each."""
    prepared, clients, start = trio
    grouped = batched.train_together(clients, prepared.model, prepared.tokenizer, start, 1, {})
    alone = batched.train_together(clients[1:2], prepared.model, prepared.tokenizer, start, 1, {})
    assert alone[0].digest == grouped[1].digest


def spy_on_groups(monkeypatch, fail_when=lambda group: False):
    """Record every group train_together is asked to train; raise out of memory for groups `fail_when` picks."""
    groups, train = [], batched.train_together

    def recorded(clients, *args):
        groups.append([c.client_id for c in clients])
        if fail_when(clients):
            raise RuntimeError("CPU out of memory: tried to allocate 2 GB (injected)")
        return train(clients, *args)

    monkeypatch.setattr(batched, "train_together", recorded)
    return groups


def test_the_budget_bounds_each_group(trio, monkeypatch):
    """A budget of 2.5 times the first client's measured peak: groups of at most two after the first client alone."""
    prepared, clients, start = trio
    monkeypatch.setattr(batched, "peak_memory", peak_of(100))
    groups = spy_on_groups(monkeypatch)
    fit = batched.BatchedFit(prepared.model, prepared.tokenizer, Admission(250, limit=3, device="cpu"), "cpu")
    updates = fit(clients, start, 1, {})
    assert groups == [[0], [1, 2]]
    fit = batched.BatchedFit(prepared.model, prepared.tokenizer, Admission(150, limit=3, device="cpu"), "cpu")
    groups.clear()
    assert [u.digest for u in fit(clients, start, 1, {})] == [u.digest for u in updates]
    assert groups == [[0], [1], [2]]


def test_a_group_whose_turn_comes_after_the_deadline_is_late(trio, monkeypatch):
    """The first client trains alone (the admission measures it), by when a deadline already past has closed the
    round with the one update it needs: the other two do not train."""
    import time

    from flb.errors import ClientLate
    from flb.types import RoundDeadline

    prepared, clients, start = trio
    groups = spy_on_groups(monkeypatch)
    fit = batched.BatchedFit(prepared.model, prepared.tokenizer, Admission(10**12, limit=3, device="cpu"), "cpu")
    results = fit(clients, start, 1, {}, RoundDeadline(time.monotonic(), needed=1))
    assert groups == [[0]]
    assert not isinstance(results[0], Exception)
    assert [str(r) for r in results[1:]] == [
        f"client {i}: the round closed at its deadline before its turn to train" for i in (1, 2)
    ]
    assert all(isinstance(r, ClientLate) for r in results[1:])


def peak_of(group_bytes: int):
    """flb.scheduler.peak_memory measuring `group_bytes` for any group."""
    import contextlib

    from flb.scheduler import Peak

    @contextlib.contextmanager
    def peak_memory(device):
        peak = Peak()
        yield peak
        peak.bytes = group_bytes

    return peak_memory


def test_out_of_memory_is_retried_with_smaller_groups(trio, monkeypatch, caplog):
    prepared, clients, start = trio
    groups = spy_on_groups(monkeypatch, fail_when=lambda group: len(group) > 1)
    fit = batched.BatchedFit(prepared.model, prepared.tokenizer, Admission(10**12, limit=3, device="cpu"), "cpu")
    with caplog.at_level("WARNING"):
        updates = fit(clients, start, 1, {})
    assert groups == [[0], [1, 2], [1], [2]]
    assert all(not isinstance(u, Exception) for u in updates)
    assert "out of memory on cpu with 3 at once; retrying with 1 at once" in caplog.text


def test_a_failing_client_fails_alone(trio, monkeypatch):
    """A group that fails for another reason is retried one client at a time: only the client at fault fails."""
    prepared, clients, start = trio
    groups = spy_on_groups(monkeypatch)
    broken = clients[1].trainer

    def fails(*args, **kwargs):
        raise ValueError("client 1's data loader broke")

    monkeypatch.setattr(broken, "get_train_dataloader", fails)
    fit = batched.BatchedFit(prepared.model, prepared.tokenizer, Admission(10**12, limit=3, device="cpu"), "cpu")
    fit.admission.measured(1)  # all three at once from the start
    results = fit(clients, start, 1, {})
    assert groups == [[0, 1, 2], [0], [1], [2]]
    assert isinstance(results[1], ValueError)
    assert not isinstance(results[0], Exception) and not isinstance(results[2], Exception)
