"""The adapter codecs (flb.adapters.compression): round-trip error, idempotence of the full-state codecs,
determinism, top-k error feedback, refusal of malformed payloads, and payload sizes."""

from __future__ import annotations

import math
import re
import sys

import numpy as np
import pytest
import torch

from flb.adapters.compression import (
    BLOCK_SIZE,
    CODECS,
    NF4_TABLE,
    MalformedPayload,
    as_received,
    compress_update,
    decode,
    encode,
    open_update,
    payload_bytes,
    with_error_feedback,
)
from flb.errors import ConfigError, FLBError

PREFIX = "base_model.model.model.layers.0.self_attn."
SHAPES = {
    PREFIX + "q_proj.lora_A.weight": (8, 64),
    PREFIX + "q_proj.lora_B.weight": (64, 8),
    PREFIX + "v_proj.lora_A.weight": (3, 37),
    PREFIX + "v_proj.lora_B.weight": (1,),
    PREFIX + "o_proj.lora_A.weight": (130,),
}
FULL_STATE_CODECS = ("bf16", "int8", "nf4")
X = PREFIX + "v_proj.lora_A.weight"  # the tensor the malformed payloads spoil


def random_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Normal tensors of SHAPES; the (130,) one has a block whose absmax is a negative element, then an all-zero
    block and an all-zero short last block; the (64, 8) one is all zero in its third block."""
    generator = torch.Generator().manual_seed(seed)
    state = {name: torch.randn(shape, generator=generator) for name, shape in SHAPES.items()}
    flat = state[PREFIX + "o_proj.lora_A.weight"]
    flat[5] = -9.0
    flat[64:] = 0.0
    state[PREFIX + "q_proj.lora_B.weight"].view(-1)[128:192] = 0.0
    return state


def block_absmax(tensor: torch.Tensor) -> torch.Tensor:
    """Each element's block's max |x|, element by element."""
    flat = tensor.flatten().abs()
    padded = torch.nn.functional.pad(flat, (0, -flat.numel() % BLOCK_SIZE)).view(-1, BLOCK_SIZE)
    return padded.amax(dim=1).repeat_interleave(BLOCK_SIZE)[: flat.numel()].view(tensor.shape)


def round_trip(codec: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return decode(codec, encode(codec, state), state)


def test_the_config_accepts_every_codec_and_broadcasts_all_but_topk():
    from flb.config.sections import BROADCAST_CODECS, CommSettings

    assert CODECS == ("none", "bf16", "int8", "nf4", "topk")
    assert BROADCAST_CODECS == ("none", "bf16", "int8", "nf4")
    allowed = re.escape("comm.broadcast_compression: invalid value 'topk'; allowed: none | bf16 | int8 | nf4")
    with pytest.raises(ConfigError, match=f"^{allowed}$"):
        CommSettings(broadcast_compression="topk")


def test_none_sends_the_tensors_themselves():
    state = random_state()
    payload = encode("none", state)
    assert payload is not state and all(payload[name] is state[name] for name in state)
    assert all(decode("none", payload, state)[name] is state[name] for name in state)


def test_bf16_is_within_its_relative_rounding_error():
    state = random_state()
    payload = encode("bf16", state)
    assert all(payload[name].dtype == torch.bfloat16 and payload[name].shape == state[name].shape for name in state)
    for name, decoded in round_trip("bf16", state).items():
        assert decoded.dtype == torch.float32
        assert bool(((decoded - state[name]).abs() <= 2**-8 * state[name].abs()).all()), name


def test_int8_is_within_half_a_step_of_its_block():
    state = random_state()
    for name, decoded in round_trip("int8", state).items():
        absmax = block_absmax(state[name])
        assert bool(((decoded - state[name]).abs() <= absmax / 254 + absmax * 2**-20).all()), name


def test_int8_codes_round_half_to_even_against_the_block_absmax():
    payload = encode("int8", {"x": torch.tensor([1.0, -0.5, 0.25, 0.0, -1.0])})
    assert payload["x#absmax"].tolist() == [1.0]
    assert payload["x#int8"].tolist() == [127, -64, 32, 0, -127]  # -63.5 -> -64, 31.75 -> 32


def test_int8_decodes_a_code_of_127_to_exactly_the_absmax():
    # code.float() * (absmax / 127) in float32 misses the absmax in about 1 block in 200; this draws 4096
    absmax = torch.rand(4096, generator=torch.Generator().manual_seed(1)) * 0.01 + 1e-4
    payload = {"x#absmax": absmax, "x#int8": torch.tensor([127, -127] + [0] * 62, dtype=torch.int8).repeat(4096)}
    decoded = decode("int8", payload, {"x": torch.zeros(4096 * 64)})["x"].view(4096, 64)
    assert torch.equal(decoded[:, 0], absmax) and torch.equal(decoded[:, 1], -absmax)


def test_int8_decoding_as_documented_in_numpy_gives_the_same_tensor():
    state = random_state()
    payload = encode("int8", state)
    for name, decoded in decode("int8", payload, state).items():
        codes, absmax = payload[name + "#int8"].numpy(), payload[name + "#absmax"].numpy()
        scale = np.repeat(absmax.astype(np.float64), BLOCK_SIZE)[: codes.size]
        expected = (codes.astype(np.float64) * scale / 127).astype(np.float32).reshape(state[name].shape)
        assert np.array_equal(decoded.numpy(), expected), name


def test_the_nf4_table_is_bitsandbytes_bit_for_bit():
    import bitsandbytes.functional as functional

    assert torch.equal(torch.tensor(NF4_TABLE, dtype=torch.float32), functional.get_4bit_type("nf4", device="cpu"))


def test_the_nf4_table_is_the_qlora_normal_quantiles():
    """QLoRA's recipe in float64: 8 positive and 7 negative normal quantiles from 0.5 out to 0.9677083, and 0,
    scaled to [-1, 1]. It lands within a few float32 ulps of bitsandbytes' values, not on them: hence the literal."""
    offset = 0.9677083
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    table = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    table = table / table.abs().max()
    assert torch.allclose(torch.tensor(NF4_TABLE, dtype=torch.float64), table, rtol=0, atol=1e-6)


