"""One whole run: prepare, open the run directory and the ledger, train the rounds, finish with the final adapter and
the summary; and what a stopped run left."""

from __future__ import annotations

import functools
import gc
import logging
from pathlib import Path

from assembly.build import Prepared, open_ledger, prepare
from assembly.clients import clients_and_fit_all
from assembly.console import logging_to
from flb.config import Config
from flb.errors import ConfigError, RunFailed

log = logging.getLogger("flb")


def run(
    config: Config, resume: str | None = None, export_merged: bool = False, fleet=None, verbose: bool = False
) -> Path:
    """One whole run. `fleet` (the Flower ServerApp's) supplies clients on other machines and how to fit them;
    without it the clients train on this machine as execution.mode says. Raises RunFailed (after saving what was
    done) when a client crashes, every round is skipped or a ledger record cannot be sent, and
    flb.run.stop.StopRequested naming the run directory when a stop signal came."""
    from flb.run.directory import RunDir
    from flb.run.stop import StopRequested

    if fleet is not None and config.execution.mode != "sequential":
        raise ConfigError(
            f"execution.mode: {config.execution.mode} does not apply to a Flower run (each SuperNode "
            "trains its own client); leave execution.mode sequential"
        )
    if fleet is not None and config.strategy.personalization != "none":
        raise ConfigError(
            f"strategy.personalization: {config.strategy.personalization} does not run on Flower's deployment engine "
            "yet (its train reply carries no personal losses); run main_simple_fl.py or set "
            "strategy.personalization=none"
        )
    if fleet is not None and config.mode == "split":
        raise ConfigError(
            "mode: split does not run on Flower's deployment engine; use split.channel grpc (python -m "
            "client.split_node on each client machine) or run Flower with mode federated"
        )
    if resume and finished_already(resume, config.num_rounds):
        return RunDir.open(resume).path
    remote_split = config.mode == "split" and config.split.channel != "in_process"
    prepared = prepare(config, export_merged, in_process_clients=fleet is None and not remote_split)
    config = prepared.config
    run_dir = RunDir.open(resume) if resume else RunDir.create(config.output_dir, config.to_dict())
    try:
        run_in(run_dir, config, resume, prepared, fleet, export_merged, verbose)
    except StopRequested as stop:
        stop.run_dir = run_dir.path
        raise
    return run_dir.path


def run_in(
    run_dir, config: Config, resume: str | None, prepared: Prepared, fleet, export_merged: bool, verbose: bool
) -> None:
    """The run in `run_dir`, from round 0 or resumed, to its final adapter and printed summary."""
    from flb.run.lock import RunLock
    from flb.run.notify import round_notifications
    from flb.run.tracking import each_round, experiment_tracking

    with (
        RunLock(run_dir.path),
        logging_to(run_dir.path / "run.log"),
        experiment_tracking(config.tracking, run_dir.path, config.to_dict()) as tracking,
    ):
        checkpoint = None
        if resume:
            checkpoint = run_dir.read_checkpoint()
            run_dir.record_resume(config.to_dict())
        log.info("run directory: %s", run_dir.path)
        ledger = open_ledger(config, run_dir.path, prepared.model.peft_config["default"])
        tracking.follow(ledger)
        try:
            with round_notifications(config.notify, run_dir.path.name, config.num_rounds, ledger) as on_round:
                global_adapter = train(
                    config, run_dir, checkpoint, prepared, ledger, fleet, each_round(on_round, tracking.on_round)
                )
        finally:
            ledger_problem = ledger.close()
        finish(config, run_dir, prepared, global_adapter, ledger, export_merged, verbose)
        if ledger_problem:
            raise RunFailed(ledger_problem)


def finished_already(resume: str, num_rounds: int) -> bool:
    """--resume of a run that has finished all its rounds (as many as num_rounds, or more) says so in one line and does
    nothing else: the state asked for is there, so it is not an error (exit 0, as a second `make` is)."""
    from flb.run.directory import RunDir

    done = RunDir.open(resume).finished_rounds()
    if done is None or done < num_rounds:
        return False
    print(
        f"nothing to do: {resume} finished all its {done} rounds; extend it with --resume {resume} --set "
        f"num_rounds=N (N > {done})"
    )
    return True


def train(config: Config, run_dir, checkpoint: dict | None, prepared: Prepared, ledger, fleet, on_round):
    """The clients and the round coordinator, from round 0 or from `checkpoint`; the final global adapter. `on_round`
    hears of every completed round (flb.run.notify)."""
    with clients_and_fit_all(config, run_dir, prepared, fleet) as (clients, fit_all):
        return coordinate(config, run_dir, checkpoint, prepared, ledger, clients, fit_all, on_round)


