"""Split learning (mode split) on 4-layer tiny models: a split step computes what the whole model computes for every
family split mode supports, only hidden states and gradients cross the cut, the trunk server refuses what is out of
protocol, a run (Llama and GPT-2) trains, resumes exactly and leaves an adapter plain peft loads, and the gRPC
transport (a server and two client processes on loopback) ends on the in-process run's digest."""

from __future__ import annotations

import json

import pytest
import torch

from flb.errors import ConfigError
from flb.frames import decode_frame, encode_frame
from flb.split.cut import SPLIT_FAMILIES, SplitPlan, split_family
from tests.tiny_model import TINY_FAMILIES, save_tiny_family, save_tiny_llama, tiny_run_overrides

# Each family's 4-layer model with a cut that has something to get wrong: attention windows shorter than a record
# where the family can slide (Qwen and Gemma 3 mixing sliding and full layers, Gemma 3's two rotary bases), and no
# dropout in the base model (GPT-2's is 0.1), so the whole model and the split one compute the same numbers.
WINDOW = 8
_WINDOW = dict(sliding_window=WINDOW)
CUT_CONFIGS = {
    "llama": {},
    "mistral": _WINDOW,
    "phi3": _WINDOW,
    "gemma2": _WINDOW,
    "qwen2": dict(_WINDOW, use_sliding_window=True, max_window_layers=2),
    "qwen3": dict(_WINDOW, use_sliding_window=True, max_window_layers=2),
    "gemma3": dict(_WINDOW, layer_types=["sliding_attention", "full_attention"] * 2),
    "gpt2": dict(embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0),
}
assert set(CUT_CONFIGS) == set(TINY_FAMILIES)


@pytest.fixture(scope="module")
def tiny4_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny4"), num_layers=4)


@pytest.fixture(scope="module")
def tiny4_gpt2_dir(tmp_path_factory):
    """A 4-layer tiny GPT-2 with its own dropout (0.1 on embeddings, attention and residuals)."""
    return save_tiny_family("gpt2", tmp_path_factory.mktemp("gpt2"), num_hidden_layers=4)


def split_overrides(model_dir, output_dir, *extra: str) -> list[str]:
    return tiny_run_overrides(model_dir, output_dir) + ["mode=split", *extra]


def split_parts(model_dir, tmp_path, k: int, m: int, *extra: str):
    """A SplitClient (client 0 of a tiny split config, fp32) and its in-process TrunkServer on one model."""
    import assembly
    from flb.config import load_config
    from flb.run.directory import RunDir

    config = load_config(
        None,
        split_overrides(model_dir, tmp_path / "runs", f"split.head_layers={k}", f"split.tail_layers={m}", *extra),
    )
    prepared = assembly.prepare(config)
    run_dir = RunDir.create(config.output_dir, config.to_dict())
    with assembly.split_clients_and_fit_all(prepared.config, run_dir, prepared) as (clients, trunk):
        return clients[0], trunk, prepared


def first_batch(client, round: int = 1):
    from client.batched import optimizer_steps
    from flb.model.load import get_adapter_state

    client.inner.begin_round(get_adapter_state(client.inner.model), round)
    return optimizer_steps(client.inner.trainer, 1)[0][0]


def lora_grads(model) -> dict:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad and p.grad is not None}


@pytest.fixture(scope="module")
def family_parts(tmp_path_factory):
    """family -> (SplitClient, TrunkServer) on its 4-layer CUT_CONFIGS model, fp32, LoRA dropout off; made once."""
    made = {}

    def get(family: str):
        if family not in made:
            model_dir = save_tiny_family(
                family, tmp_path_factory.mktemp(family), num_hidden_layers=4, **CUT_CONFIGS[family]
            )
            made[family] = split_parts(
                model_dir, tmp_path_factory.mktemp(f"{family}-runs"), 1, 1, "model.lora.dropout=0.0"
            )[:2]
        return made[family]

    return get


