"""examples/audit/verify_run.py, the reference verifier written from docs/audit-spec.md alone: it reproduces the
spec's worked digest, loads nothing of the project (nor its contract artifact), and agrees with the project's own
`python -m chain.explorer RUN --verify --recompute --rpc URL --contract ADDR` on an honest anvil run and on copies of
it with one file tampered each. One anvil node, started on a copy of the run's chain, serves every case."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from flb.audit.digests import adapter_digest

pytestmark = [pytest.mark.chain, pytest.mark.anvil]
REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "audit" / "verify_run.py"
WORKED_EXAMPLE = "fcd52781cf46ec6067e672134728ab3e2af61fb1cba2aa8f43f8ee05799ed341"  # docs/audit-spec.md 2.1


def reference_module():
    spec = importlib.util.spec_from_file_location("reference_verify_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def serve(run_dir: Path, folder: Path):
    """(url, contract address) of an anvil node started on a copy of the run's chain, and the node."""
    from chain.anvil import AnvilProcess
    from chain.backends import ANVIL_STATE_FILE

    state = folder / "node_state.json"
    shutil.copyfile(run_dir / "chain" / ANVIL_STATE_FILE, state)
    process = AnvilProcess(state, num_accounts=1)
    process.start()
    return (process.url, json.loads((run_dir / "chain" / "deployment.json").read_text())["address"]), process


@pytest.fixture(scope="module")
def node(anvil_run, tmp_path_factory):
    """(url, contract address) of one anvil node holding the finished run's chain, for the whole module."""
    where, process = serve(anvil_run[0], tmp_path_factory.mktemp("reference-node"))
    yield where
    process.stop()


@pytest.fixture(scope="module")
def fedbuff_run(tiny_model_dir, tmp_path_factory):
    """A finished fedbuff run on anvil (int8 updates, one arrival a round, so that rounds 2-4 each take an update
    started a round before the previous one), and (url, contract address) of a node holding its chain."""
    from tests.chain.conftest import whole_run

    folder = tmp_path_factory.mktemp("fedbuff-runs")
    run_dir = whole_run(
        tiny_model_dir,
        folder,
        "chain.backend=anvil",
        "comm.compression=int8",
        "strategy.name=fedbuff",
        "strategy.fedbuff.buffer_size=1",
        "num_clients=3",
        "num_rounds=4",
    )
    where, process = serve(run_dir, folder)
    yield run_dir, where
    process.stop()