def coordinate(
    config: Config, run_dir, checkpoint: dict | None, prepared: Prepared, ledger, clients: list, fit_all, on_round
):
    """The round coordinator over `clients`, fitting them with `fit_all`, from round 0 or from `checkpoint`; the final
    global adapter."""
    from flb.model.load import get_adapter_state
    from flb.model.sft_settings import round_learning_rate
    from flb.privacy.disclosure import Disclosure
    from flb.run.comm import CommTracker
    from flb.simulation import with_dropouts
    from server.coordinator import RoundCoordinator
    from server.evaluation import Evaluator

    model, plan = prepared.model, prepared.split_plan
    host = getattr(fit_all, "__self__", None)  # the worker pool or the Flower fleet whose method fit_all is, if any
    if ledger.signing_domain is not None:
        for client in clients:
            client.bind_ledger(ledger.signing_domain)
    evaluator = Evaluator(
        model=model,
        tokenizer=prepared.tokenizer,
        records=prepared.eval_records,
        settings=config.eval,
        sft=config.sft,
        work_dir=run_dir.path / "work",
        suites=prepared.suites,
        use_cpu=config.model.device_map == "cpu",
        dpo=config.dpo_objective,
    )
    coordinator = RoundCoordinator(
        clients=clients,
        strategy=prepared.strategy,
        evaluate=evaluator.evaluate,
        ledger=ledger,
        run=run_dir,
        peft_config=model.peft_config["default"],
        clients_per_round=config.clients_per_round,
        min_clients=config.server.min_clients,
        seed=config.seed,
        disclosure=Disclosure.of(config),
        random=prepared.server_random,
        secret_sampling=config.uses_dp,
        max_update_norm=config.server.max_update_norm,
        max_client_failures=config.server.max_client_failures,
        round_deadline_s=config.server.round_deadline_s,
        min_fit_fraction=config.server.min_fit_fraction,
        lora_a_frozen=config.strategy.lora_a_frozen,
        client_rank=config.model.lora.rank_of if config.model.lora.client_ranks else None,
        update_compression=config.comm.compression,
        personalization=config.strategy.personalization,
        broadcast_compression=config.comm.broadcast_compression,
        fit_all=with_dropouts(fit_all, config.simulation),
        comm=CommTracker(config.comm.budget_mb, cut=fit_all.round_traffic if plan else None),
        update_parts=plan.parts if plan else None,
        num_rounds=config.num_rounds,
        learning_rate=functools.partial(round_learning_rate, config.sft, num_rounds=config.num_rounds),
        contribution_loss=evaluator.eval_loss if scores_by_quality(config) else None,
        on_round=on_round,
        roster=getattr(host, "roster", None),  # a Flower fleet's nodes may join late
        **buffered(config, host),
    )
    if checkpoint is not None:
        coordinator.restore(checkpoint)
        last_round, global_adapter = checkpoint["round"], checkpoint["adapter"]
        log.info("resuming after round %d", last_round)
    else:
        last_round, global_adapter = 0, coordinator.record_baseline(get_adapter_state(model))
    # The model and the clients live for the whole run; frozen out of the collector, the full collection trl's
    # trainer starts each client's steps with (accelerate's free_memory) costs the same whether 10 or 10,000 clients
    # are registered (it took ~1 s per client with 10,000)
    gc.freeze()
    return coordinator.run_rounds(global_adapter, last_round + 1, config.num_rounds)


def buffered(config: Config, host) -> dict:
    """The coordinator's fedbuff part (server/buffered.py): its settings, its clock (a job takes the client's
    simulation slowdown), how a job trains (in turn here, or side by side by `host`, the worker pool or the Flower
    fleet) and which jobs never answer (simulation.dropout); nothing for a synchronous strategy."""
    from flb.simulation import dropout, slowdown
    from server.buffered import BufferedRounds, BufferedSchedule, FitWhenAwaited

    if not config.strategy.spec.asynchronous:
        return {}
    return {
        "buffered": BufferedRounds(
            settings=config.strategy.fedbuff,
            schedule=BufferedSchedule(config.clients_per_round, functools.partial(slowdown, config.simulation)),
            jobs=host if hasattr(host, "submit") else FitWhenAwaited(),
            dropout=functools.partial(dropout, config.simulation),
        )
    }


def scores_by_quality(config: Config) -> bool:
    return config.chain_record and config.chain.scoring == "quality"


def finish(
    config: Config, run_dir, prepared: Prepared, global_adapter, ledger, export_merged: bool, verbose: bool = False
) -> None:
    """The final adapter, summary, plots and printed report (every ledger transaction with `verbose`); RunFailed when
    no round aggregated anything."""
    from flb.audit.digests import adapter_digest
    from flb.run.summary import ledger_lines, privacy_lines, summary_table, write_plots, write_summary

    peft_config = prepared.model.peft_config["default"]
    final_dir = run_dir.save_final(global_adapter, peft_config)
    summary = write_summary(run_dir, adapter_digest(global_adapter), config)
    write_plots(run_dir)
    print("\n" + summary_table(run_dir.metrics()))
    for line in privacy_lines(run_dir.metrics()):
        print(line)
    print(f"\nfinal adapter: {final_dir}  (sha256 {summary['final_digest']})")
    print(f"plots: {run_dir.path / 'plots'}   metrics: {run_dir.path / 'metrics.jsonl'}")
    if config.chain_record:
        print("\n" + "\n".join(ledger_lines(ledger.summary(), verbose)))
    if export_merged:
        print(f"merged model: {export_merged_model(prepared.model, prepared.tokenizer, global_adapter, run_dir.path)}")
    if summary["rounds_aggregated"] == 0:
        raise RunFailed(
            f"every round was skipped (no round had server.min_clients = {config.server.min_clients} valid "
            f"updates; see 'rejected' in {run_dir.path / 'metrics.jsonl'}); the final adapter is the base"
        )


def export_merged_model(model, tokenizer, adapter, run_path: Path) -> Path:
    from flb.model.load import set_adapter_state

    set_adapter_state(model, adapter)
    target = run_path / "merged"
    model.merge_and_unload().save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def stopped_line(stop) -> str:
    """What a run stopped by a signal (flb.run.stop.StopRequested) left, and how to go on."""
    from flb.run.directory import RunDir

    if stop.run_dir is None:
        return f"stopped by {stop.signal_name} before the run directory was made: nothing to resume; run it again"
    saved = RunDir.open(stop.run_dir).saved_round()
    if saved is None:
        return (
            f"stopped by {stop.signal_name} before round 0 was saved: {stop.run_dir} holds no round to resume "
            "from; run it again"
        )
    return (
        f"stopped by {stop.signal_name}: rounds up to {saved} are saved in {stop.run_dir}; resume with: python "
        f"main_simple_fl.py --resume {stop.run_dir}"
    )
