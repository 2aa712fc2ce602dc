"""The run's clients and how a round fits them: in this process one by one or batched, in worker processes, split
between client and trunk, or on a Flower fleet. The Flower ClientApp and the split node build their client here too."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

from assembly.build import Prepared, build_model, client_privacy
from assembly.console import configure_logging
from flb.config import Config


@contextlib.contextmanager
def clients_and_fit_all(config: Config, run_dir, prepared: Prepared, fleet):
    """The run's clients and how a round fits them (flb.types.FitAll): the Flower fleet's SuperNodes, or by
    execution.mode in-process clients in turn (sequential) or together (batched), or proxies of clients that train in
    a pool of worker processes (processes; the workers stop when the block ends)."""
    from flb.model.load import base_model_digest
    from server.coordinator import fit_in_turn

    if fleet is not None:
        # under DP every node must join before round 0: who takes part is drawn from every registered client
        joined = config.num_clients if config.uses_dp else config.clients_per_round
        digest = base_model_digest(prepared.model)
        yield fleet.join(run_dir.path.name, config.num_clients, digest, min_joined=joined), fleet.fit_all
    elif config.mode == "split":
        with split_clients_and_fit_all(config, run_dir, prepared) as clients_and_fit:
            yield clients_and_fit
    elif config.execution.mode == "processes":
        with start_workers(config, run_dir, prepared) as pool:
            yield pool.clients, pool.fit_all
    elif config.execution.mode == "batched":
        yield (
            build_clients(config, prepared.shards, prepared.model, prepared.tokenizer, run_dir),
            batched_fit(config, prepared),
        )
    else:
        yield build_clients(config, prepared.shards, prepared.model, prepared.tokenizer, run_dir), fit_in_turn


def build_clients(config: Config, shards: list[list[dict]], model, tokenizer, run_dir) -> list:
    """The in-process clients, sharing one trainer over their shards tokenized together."""
    trainers = client_trainer(config, dict(enumerate(shards)), model, tokenizer, run_dir.path / "work")
    return [build_run_client(config, run_dir, i, shard, model, tokenizer, trainers) for i, shard in enumerate(shards)]


def client_trainer(config: Config, shards: dict[int, list[dict]], model, tokenizer, work_dir: Path):
    """The trainer the clients on `model` share (client.sft.ClientTrainer), over `shards` tokenized at once."""
    from client.sft import ClientTrainer

    return ClientTrainer(
        model,
        tokenizer,
        config.sft,
        {client_id: own_split(config, client_id, shard)[0] for client_id, shard in shards.items()},
        local_steps=config.local_steps,
        work_dir=work_dir,
        use_cpu=config.model.device_map == "cpu",
        seed=config.seed,
        dpo=config.dpo_objective,
    )


def own_split(config: Config, client_id: int, shard: list[dict]) -> tuple[list[dict], list[dict]]:
    """(the records client `client_id` trains on, those it holds out to compare its personal adapter with the global
    one: the last eval.personal_size under strategy.personalization, none otherwise)."""
    if config.strategy.personalization == "none":
        return shard, []
    from client.personal import split_shard

    return split_shard(shard, client_id, config.eval.personal_size)


def build_run_client(config: Config, run_dir, client_id: int, shard: list[dict], model, tokenizer, trainers=None):
    """Client `client_id` of this run: it keeps its secrets in RUN_DIR/private/client_<i>/ and signs with a key made
    for the run in that directory (chain.client_keys fresh; kept there, so --resume signs with it again) or with
    chain.keystore_dir/client_<i>.json (persistent). In-process clients and those in worker processes
    (execution.mode: processes) are built with it."""
    from flb.audit.keystore import client_keystore

    keystore = client_keystore(config.chain, client_id) if config.chain_record else None
    return build_client(
        config,
        client_id,
        shard,
        model,
        tokenizer,
        work_dir=run_dir.path / "work",
        private_dir=run_dir.private_dir(f"client_{client_id}"),
        keystore=keystore,
        trainers=trainers,
    )


def build_client(
    config: Config,
    client_id: int,
    shard: list[dict],
    model,
    tokenizer,
    *,
    work_dir: Path,
    private_dir: Path,
    keystore: Path | None = None,
    trainers=None,
):
    """One SFTClient with its privacy hook, its strategy's local objective and its signing key, on `trainers` (a
    client.sft.ClientTrainer shared with other clients of `model`; None: a trainer of its own); the Flower
    ClientApp builds its client with this."""
    from client.personal import personal_adapter
    from client.sft import SFTClient
    from flb.local_objective import LocalObjective
    from flb.simulation import slowdown

    records, held_out = own_split(config, client_id, shard)
    return SFTClient(
        client_id=client_id,
        records=records,
        model=model,
        tokenizer=tokenizer,
        settings=config.sft,
        local_steps=config.local_steps,
        num_rounds=config.num_rounds,
        seed=config.seed,
        work_dir=work_dir,
        private_dir=private_dir,
        use_cpu=config.model.device_map == "cpu",
        signer=build_signer(config, private_dir, keystore),
        objective=LocalObjective.of(config.strategy),
        trainers=trainers,
        privacy=client_privacy(config, client_id, len(shard)),
        comm=config.comm,
        slowdown=slowdown(config.simulation, client_id),
        dpo=config.dpo_objective,
        rank=client_rank(config, client_id),
        personal=personal_adapter(config, held_out),
    )


def client_rank(config: Config, client_id: int):
    """Client `client_id`'s own LoRA rank under model.lora.client_ranks (with hetlora's self-pruning), or None."""
    from client.ranks import ClientRank

    if config.model.lora.client_ranks is None:
        return None
    pruning = config.strategy.hetlora if config.strategy.lora_aggregation == "hetlora" else None
    return ClientRank(client_id, config.model.lora.rank_of(client_id), pruning)


def build_signer(config: Config, private_dir: Path, keystore: Path | None):
    """The client's signer: its encrypted keystore when given, else a key kept in its private directory."""
    if not config.chain_record:
        return None
    from client.signing import ClientSigner
    from flb.audit.keystore import keystore_password, load_keystore, run_key_account
    from flb.privacy.disclosure import Disclosure

    account = (
        load_keystore(keystore, keystore_password(config.chain.password_env))
        if keystore
        else run_key_account(private_dir)
    )
    return ClientSigner(account=account, disclosure=Disclosure.of(config))