@pytest.mark.parametrize("numel", [1, 37, 63, 65, 111, 1001, 64, 130])
def test_nf4_is_bitsandbytes_format_both_ways(numel):
    """Our encoder picks the codes bitsandbytes' quantize_4bit picks, and our decoder gives what its dequantize_4bit
    gives (bitsandbytes floors an all-zero short last block's absmax at 1e-38 where we write 0: both decode to 0)."""
    import bitsandbytes.functional as functional

    x = torch.randn(numel, generator=torch.Generator().manual_seed(numel)) * 0.02
    packed, quant_state = functional.quantize_4bit(x, blocksize=BLOCK_SIZE, quant_type="nf4")
    # bitsandbytes torch.compiles its odd-size dequantizer: seconds per size; eager runs the same float32 products
    with torch.compiler.set_stance("force_eager"):
        expected = functional.dequantize_4bit(packed, quant_state).flatten()
    ours = encode("nf4", {"x": x})
    assert torch.equal(ours["x#nf4"], packed.flatten())
    assert torch.equal(ours["x#absmax"], quant_state.absmax)
    assert torch.equal(decode("nf4", ours, {"x": x})["x"], expected)


def test_nf4_is_within_half_the_widest_table_gap_of_its_block():
    half_gap = max(b - a for a, b in zip(NF4_TABLE, NF4_TABLE[1:])) / 2
    state = random_state()
    for name, decoded in round_trip("nf4", state).items():
        absmax = block_absmax(state[name])
        assert bool(((decoded - state[name]).abs() <= half_gap * absmax * (1 + 2**-20)).all()), name


def test_nf4_payload_shapes():
    state = random_state()
    payload = encode("nf4", state)
    for name, tensor in state.items():
        assert payload[name + "#nf4"].dtype == torch.uint8
        assert payload[name + "#nf4"].shape == (math.ceil(tensor.numel() / 2),)
        assert torch.equal(payload[name + "#absmax"], block_absmax(tensor).flatten()[::BLOCK_SIZE])