def reference(run_dir: Path, url: str, address: str, *python_flags: str) -> tuple[int, list[str]]:
    result = subprocess.run(
        [sys.executable, *python_flags, str(SCRIPT), "--rpc", url, "--contract", address, str(run_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, result.stdout.splitlines()


def project(capsys, run_dir: Path, url: str, address: str) -> tuple[int, list[str]]:
    from chain.explorer import main

    capsys.readouterr()
    code = main([str(run_dir), "--verify", "--recompute", "--rpc", url, "--contract", address])
    return code, capsys.readouterr().out.splitlines()


# --- the spec's worked example, and nothing of the project -------------------------------------------


def test_the_worked_example_of_spec_2_1():
    module = reference_module()
    tensors = {
        "m.lora_B.weight": np.array([[0.5], [0.25]], np.float32),
        "m.lora_A.weight": np.array([[1.0, -2.0]], np.float32),
    }
    assert module.tensors_digest(tensors) == WORKED_EXAMPLE


@pytest.mark.parametrize("codec", ["int8", "nf4", "topk"])
def test_spec_2_7_written_out_in_numpy_opens_updates_and_broadcasts_as_the_project_does(codec):
    """The reference's decoders and encoders, from the spec alone, against flb.adapters.compression, bit for bit: an
    update opened from the previous global adapter and, for the full-state codecs, a broadcast's round trip."""
    import torch

    from flb.adapters.compression import as_received, compress_update, open_update

    module = reference_module()
    generator = torch.Generator().manual_seed(7)
    previous = {"m.lora_A.weight": torch.randn(8, 65, generator=generator), "m.lora_B.weight": torch.zeros(65, 3)}
    trained = {name: t + 0.01 * torch.randn(t.shape, generator=generator) for name, t in previous.items()}
    sent, _ = compress_update(codec, trained, previous, {}, 0.3)
    as_numpy = {name: t.numpy() for name, t in sent.items()}
    reference = module.opened(codec, as_numpy, {name: t.numpy() for name, t in previous.items()})
    assert module.tensors_digest(reference) == adapter_digest(open_update(codec, sent, previous))
    if codec != "topk":
        reference = module.as_broadcast(codec, {name: t.numpy() for name, t in trained.items()})
        assert module.tensors_digest(reference) == adapter_digest(as_received(codec, trained))


@pytest.mark.parametrize(
    "staleness, exponent, eta", [("polynomial", 0.5, 1.0), ("polynomial", 0.7, 0.3), ("constant", 0.5, 2.5)]
)
def test_spec_fedbuff_written_out_in_numpy_is_the_servers_bit_for_bit(staleness, exponent, eta):
    """Round 5 of a fedbuff run: three updates started from rounds 4 (fresh), 2 and 3, each changed from its own base;
    the reference's arithmetic (from the spec alone) against server.strategy.fedbuff on random float32 tensors."""
    import torch

    from flb.config import FedBuffSettings
    from flb.types import ClientUpdate
    from server.strategy.fedbuff import FedBuff

    module = reference_module()
    generator = torch.Generator().manual_seed(11)

    def adapter(scale: float = 1.0) -> dict:
        shapes = {"m.lora_A.weight": (4, 33), "m.lora_B.weight": (33, 4)}
        return {name: scale * torch.randn(shape, generator=generator) for name, shape in shapes.items()}

    recorded = {s: adapter() for s in (2, 3, 4)}  # the global adapters of rounds 2-4
    starts, counts = [4, 2, 3], [7, 13, 1]
    trained = [{name: t + adapter(0.01)[name] for name, t in recorded[s].items()} for s in starts]
    settings = FedBuffSettings(staleness=staleness, staleness_exponent=exponent, server_learning_rate=eta)
    updates = [
        ClientUpdate(i, s + 1, x, n, None, 0.0, 0, "", base=recorded[s])
        for i, (x, s, n) in enumerate(zip(trained, starts, counts))
    ]
    server = FedBuff(settings=settings).aggregate(recorded[4], updates, 5, len(updates))

    def numpy(state: dict) -> dict:
        return {name: t.numpy() for name, t in state.items()}

    rules = {"staleness": staleness, "staleness_exponent": exponent, "server_learning_rate": eta}
    written_out = [(numpy(x), numpy(recorded[s]), n, 5 - 1 - s) for x, s, n in zip(trained, starts, counts)]
    reference = module.fedbuff(numpy(recorded[4]), written_out, rules)
    assert module.tensors_digest(reference) == adapter_digest(server)
    assert module.tensors_digest(reference) != module.tensors_digest(numpy(recorded[4]))
    stale_as_fresh = [(x, numpy(recorded[4]), n, 0) for x, _, n, _ in written_out]  # each change from round 4
    assert module.tensors_digest(module.fedbuff(numpy(recorded[4]), stale_as_fresh, rules)) != adapter_digest(server)


def test_it_loads_nothing_of_the_project_nor_its_contract_artifact(anvil_run, node):
    """The whole verification, run with an audit hook that records every import and every file opened."""
    probe = (
        "import json, runpy, sys\n"
        "opened = []\n"
        "sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == 'open' else None)\n"
        f"sys.argv = [{str(SCRIPT)!r}, '--rpc', {node[0]!r}, '--contract', {node[1]!r}, {str(anvil_run[0])!r}]\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as end:\n"
        "    code = end.code\n"
        "ours = sorted(m for m in sys.modules if m.split('.')[0] in ('flb', 'chain', 'server', 'client', 'flb_flower',"
        " 'main_simple_fl'))\n"
        "print(json.dumps({'code': code, 'modules': ours, 'artifact': [p for p in opened if 'artifacts' in p]}))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    found = json.loads(result.stdout.splitlines()[-1])
    assert found == {"code": 0, "modules": [], "artifact": []}, result.stdout + result.stderr


# --- agreement with the project's verifier ---------------------------------------------------------


def nudge(path: Path, target: Path | None = None) -> None:
    tensors = load_file(str(path))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + np.float32(1e-3)
    save_file(tensors, str(target or path), metadata={"format": "pt"})


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def tamper_update(run_dir: Path) -> None:
    nudge(run_dir / "round_1" / "updates" / "client_0.safetensors")


def tamper_global_with_matching_trail(run_dir: Path) -> None:
    digest = reference_module().tensors_digest
    path = run_dir / "round_1" / "adapter_model.safetensors"
    old = digest(load_file(str(path)))
    nudge(path)
    shutil.copyfile(path, run_dir / "final_adapter" / "adapter_model.safetensors")
    new = digest(load_file(str(path)))
    for name in ("summary.json", "metrics.jsonl"):
        text = (run_dir / name).read_text()
        assert old in text
        (run_dir / name).write_text(text.replace(old, new))


def tamper_round_1_eval_loss(run_dir: Path) -> None:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    for row in rows:
        if row["kind"] == "round" and row["round"] == 1:
            row["eval_loss"] -= 0.5
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def tamper_strategy(run_dir: Path) -> None:
    edit_json(run_dir / "config.json", lambda config: config["strategy"].update(name="median"))


def tamper_summary_loss(run_dir: Path) -> None:
    edit_json(run_dir / "summary.json", lambda summary: summary["eval_loss"].update(final=0.1))


CASES = {  # tampering -> what both verifiers' MISMATCH lines must name
    "honest": (None, ()),
    "update": (tamper_update, ("round 1", "client_0.safetensors")),
    "global adapter and its trail": (
        tamper_global_with_matching_trail,
        ("round 1 global adapter", "final_adapter", "metrics.jsonl", "summary.json"),
    ),
    "metrics eval_loss": (tamper_round_1_eval_loss, ("metrics.jsonl: round 1",)),
    "config strategy": (tamper_strategy, ("config.json",)),
    "summary eval_loss": (tamper_summary_loss, ("summary.json: eval_loss",)),
}


@pytest.mark.parametrize(
    "strategy, anchored, starts, expected",
    [
        ("fedbuff", (True, 1), [[0], [1, 0]], []),
        (
            "fedavg",
            (True, 1),
            [[0], [1, 0]],
            ["config.json: strategy fedavg gives (buffered, maxStaleness) (False, 0)"],
        ),
        (
            "fedbuff",
            (True, 0),
            [[0], [1, 0]],
            ["anchors (True, 0)", "round 2 client 0xB: start round 0, staleness 1 outside 0..0"],
        ),
        ("fedbuff", (True, 1), [[0], [0, 0]], ["round 2 client 0xA: start round 0 is not after its last (0)"]),
        ("fedbuff", (False, 0), [[0], [1, 0]], ["(False, 0)", "buffered True, anchored False"]),
    ],
)
def test_spec_checks_of_buffered_rounds_written_out(strategy, anchored, starts, expected):
    """The reference's items 2 and 4 for buffered runs on a chain written out by hand: the anchor agrees with the
    strategy, every start is within the anchored staleness, and a client's starts increase."""
    module = reference_module()
    config = {"strategy": {"name": strategy, "fedbuff": {"max_staleness": 1}}}
    buffered, most = anchored
    chain = {"events": [{"event": "RunAnchored", "args": {"buffered": buffered, "maxStaleness": most}}]}
    rounds = {
        n: {"clients": ["0xA", "0xB"][: len(s)], "startRounds": s, "buffered": True, "sealed": False}
        for n, s in enumerate(starts, 1)
    }
    report = module.Report()
    module.check_buffered(report, chain, rounds, config)
    assert [p for p in report.problems if not any(e in p for e in expected)] == []
    assert all(any(e in p for p in report.problems) for e in expected), report.problems


def stale_update(run_dir: Path) -> Path:
    """The update file of the first update that started before the previous round (read from metrics' chain)."""
    from chain.trail import read_trail
    from chain.verify import registered_clients, rounds_from

    trail = read_trail(run_dir)
    clients = registered_clients(trail)
    for number, record in sorted(rounds_from(trail).items()):
        for address, start in zip(record["clients"], record.get("start_rounds", [])):
            if start < number - 1:
                return run_dir / f"round_{number}" / "updates" / f"client_{clients[address]}.safetensors"
    raise AssertionError("no stale update in the fedbuff run")


def tamper_stale_update(run_dir: Path) -> None:
    path = stale_update(run_dir)
    sent = load_file(str(path))
    codes = next(name for name in sorted(sent) if name.endswith("#int8"))
    sent[codes][0] = 127 if sent[codes][0] != 127 else -127  # still a well-formed int8 payload
    save_file(sent, str(path), metadata={"format": "pt"})


def tamper_max_staleness(run_dir: Path) -> None:
    edit_json(run_dir / "config.json", lambda config: config["strategy"]["fedbuff"].update(max_staleness=9))


FEDBUFF_CASES = {  # tampering -> what both verifiers' MISMATCH lines must name, and whether rounds are recomputed
    "honest": (None, (), True),
    "stale update": (tamper_stale_update, ("updates/client_",), True),
    "config max_staleness": (tamper_max_staleness, ("config.json",), False),
}


@pytest.mark.parametrize("case", list(FEDBUFF_CASES))
def test_the_reference_and_the_project_verifier_agree_on_a_fedbuff_run(case, fedbuff_run, copy_run, capsys):
    """Stale updates signed over their own start round, opened from that round's adapter and weighed by FedBuff's
    rule (spec 5.5): both verifiers recompute them, and both fail on a stale update's file or the anchored rules."""
    tamper, named, recomputed = FEDBUFF_CASES[case]
    run_dir = copy_run(fedbuff_run[0])
    if tamper is not None:
        tamper(run_dir)
    ours, our_lines = project(capsys, run_dir, *fedbuff_run[1])
    theirs, their_lines = reference(run_dir, *fedbuff_run[1])
    assert their_lines[-1].startswith("reference verify: ")
    assert any("not recomputed" in line for line in our_lines + their_lines) != recomputed
    assert (ours, theirs) == ((1, 1) if tamper else (0, 0)), "\n".join(our_lines + ["--- reference:"] + their_lines)
    for lines in (our_lines, their_lines):
        problems = "\n".join(line for line in lines if line.startswith("MISMATCH"))
        assert all(what in problems for what in named), f"{named} not all in:\n{problems}"


def test_both_verifiers_recompute_a_fedsa_run_whose_updates_hold_no_lora_b(tiny_model_dir, tmp_path, capsys):
    """strategy.personalization fedsa: each update file holds LoRA A and the personal commitment (spec 2.8), and a
    global tensor no update holds keeps its value (spec 5.1): both verifiers recompute every round from the files."""
    from tests.chain.conftest import whole_run

    run_dir = whole_run(tiny_model_dir, tmp_path, "chain.backend=anvil", "strategy.personalization=fedsa")
    where, process = serve(run_dir, tmp_path)
    try:
        theirs, their_lines = reference(run_dir, *where)
        ours, our_lines = project(capsys, run_dir, *where)
    finally:
        process.stop()
    assert (ours, theirs) == (0, 0), "\n".join(our_lines + ["--- reference:"] + their_lines)
    assert not any("not recomputed" in line for line in our_lines + their_lines)


@pytest.mark.parametrize("case", list(CASES))
def test_the_reference_and_the_project_verifier_agree(case, anvil_run, node, copy_run, capsys):
    tamper, named = CASES[case]
    run_dir = copy_run(anvil_run[0])
    if tamper is not None:
        tamper(run_dir)
    ours, our_lines = project(capsys, run_dir, *node)
    theirs, their_lines = reference(run_dir, *node)
    assert their_lines[-1].startswith("reference verify: ")
    assert (ours, theirs) == ((1, 1) if tamper else (0, 0)), "\n".join(our_lines + ["--- reference:"] + their_lines)
    for lines in (our_lines, their_lines):
        problems = "\n".join(line for line in lines if line.startswith("MISMATCH"))
        assert all(what in problems for what in named), f"{named} not all in:\n{problems}"