def batched_fit(config: Config, prepared: Prepared):
    """execution.mode: batched: the sampled clients train together on this process's model, as many at once as
    execution.memory_budget_mb holds."""
    from client.batched import BatchedFit
    from flb.scheduler import Admission, budget_bytes

    device = config.model.device_map
    admission = Admission(
        budget_bytes(device, config.execution.memory_budget_mb), limit=config.clients_per_round, device=device
    )
    return BatchedFit(prepared.model, prepared.tokenizer, admission, device)


@contextlib.contextmanager
def start_workers(config: Config, run_dir, prepared: Prepared):
    """execution.mode: processes: execution.workers worker processes on each of execution.devices (or on
    model.device_map), each loading the model and building clients as this process would (client.workers), until
    the block ends. Every client is built once in a worker before round 0; this process builds none."""
    from client.workers import WorkerPool

    with WorkerPool(
        load_model=functools.partial(build_worker_model, config),
        build_clients=functools.partial(build_worker_clients, config, run_dir),
        shards=prepared.shards,
        devices=config.execution.devices or [config.model.device_map],
        workers_per_device=config.execution.workers,
        memory_budget_mb=config.execution.memory_budget_mb,
        broadcast_compression=config.comm.broadcast_compression,
    ) as pool:
        pool.align_adapter(prepared.model)
        yield pool


def build_worker_model(config: Config, device: str):
    """A worker process's tokenizer and model on `device` (its own name for it); its logging set up as here."""
    configure_logging()
    return build_model(on_device(config, device))


def build_worker_clients(config: Config, run_dir, device: str, shards: dict[int, list[dict]], model, tokenizer):
    """Clients in a worker process (client id -> client), sharing one trainer over the worker's model: its first
    clients' shards (its share, before round 0) are tokenized in one pass, a client added later alone."""
    config = on_device(config, device)
    trainers = _WORKER_TRAINERS.get(id(model))
    if trainers is None:
        trainers = _WORKER_TRAINERS[id(model)] = client_trainer(config, shards, model, tokenizer, run_dir.path / "work")
    return {i: build_run_client(config, run_dir, i, shard, model, tokenizer, trainers) for i, shard in shards.items()}


_WORKER_TRAINERS: dict[int, object] = {}  # a worker process's model (one per worker) -> its clients' trainer


def on_device(config: Config, device: str) -> Config:
    import dataclasses

    return dataclasses.replace(config, model=dataclasses.replace(config.model, device_map=device))


@contextlib.contextmanager
def split_clients_and_fit_all(config: Config, run_dir, prepared: Prepared):
    """mode split: the trunk server on this process's model and the clients, in this process (split.channel
    in_process) or in their own processes over gRPC (loopback: started here; grpc: python -m client.split_node)."""
    from flb.model.sft_settings import round_learning_rate, sft_config
    from server.split_trunk import TrunkServer

    args = sft_config(
        config.sft,
        max_steps=config.local_steps,
        output_dir=run_dir.path / "work" / "trunk",
        use_cpu=config.model.device_map == "cpu",
        seed=config.seed,
    )
    trunk = TrunkServer(
        prepared.model,
        prepared.split_plan,
        args,
        config.local_steps,
        functools.partial(round_learning_rate, config.sft, num_rounds=config.num_rounds),
        config.seed,
        shared=config.split.trunk == "shared",
    )
    if config.split.channel == "in_process":
        yield (
            [
                split_client(config, prepared.split_plan, inner, trunk.handle)
                for inner in build_clients(config, prepared.shards, prepared.model, prepared.tokenizer, run_dir)
            ],
            trunk,
        )
    else:
        from server.split_hub import SplitHub

        with SplitHub(trunk, config, run_dir.path.name) as hub:
            yield hub.join(), hub


def split_client(config: Config, plan, inner, send):
    """A client.split_client.SplitClient around the SFTClient `inner`, talking to the trunk server through `send`."""
    from client.split_client import ActivationNoise, SplitClient
    from flb.split.cut import SplitChannel

    return SplitClient(
        inner,
        plan,
        SplitChannel(send),
        ActivationNoise(config.split.activation_noise, config.split.activation_clip),
        personal=config.split.client_parts == "personal",
    )