@pytest.fixture
def one_torch_thread():
    """A tiny model's small ops lose several times over to threads waiting on each other when other processes share
    the cores; runs compared by digest keep torch's default."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("k, m", [(1, 1), (0, 2), (2, 0)])
@pytest.mark.parametrize("family", list(TINY_FAMILIES))
def test_split_step_gives_the_unsplit_loss_and_lora_gradients(family_parts, family, k, m, one_torch_thread):
    """fp32, noise off: one micro-batch across the cut gives the whole model's loss within 1e-6 and every LoRA
    gradient, the client's and the trunk's, within 1e-7 (both compute the same operations in the same order)."""
    from flb.model.load import get_adapter_state
    from flb.model.sft_settings import target_log_probs

    client, trunk = family_parts(family)
    model = client.inner.model
    client.plan = trunk.plan = plan = SplitPlan.of(model, k, m)
    model.zero_grad(set_to_none=True)
    with torch.no_grad():  # LoRA B starts at zero, where A gets no gradient: move B off it
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)
    batch = first_batch(client)
    assert batch["input_ids"].shape[1] > 2 * WINDOW  # the sliding windows cut the records
    targets = int(batch["labels"][:, 1:].ne(-100).sum())
    log_probs, _ = target_log_probs(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    whole_loss = -log_probs.sum() / targets
    whole_loss.backward()
    whole = lora_grads(model)
    model.zero_grad(set_to_none=True)

    trunk.start_round(get_adapter_state(model), 1)
    client.channel.open(0, 1)
    split_loss = client.micro_batch(batch, targets, step=False)
    split = lora_grads(model)
    assert abs(split_loss - whole_loss.item()) < 1e-6
    assert set(split) == set(whole) == {name for name, p in model.named_parameters() if p.requires_grad}
    assert {plan.in_trunk(name) for name in split} == {True, False}
    for name, gradient in whole.items():
        assert gradient.abs().max() > 0
        assert (split[name] - gradient).abs().max() < 1e-7, name


@pytest.mark.parametrize("model_dir", ["tiny4_dir", "tiny4_gpt2_dir"])
def test_drop_trunk_frees_the_trunks_blocks_and_keeps_the_client_part(model_dir, request):
    """What a network client (client.split_node) keeps: its blocks compute as before, the trunk's are gone, and its
    adapter is the client part under the same names."""
    from client.split_client import drop_trunk
    from flb.config import ModelSettings
    from flb.model.load import add_lora, get_adapter_state, load_base_model

    settings = ModelSettings(model_path=str(request.getfixturevalue(model_dir)))
    model = add_lora(load_base_model(settings), settings).eval()
    plan = SplitPlan.of(model, 1, 1)
    ids, mask = torch.tensor([[1, 5, 9, 200, 7]]), torch.ones(1, 5, dtype=torch.long)

    def client_blocks():
        with torch.no_grad():
            return [
                plan.run(model, layers, plan.embed(model, ids), mask) for layers in (plan.head_range, plan.tail_range)
            ]

    before, adapter = client_blocks(), get_adapter_state(model)
    drop_trunk(model, plan)
    assert [type(block) is torch.nn.Identity for block in plan.blocks(model)] == [False, True, True, False]
    assert all(torch.equal(a, b) for a, b in zip(before, client_blocks()))
    assert get_adapter_state(model).keys() == plan.client_part(adapter).keys() and plan.trunk_part(adapter)


def test_only_hidden_states_and_gradients_cross_the_cut(tiny4_dir, tmp_path, monkeypatch):
    """Every frame of a run, both ways: the client sends hidden states [batch, tokens, hidden] (float), the attention
    mask (0/1) and gradients, never token ids or labels; the server sends hidden states, gradients and, at a
    session's end, the trunk's LoRA tensors, never a base weight."""
    import assembly
    from flb.config import load_config
    from server.split_trunk import TrunkServer

    frames = []
    handle = TrunkServer.handle

    def recorded(self, frame):
        reply = handle(self, frame)
        frames.append((decode_frame(frame), decode_frame(reply)))
        return reply

    monkeypatch.setattr(TrunkServer, "handle", recorded)
    assembly.run(load_config(None, split_overrides(tiny4_dir, tmp_path / "runs", "num_rounds=1")))
    hidden_size = 64
    ops = [sent[0] for sent, _ in frames]
    assert ops.count("forward") == ops.count("backward") == 2 * 3 and ops.count("open") == ops.count("close") == 2
    for (op, header, tensors), (reply_op, _, reply) in frames:
        assert reply_op != "error"
        assert set(header) <= {"client_id", "round", "step", "input_grad"}
        if op == "forward":
            assert set(tensors) == {"hidden", "attention_mask"}
            assert tensors["hidden"].is_floating_point() and tensors["hidden"].shape[-1] == hidden_size
            assert set(tensors["attention_mask"].unique().tolist()) <= {0, 1}
            assert set(reply) == {"hidden"} and reply["hidden"].shape == tensors["hidden"].shape
        elif op == "backward":
            assert set(tensors) == {"grad"} and tensors["grad"].is_floating_point()
            assert set(reply) == {"grad"} and reply["grad"].shape[-1] == hidden_size  # k = 1: the head block needs it
        else:
            assert tensors == {}
            assert all("lora_" in name and SplitPlan(4, 1, 1).in_trunk(name) for name in reply)
            assert len(reply) == (2 * 4 * 2 if op == "close" else 0)  # 2 trunk layers x 4 projections x A, B


def test_activation_noise_comes_from_the_clients_secret_generator(tiny4_dir, tmp_path, monkeypatch):
    """What a client sends forward, in two runs of one config (same seed): identical without noise; with noise,
    different, so no one holding the public config can regenerate the noise and subtract it. Each token's hidden
    state is clipped to split.activation_clip before the noise."""
    import assembly
    from flb.config import load_config
    from server.split_trunk import TrunkServer

    sent = []
    handle = TrunkServer.handle

    def recorded(self, frame):
        op, _, tensors = decode_frame(frame)
        if op == "forward":
            sent.append(tensors["hidden"])
        return handle(self, frame)

    monkeypatch.setattr(TrunkServer, "handle", recorded)

    def forward_frames(name: str, *extra: str) -> list:
        sent.clear()
        assembly.run(
            load_config(
                None,
                split_overrides(
                    tiny4_dir, tmp_path / name, "num_rounds=1", "num_clients=1", "clients_per_round=1", *extra
                ),
            )
        )
        return list(sent)

    plain = [forward_frames(f"plain{i}") for i in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*plain))
    noisy = [forward_frames(f"noisy{i}", "split.activation_noise=0.5", "split.activation_clip=1.0") for i in range(2)]
    first, second = noisy
    assert all(not torch.allclose(a, b) for a, b in zip(first, second))
    residual = torch.cat([(a - b).flatten() for a, b in zip(first, second)])  # two independent noises: std 0.5*sqrt 2
    assert 0.6 < residual.std().item() < 0.8


def test_activation_clip_bounds_each_tokens_norm():
    from client.split_client import ActivationNoise
    from flb.privacy.secret_random import SecretRandom

    hidden = torch.randn(2, 5, 16) * 10
    clipped = ActivationNoise(std=0.0, clip=1.5).apply(hidden, SecretRandom())
    assert clipped.norm(dim=-1).max() <= 1.5 + 1e-5
    small = torch.randn(2, 5, 16) * 1e-3
    assert torch.equal(ActivationNoise(std=0.0, clip=1.5).apply(small, SecretRandom()), small)


@pytest.mark.parametrize("model_dir", ["tiny4_dir", "tiny4_gpt2_dir"])
def test_a_split_run_trains_resumes_exactly_and_its_adapter_loads_with_plain_peft(
    model_dir, request, tmp_path, run_and_resume_after_round_1
):
    """Shared trunk, activation noise on, the ledger on, on a Llama and on a GPT-2 (with its own dropout, on both
    sides of the cut): eval loss goes down; a copy resumed after round 1 ends on the uninterrupted run's final digest
    (the clients' secret generators are restored, so the noise is the same); every record verifies against the chain,
    and a copy whose client update has its trunk part altered does not (the client signed both parts); the final
    adapter, loaded by plain peft into the base model, gives the logits of the model the run evaluated."""
    import shutil

    from peft import PeftModel
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    import assembly
    from chain import explorer
    from flb.audit.digests import adapter_digest
    from flb.config import load_config
    from flb.model.load import set_adapter_state

    model_dir = request.getfixturevalue(model_dir)
    overrides = split_overrides(
        model_dir,
        tmp_path / "runs",
        "chain_record=true",
        "sft.learning_rate=0.003",
        "split.activation_noise=0.001",
        "split.activation_clip=50",
    )
    uninterrupted, resumed = run_and_resume_after_round_1(overrides)
    summaries = [json.loads((path / "summary.json").read_text()) for path in (uninterrupted, resumed)]
    assert summaries[0]["final_digest"] == summaries[1]["final_digest"]
    rounds = [
        row
        for row in map(json.loads, (uninterrupted / "metrics.jsonl").read_text().splitlines())
        if row["kind"] == "round"
    ]
    assert rounds[-1]["eval_loss"] < rounds[0]["eval_loss"]
    assert rounds[-1]["split_forwards"] == 2 * 3 and rounds[-1]["split_to_server_bytes"] > 0
    assert set(rounds[-1]["part_digests"]) == {"0", "1"}
    plan = SplitPlan(4, 1, 1, split_family(AutoConfig.from_pretrained(model_dir)))
    parts = plan.parts(load_file(uninterrupted / "round_1" / "updates" / "client_0.safetensors"))
    assert all(parts.values()) and next(row for row in rounds if row["round"] == 1)["part_digests"]["0"] == {
        part: adapter_digest(tensors) for part, tensors in parts.items()
    }  # anyone recomputes them from the files
    assert explorer.main([str(uninterrupted), "--verify"]) == 0
    tampered = shutil.copytree(uninterrupted, tmp_path / "tampered")  # the server alters a client's trunk part
    update_file = tampered / "round_1" / "updates" / "client_0.safetensors"
    update = load_file(update_file)
    trunk_name = next(name for name in sorted(update) if plan.in_trunk(name))
    update[trunk_name] = update[trunk_name] + 1e-3
    save_file(update, str(update_file))
    assert explorer.main([str(tampered), "--verify"]) != 0

    loaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(model_dir), uninterrupted / "final_adapter"
    ).eval()
    ids = torch.tensor([[1, 5, 9, 200, 7]])
    base_logits = AutoModelForCausalLM.from_pretrained(model_dir)(ids).logits
    _, evaluated = assembly.build_model(load_config(None, overrides))
    set_adapter_state(evaluated, load_file(uninterrupted / "final_adapter" / "adapter_model.safetensors"))
    with torch.no_grad():
        logits = loaded(ids).logits
        assert not torch.allclose(logits, base_logits)  # the adapter changes the model
        assert torch.allclose(logits, evaluated.eval()(ids).logits, atol=1e-6)


def test_the_grpc_transport_ends_on_the_in_process_digest(tiny4_dir, tmp_path):
    """split.channel loopback: this process serves the trunk over gRPC and two client processes (client.split_node,
    the trunk's blocks freed) train; per-client trunks, personal client parts: the same final digest as the same run
    in one process (the same operations on the same numbers; the trunk's dropout generator is seeded by round,
    client and step wherever it runs). Each client started round 2 from its own round-1 part."""
    from safetensors.torch import load_file

    import assembly
    from flb.config import load_config
    from flb.privacy.private_state import PrivateState

    common = ["split.trunk=per_client", "split.client_parts=personal", "model.lora.dropout=0.1"]
    in_process = assembly.run(load_config(None, split_overrides(tiny4_dir, tmp_path / "a", *common)))
    network = assembly.run(
        load_config(None, split_overrides(tiny4_dir, tmp_path / "b", *common, "split.channel=loopback"))
    )
    digests = [json.loads((path / "summary.json").read_text())["final_digest"] for path in (in_process, network)]
    assert digests[0] == digests[1]
    node_private = network / "nodes" / "client_0" / network.name / "private"
    own = PrivateState(node_private / "split").load_before(2)["tensors"]
    update = load_file(network / "round_1" / "updates" / "client_0.safetensors")
    assert own and all(torch.equal(tensor, update[name]) for name, tensor in own.items())
    assert not (in_process / "nodes").exists() and (in_process / "private" / "client_0" / "split").is_dir()


@pytest.fixture(scope="module")
def trunk_parts(tiny4_dir, tmp_path_factory):
    return split_parts(tiny4_dir, tmp_path_factory.mktemp("trunk"), 1, 1)


def frame_reply(trunk, op: str, header: dict | None = None, tensors: dict | None = None):
    op, header, tensors = decode_frame(trunk.handle(encode_frame(op, header, tensors)))
    return op, header.get("message", ""), tensors


def test_the_trunk_server_refuses_frames_out_of_protocol_in_one_line(trunk_parts):
    """Garbage, a frame outside a session, a session for another round or another client, hidden states of the wrong
    width or not finite, a mask that is not 0/1, a backward without a forward, a gradient of another shape, a close
    with a forward pending: each answered with an error frame naming it; afterwards the session still works."""
    from flb.model.load import get_adapter_state

    client, trunk, _ = trunk_parts
    trunk.start_round(get_adapter_state(client.inner.model), 3)
    hidden, mask = torch.randn(2, 5, 64), torch.ones(2, 5, dtype=torch.long)
    garbage = decode_frame(trunk.handle(b"\x00" * 20))
    assert garbage[0] == "error" and garbage[1]["message"].startswith("unreadable frame")
    assert (
        frame_reply(trunk, "forward", {}, {"hidden": hidden, "attention_mask": mask})[1]
        == "'forward' outside a session; open one first"
    )
    assert (
        frame_reply(trunk, "open", {"client_id": 0, "round": 2})[1] == "session for round 2; the server is in round 3"
    )
    trunk.expect(1)
    assert (
        frame_reply(trunk, "open", {"client_id": 0, "round": 3})[1]
        == "session for client 0; the server waits on client 1"
    )
    trunk.expect(None)
    assert frame_reply(trunk, "open", {"client_id": 0, "round": 3})[0] == "ok"
    for tensors, expected in [
        ({"hidden": torch.randn(2, 5, 32), "attention_mask": mask}, "forward needs hidden"),
        ({"hidden": hidden * float("nan"), "attention_mask": mask}, "forward: hidden states must be finite"),
        (
            {"hidden": hidden, "attention_mask": mask * 2},
            "forward: hidden states must be finite and the attention mask 0 or 1",
        ),
    ]:
        op, message, _ = frame_reply(trunk, "forward", {}, tensors)
        assert op == "error" and message.startswith(expected) and "\n" not in message
    assert frame_reply(trunk, "backward", {}, {"grad": hidden})[1] == "backward without a forward"
    op, _, output = frame_reply(trunk, "forward", {}, {"hidden": hidden, "attention_mask": mask})
    assert op == "hidden" and output["hidden"].shape == hidden.shape
    assert frame_reply(trunk, "forward", {}, {"hidden": hidden, "attention_mask": mask})[1].startswith(
        "forward before the last forward's backward"
    )
    assert frame_reply(trunk, "close")[1] == "close with a forward still waiting for its backward"
    assert frame_reply(trunk, "backward", {}, {"grad": torch.ones(2, 4, 64)})[1].startswith(
        "backward needs a finite grad of the forward's output shape (2, 5, 64)"
    )
    op, _, back = frame_reply(trunk, "backward", {"step": True}, {"grad": torch.ones_like(hidden)})
    assert op == "grad" and back["grad"].shape == hidden.shape and back["grad"].abs().sum() > 0
    assert frame_reply(trunk, "close")[0] == "trunk"


def test_shared_trunk_continues_from_the_previous_client_per_client_starts_from_the_global(trunk_parts):
    """split.trunk shared: the second client's session starts from the trunk the first one's ended with; per_client:
    from the round's global trunk. A step changes the trunk."""
    from flb.model.load import get_adapter_state

    client, trunk, _ = trunk_parts
    model, plan = client.inner.model, client.plan
    start = get_adapter_state(model)
    hidden, mask = torch.randn(2, 5, 64), torch.ones(2, 5, dtype=torch.long)

    def session(client_id: int) -> dict:
        frame_reply(trunk, "open", {"client_id": client_id, "round": 4})
        opened = plan.trunk_part(get_adapter_state(model))
        frame_reply(trunk, "forward", {}, {"hidden": hidden, "attention_mask": mask})
        frame_reply(trunk, "backward", {"step": True}, {"grad": torch.ones_like(hidden)})
        return opened, frame_reply(trunk, "close")[2]

    for shared in (True, False):
        trunk.shared = shared
        trunk.start_round(start, 4)
        opened_0, ended_0 = session(0)
        opened_1, _ = session(1)
        global_trunk = plan.trunk_part(start)
        assert all(torch.equal(opened_0[k], global_trunk[k]) for k in global_trunk)
        assert any(not torch.equal(ended_0[k], global_trunk[k]) for k in global_trunk)
        expected = ended_0 if shared else global_trunk
        assert all(torch.equal(opened_1[k], expected[k]) for k in global_trunk)
    trunk.shared = True


def test_the_hub_answers_only_the_client_it_gave_a_token_and_only_while_it_is_served(trunk_parts, tmp_path):
    """Over the network: a frame without the token hello gave, a second hello for one client id, and a trunk frame
    from a client other than the one being served are refused."""
    from server.split_hub import SplitHub

    client, trunk, prepared = trunk_parts
    hub = SplitHub(trunk, prepared.config, "run")

    def reply(op, header):
        return decode_frame(hub.handle(encode_frame(op, header)))

    assert reply("open", {"client_id": 0, "round": 1})[1]["message"] == "unknown token; say hello first"
    tokens = [reply("hello", {"client_id": i, "num_examples": 3, "address": None})[1]["token"] for i in (0, 1)]
    assert reply("hello", {"client_id": 0, "num_examples": 3})[1]["message"] == "client 0 has already joined this run"
    assert reply("hello", {"client_id": 7, "num_examples": 3})[1]["message"].startswith("client id 7 is not one of")
    trunk.expect(0)
    message = reply("open", {"client_id": 1, "round": 1, "token": tokens[1]})[1]["message"]
    assert message == "client 1 sent 'open' while the trunk serves client 0"
    trunk.expect(None)


def test_a_network_client_whose_process_ends_or_goes_silent_is_that_clients_failure(trunk_parts):
    """The hub does not wait forever: a client process that exits, or a client that sends nothing for
    split.timeout_s while it is awaited, fails the job it was given; the round's result for it is that failure
    (the coordinator counts it against server.max_client_failures)."""
    import dataclasses
    import subprocess
    import sys

    from flb.model.load import get_adapter_state
    from flb.types import ProxyClient
    from server.split_hub import SplitClientLost, SplitHub

    client, trunk, prepared = trunk_parts
    config = dataclasses.replace(prepared.config, split=dataclasses.replace(prepared.config.split, timeout_s=0.5))
    hub = SplitHub(trunk, config, "run")
    for client_id in (0, 1):
        hub.handle(encode_frame("hello", {"client_id": client_id, "num_examples": 3, "address": None}))
    silent = hub(([ProxyClient(1, 3, None, hub)]), get_adapter_state(client.inner.model), 1, {})
    assert isinstance(silent[0], SplitClientLost)
    assert str(silent[0]) == "client 1 sent nothing for split.timeout_s = 0.5 s"
    hub.processes[0] = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    hub.processes[0].wait()
    with pytest.raises(SplitClientLost, match=r"^client 0's process ended with code 3 \(see its node.log\)$"):
        hub.data_upload(0)
    with pytest.raises(SplitClientLost, match="^client 1 sent nothing"):  # another client is not blamed for it
        hub.data_upload(1)


def test_split_plans_that_cannot_be_cut_are_config_errors(tiny4_dir, tmp_path):
    import assembly
    from flb.config import load_config

    with pytest.raises(
        ConfigError,
        match=r"split.head_layers \+ split.tail_layers = 4 leaves the server no block "
        r"of the model's 4; make their sum at most 3",
    ):
        assembly.prepare(
            load_config(None, split_overrides(tiny4_dir, tmp_path, "split.head_layers=2", "split.tail_layers=2"))
        )


def test_models_split_mode_cannot_cut_are_refused_in_one_line_naming_the_family_and_the_fix():
    from transformers import Gemma3Config, Gemma3TextConfig, GPTNeoXConfig

    refused = [
        (
            GPTNeoXConfig(),
            "mode split: model_type 'gpt_neox' is not supported; supported: llama, mistral, "
            "qwen2, qwen3, phi3, gemma2, gemma3_text, gpt2 (use mode federated for this model)",
        ),
        (
            Gemma3Config(),
            "mode split: model_type 'gemma3': Gemma 3 with its vision tower "
            "(Gemma3ForConditionalGeneration) is not cut here; use a text-only Gemma 3 checkpoint "
            "(Gemma3ForCausalLM, model_type gemma3_text) or mode federated",
        ),
        (
            Gemma3TextConfig(use_bidirectional_attention=True),
            "mode split: model_type 'gemma3_text' with use_bidirectional_attention is not a causal decoder; set it "
            "false in the model's config or use mode federated",
        ),
    ]
    for config, message in refused:
        with pytest.raises(ConfigError) as info:
            split_family(config)
        assert str(info.value) == message
    assert split_family(Gemma3TextConfig()) is SPLIT_FAMILIES["gemma3_text"]