@pytest.mark.parametrize("codec", FULL_STATE_CODECS)
def test_full_state_codecs_are_idempotent(codec):
    """The server re-encodes the decoded global adapter; the clients must decode exactly the same tensors."""
    once = round_trip(codec, random_state())
    twice = round_trip(codec, once)
    assert all(torch.equal(twice[name], once[name]) for name in once)


def test_topk_keeps_exactly_the_k_largest():
    state = random_state()
    payload = encode("topk", state, topk_fraction=0.1)
    for name, decoded in decode("topk", payload, state).items():
        x = state[name].flatten()
        kept = payload[name + "#indices"].long()
        assert kept.numel() == max(1, math.ceil(0.1 * x.numel()))
        assert torch.equal(decoded.flatten()[kept], x[kept])
        others = torch.ones_like(x, dtype=torch.bool).index_fill_(0, kept, False)
        assert bool((decoded.flatten()[others] == 0).all())
        if bool(others.any()):
            assert float(x[kept].abs().min()) >= float(x[others].abs().max())


def test_topk_breaks_ties_towards_the_lower_index():
    payload = encode("topk", {"x": torch.tensor([0.5, 1.0, -1.0, 1.0, 0.0, 0.0])}, topk_fraction=0.5)
    assert payload["x#indices"].tolist() == [1, 2, 3]
    payload = encode("topk", {"x": torch.tensor([1.0, -1.0, 1.0])}, topk_fraction=0.5)
    assert payload["x#indices"].tolist() == [0, 1]
    ties = torch.ones(100).index_fill_(0, torch.arange(0, 100, 3), -1.0)  # an unstable sort reorders these
    assert encode("topk", {"x": ties}, topk_fraction=0.1)["x#indices"].tolist() == list(range(10))


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan")])
def test_a_topk_fraction_outside_0_1_is_a_config_error(fraction):
    with pytest.raises(ConfigError, match=r"comm\.topk_fraction: invalid value .*; allowed: a number in \(0, 1\]"):
        encode("topk", random_state(), topk_fraction=fraction)


def test_an_unknown_codec_is_a_config_error_listing_the_codecs():
    allowed = re.escape("allowed: none | bf16 | int8 | nf4 | topk")
    with pytest.raises(ConfigError, match=f"comm.compression: invalid value 'zstd'; {allowed}"):
        encode("zstd", random_state())
    with pytest.raises(ConfigError, match=allowed):
        decode("zstd", {}, random_state())


@pytest.mark.parametrize("codec", CODECS)
def test_encoding_is_deterministic_and_decoding_pure(codec):
    state = random_state()
    first, second = encode(codec, state), encode(codec, state)
    assert list(first) == list(second) and all(torch.equal(first[name], second[name]) for name in first)
    kept = {name: tensor.clone() for name, tensor in first.items()}
    once, again = decode(codec, first, state), decode(codec, first, state)
    assert all(torch.equal(once[name], again[name]) for name in state)
    assert all(torch.equal(first[name], kept[name]) for name in kept)
    assert all(once[name].shape == state[name].shape and once[name].dtype == state[name].dtype for name in state)


@pytest.mark.parametrize("codec", CODECS)
def test_a_payload_survives_safetensors(codec):
    from safetensors.torch import load, save

    state = random_state()
    payload = encode(codec, state)
    assert all(tensor.is_contiguous() and tensor.device.type == "cpu" for tensor in payload.values())
    reloaded = decode(codec, load(save(payload)), state)
    assert all(torch.equal(reloaded[name], decode(codec, payload, state)[name]) for name in state)


