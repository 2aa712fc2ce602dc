"""Federated DPO against each client alone and against centralised DPO on the union of their data.

    python -m bench.dpo [--model smollm2|tiny] [--clients 4] [--rounds 3] [--steps 10] [--eval-size 48]

The generated preference pairs (flb-preferences: our task families, the correct answer chosen, a plausible wrong one
rejected), split iid over `--clients` clients as a federated run splits them (`assembly.build.build_data`). Runs
(`assembly.run`, client.objective dpo, the ledger off):
- federated: every client sampled every round, `--steps` local steps each;
- alone k: client k's shard only, one client, `--steps` steps a round;
- centralised: the union of the shards, one client, clients x `--steps` steps a round (as many examples a round as
  the federation sees).
A run of one client holds one of its records out (eval.size is at least 1); every run's global adapter of each round
is then evaluated on the same held-out pairs, those of the federated run: preference accuracy (share of pairs whose
chosen answer gains on the rejected one against the base), mean margin (nats) and exact match (greedy answer ==
chosen). Prints a table and JSON; exits 1 when a run fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench.models import MODELS, model_path


def overrides(args, model: str, work: Path, *, clients: int, steps: int, data: str, eval_size: int) -> list[str]:
    return [
        f"model.model_path={model}",
        f"output_dir={work / 'runs'}",
        "client.objective=dpo",
        f"dataset_name={data}",
        f"num_clients={clients}",
        f"clients_per_round={clients}",
        f"num_rounds={args.rounds}",
        f"local_steps={steps}",
        f"eval.size={eval_size}",
        "eval.suites=[]",  # each run's own evaluation: only its loss; the comparison evaluates every run below
        "chain_record=false",
    ]


def write_jsonl(records: list[dict], path: Path) -> str:
    """Normalised pairs back as text records (trl's chat columns as the loader reads them)."""
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return str(path)


def runs(args, work: Path) -> tuple[object, dict[str, Path]]:
    """The federated run's config and each setup's run directory."""
    import assembly
    from assembly.build import build_data
    from flb.config import load_config

    model = model_path(args.model, work)
    federated = load_config(
        None,
        overrides(
            args, model, work, clients=args.clients, steps=args.steps, data="flb-tasks", eval_size=args.eval_size
        ),
    )
    shards, _ = build_data(federated)
    paths = {"federated": assembly.run(federated)}
    for k, shard in enumerate(shards):
        data = write_jsonl(shard, work / f"client_{k}.jsonl")
        paths[f"alone {k}"] = assembly.run(
            load_config(None, overrides(args, model, work, clients=1, steps=args.steps, data=data, eval_size=1))
        )
    union = write_jsonl([record for shard in shards for record in shard], work / "union.jsonl")
    paths["centralised"] = assembly.run(
        load_config(
            None,
            overrides(args, model, work, clients=1, steps=args.clients * args.steps, data=union, eval_size=1),
        )
    )
    return federated, paths


def evaluate_rounds(config, paths: dict[str, Path], work: Path) -> list[dict]:
    """Every setup's global adapter of each round on the federated run's held-out pairs."""
    import dataclasses

    from assembly.build import build_data, build_model
    from flb.run.directory import RunDir
    from server.evaluation import Evaluator

    _, held_out = build_data(config)
    tokenizer, model = build_model(config)
    evaluator = Evaluator(
        model=model,
        tokenizer=tokenizer,
        records=held_out,
        settings=dataclasses.replace(config.eval, suites=["exact_match"]),
        sft=config.sft,
        work_dir=work / "compare",
        dpo=config.dpo_objective,
    )
    rows = []
    for setup, path in paths.items():
        run = RunDir.open(path)
        rounds = []
        for round in range(config.num_rounds + 1):
            metrics = evaluator.evaluate(run.round_adapter(round))
            rounds.append({key: metrics[key] for key in ("preference_accuracy", "preference_margin", "accuracy")})
        rows.append({"setup": setup, "rounds": rounds})
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'setup':<12} {'round':>5} {'pref_acc':>9} {'margin':>9} {'exact_match':>12}"]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['setup']:<12} {row['error']}")
            continue
        for round, metrics in enumerate(row["rounds"]):
            lines.append(
                f"{row['setup']:<12} {round:>5} {metrics['preference_accuracy']:>9.3f} "
                f"{metrics['preference_margin']:>+9.3f} {metrics['accuracy']:>12.3f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", choices=MODELS)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--eval-size", type=int, default=48)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="flb-bench-dpo-") as work:
        try:
            config, paths = runs(args, Path(work))
            rows = evaluate_rounds(config, paths, Path(work))
        except Exception as exc:  # a failed run is the table's one row
            rows = [{"setup": "all", "error": f"{type(exc).__name__}: {exc}"}]
    print(table(rows))
    print(json.dumps(rows, indent=1))
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