def test_error_feedback_loses_nothing_of_the_sum():
    """sum of decoded payloads + final residual = sum of deltas: each step is exact but for float32 additions of
    values below ~10, so 6 rounds stay within 1e-5."""
    generator = torch.Generator().manual_seed(2)
    residual, sent, total = {}, {}, {}
    for _ in range(6):
        delta = {name: torch.randn(shape, generator=generator) for name, shape in SHAPES.items()}
        payload, residual = with_error_feedback("topk", delta, residual, topk_fraction=0.1)
        decoded = decode("topk", payload, delta)
        sent = {name: sent.get(name, 0) + decoded[name] for name in delta}
        total = {name: total.get(name, 0) + delta[name].double() for name in delta}
    for name in SHAPES:
        assert torch.allclose((sent[name] + residual[name]).double(), total[name], rtol=0, atol=1e-5), name


def test_error_feedback_sends_every_coordinate_in_time():
    delta = {"x": torch.arange(1.0, 11.0)}  # k = 1 of 10: without feedback only the largest is ever sent
    residual, with_feedback, without = {}, set(), set()
    for _ in range(60):
        payload, residual = with_error_feedback("topk", delta, residual, topk_fraction=0.1)
        with_feedback.update(payload["x#indices"].tolist())
        without.update(encode("topk", delta, topk_fraction=0.1)["x#indices"].tolist())
    assert with_feedback == set(range(10))
    assert without == {9}


@pytest.mark.parametrize("codec", FULL_STATE_CODECS)
def test_other_codecs_keep_no_residual(codec):
    state = random_state()
    payload, residual = with_error_feedback(codec, state, {}, topk_fraction=0.1)
    assert residual == {}
    expected = encode(codec, state)
    assert list(payload) == list(expected) and all(torch.equal(payload[n], expected[n]) for n in expected)


def spoil(codec: str, part: str, change) -> tuple[str, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(codec, the random state's payload with X's `part` changed by `change`, the state)."""
    state = random_state()
    payload = encode(codec, state, topk_fraction=0.25)
    key = f"{X}#{part}" if part else X
    changed = change(payload[key])
    if changed is None:
        del payload[key]
    else:
        payload[key] = changed
    return codec, payload, state


def with_element(tensor: torch.Tensor, index: int, value) -> torch.Tensor:
    tensor = tensor.clone()
    tensor[index] = value
    return tensor


MALFORMED = {
    "missing name": (("int8", "absmax", lambda t: None), "is missing"),
    "wrong dtype": (("int8", "int8", lambda t: t.to(torch.int16)), "has dtype torch.int16, expected torch.int8"),
    "wrong length": (("int8", "int8", lambda t: t[:-1]), "has shape [110], expected [111]"),
    "not 1-D": (("nf4", "absmax", lambda t: t.view(1, -1)), "has shape [1, 2], expected [2]"),
    "int8 code -128": (("int8", "int8", lambda t: with_element(t, 3, -128)), "holds the code -128"),
    "negative absmax": (("int8", "absmax", lambda t: with_element(t, 0, -1.0)), "holds a negative value"),
    "NaN absmax": (("nf4", "absmax", lambda t: with_element(t, 1, float("nan"))), "holds a NaN or infinite value"),
    "nf4 packed too long": (("nf4", "nf4", lambda t: torch.cat([t, t[:1]])), "has shape [57], expected [56]"),
    "topk index out of range": (("topk", "indices", lambda t: with_element(t, -1, 111)), "outside [0, 111)"),
    "topk negative index": (("topk", "indices", lambda t: with_element(t, 0, -1)), "outside [0, 111)"),
    "topk repeated index": (("topk", "indices", lambda t: with_element(t, 1, int(t[0]))), "not strictly increasing"),
    "topk decreasing indices": (("topk", "indices", lambda t: t.flip(0)), "not strictly increasing"),
    "topk no indices": (("topk", "indices", lambda t: t[:0]), "has 0 elements, expected 1 to 111"),
    "topk values shorter": (("topk", "values", lambda t: t[:-1]), "has shape [27], expected [28]"),
    "topk NaN value": (("topk", "values", lambda t: with_element(t, 2, float("nan"))), "NaN or infinite"),
    "bf16 inf": (("bf16", "", lambda t: with_element(t, (0, 0), float("inf"))), "holds a NaN or infinite value"),
    "bf16 sent as float32": (("bf16", "", lambda t: t.float()), "expected torch.bfloat16"),
    "none wrong shape": (("none", "", lambda t: t.t()), "has shape [37, 3], expected [3, 37]"),
    "not a tensor": (("int8", "absmax", lambda t: t.tolist()), "is a list, not a tensor"),
}


@pytest.mark.parametrize("case", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_payload_is_refused_naming_the_tensor(case):
    (codec, part, change), problem = case
    codec, payload, state = spoil(codec, part, change)
    with pytest.raises(MalformedPayload) as refused:
        decode(codec, payload, state)
    message = str(refused.value)
    assert (f"{X}#{part}" if part else X) in message and problem in message and "\n" not in message


def test_an_extra_tensor_is_refused_naming_it():
    state = random_state()
    payload = {**encode("int8", state), X + "#extra": torch.zeros(1)}
    with pytest.raises(MalformedPayload, match=f"'{X}#extra' is not a tensor of this adapter's int8 encoding"):
        decode("int8", payload, state)


def test_a_malformed_payload_is_an_flb_value_error():
    assert issubclass(MalformedPayload, FLBError) and issubclass(MalformedPayload, ValueError)


def test_nf4_needs_no_bitsandbytes(monkeypatch):
    """An auditor recomputes broadcasts (encode, then decode) with our code alone, on any machine."""
    state = random_state()
    payload = encode("nf4", state)
    expected = decode("nf4", payload, state)
    for module in ("bitsandbytes", "bitsandbytes.functional"):
        monkeypatch.setitem(sys.modules, module, None)  # any import of it now fails
    assert all(torch.equal(encode("nf4", state)[name], tensor) for name, tensor in payload.items())
    decoded = decode("nf4", payload, state)
    assert all(torch.equal(decoded[name], expected[name]) for name in state)


def test_payload_bytes_and_compression_ratios():
    state = {"x": torch.randn(1000, generator=torch.Generator().manual_seed(3))}
    sizes = {codec: payload_bytes(encode(codec, state, topk_fraction=0.1)) for codec in CODECS}
    assert sizes == {"none": 4000, "bf16": 2000, "int8": 1000 + 16 * 4, "nf4": 500 + 16 * 4, "topk": 100 * (4 + 4)}
    ratios = {codec: 4000 / size for codec, size in sizes.items()}
    assert ratios == pytest.approx({"none": 1.0, "bf16": 2.0, "int8": 3.759, "nf4": 7.092, "topk": 5.0}, abs=1e-3)


@pytest.mark.parametrize("codec", CODECS)
def test_an_update_sent_as_its_change_opens_to_the_trained_adapter(codec):
    """What a client sends (compress_update) and what the server opens (open_update) from the same global adapter:
    the trained adapter itself under none, within the codec's error under the others (top-k: exactly, where sent)."""
    start = random_state(1)
    trained = {name: tensor + 0.01 * torch.randn_like(tensor) for name, tensor in start.items()}
    sent, residual = compress_update(codec, trained, start, {}, 0.5)
    opened = open_update(codec, sent, start)
    change = {name: trained[name] - start[name] for name in start}
    for name in start:
        if codec == "none":
            assert opened[name] is trained[name] and residual == {}
        elif codec == "topk":  # what was not sent waits in the residual
            assert torch.allclose(opened[name] + residual[name], trained[name], rtol=0, atol=1e-6)
        else:
            bound = block_absmax(change[name]) * (2**-8 if codec == "bf16" else 0.16) + 1e-7
            assert bool(((opened[name] - trained[name]).abs() <= bound).all()), (codec, name)


@pytest.mark.parametrize("codec", FULL_STATE_CODECS)
def test_a_broadcast_is_what_its_encoding_decodes_to(codec):
    state = random_state(2)
    received = as_received(codec, state)
    assert all(torch.equal(received[n], t) for n, t in decode(codec, encode(codec, state), state).items())
    assert as_received("none", state) is state
