"""`python -m chain.explorer RUN_DIR --verify [--recompute] [--rpc URL]` on whole tiny runs: it reads the chain
from a node (never the run's own trail.json), says whether that is independent evidence, and fails on every file
an attacker could change: global adapters, final_adapter/, adapter_config.json, summary.json, metrics.jsonl,
updates; --recompute catches a server that aggregated something other than the recorded updates; a record the
chain lost is sent again on --resume and --verify says so."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

import main_simple_fl
from chain.explorer import main
from chain.trail import read_trail
from chain.verify import rounds_from
from flb.audit.digests import adapter_digest, adapter_file_digest
from tests.chain.conftest import whole_run
from tests.chain.lying_server import LyingServer

pytestmark = pytest.mark.chain
REPO = Path(__file__).resolve().parents[2]
LOCAL_EXPORT = "verify: a consistency check of a local export, not independent evidence"


def verify(capsys, run_dir, *flags) -> tuple[int, list[str]]:
    """Exit code and printed lines of `python -m chain.explorer RUN_DIR --verify FLAGS`."""
    capsys.readouterr()
    code = main([str(run_dir), "--verify", *flags])
    return code, capsys.readouterr().out.splitlines()


def mismatches(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("MISMATCH")]


def last_round(run_dir: Path) -> int:
    return json.loads((run_dir / "summary.json").read_text())["rounds"]


def nudge_tensor(path: Path, target: Path | None = None) -> None:
    """Add 1e-3 to one tensor of an adapter file and save it to `target` (default: in place)."""
    tensors = load_file(str(path))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, str(target or path), metadata={"format": "pt"})


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def replace_everywhere(run_dir: Path, old: str, new: str, names: tuple[str, ...]) -> None:
    for name in names:
        text = (run_dir / name).read_text()
        assert old in text, name
        (run_dir / name).write_text(text.replace(old, new))


@pytest.fixture(params=["embedded", pytest.param("anvil", marks=pytest.mark.anvil)])
def finished_run(request) -> Path:
    """The shared finished run of each backend (read-only)."""
    return (
        request.getfixturevalue("embedded_run")
        if request.param == "embedded"
        else request.getfixturevalue("anvil_run")[0]
    )


# --- an untouched run ----------------------------------------------------------------------------


def test_untouched_run_passes_and_says_it_checks_a_local_export(finished_run, capsys):
    code, lines = verify(capsys, finished_run)
    assert code == 0 and mismatches(lines) == []
    assert lines[0].startswith(LOCAL_EXPORT) and str(finished_run / "chain") in lines[0]
    assert lines[-1].endswith("checks passed, 0 problems, 0 notes")


def test_recompute_of_an_honest_run_is_bit_exact(embedded_run, capsys):
    """From the payloads as sent: int8 changes, decoded and added to the previous global adapter, and each round's
    mean put through the nf4 broadcast."""
    sent = load_file(str(embedded_run / "round_2" / "updates" / "client_1.safetensors"))
    assert {name.rpartition("#")[2] for name in sent} == {"int8", "absmax"}
    code, lines = verify(capsys, embedded_run, "--recompute")
    assert code == 0 and not any("not recomputable" in line for line in lines)


def test_a_compressed_payload_altered_after_signing_fails(embedded_run, copy_run, capsys):
    run_dir = copy_run(embedded_run)
    path = run_dir / "round_2" / "updates" / "client_1.safetensors"
    sent = load_file(str(path))
    codes = next(name for name in sorted(sent) if name.endswith("#int8"))
    sent[codes][0] = 127 if sent[codes][0] != 127 else -127  # still a well-formed int8 payload
    save_file(sent, str(path), metadata={"format": "pt"})
    code, lines = verify(capsys, run_dir, "--recompute")
    assert code == 1
    assert mismatches(lines)[0].startswith("MISMATCH round 2 client 1: ")


def test_the_module_verifies_with_the_flag_after_the_run_dir(embedded_run):
    result = subprocess.run(
        [sys.executable, "-m", "chain.explorer", str(embedded_run), "--verify"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith(LOCAL_EXPORT)


@pytest.mark.anvil
def test_verify_with_rpc_reads_that_node_and_calls_it_independent(anvil_run, tmp_path, capsys):
    from chain.anvil import AnvilProcess
    from chain.backends import ANVIL_STATE_FILE

    run_dir, _ = anvil_run
    shutil.copyfile(run_dir / "chain" / ANVIL_STATE_FILE, tmp_path / "node_state.json")
    node = AnvilProcess(tmp_path / "node_state.json", num_accounts=1)  # another node holding the same chain
    contract = json.loads((run_dir / "chain" / "deployment.json").read_text())["address"]
    participants = tmp_path / "participants.txt"
    participants.write_text("\n".join(json.loads((run_dir / "chain" / "accounts.json").read_text())["clients"]))
    node.start()
    try:
        code, lines = verify(
            capsys,
            run_dir,
            "--rpc",
            node.url,
            "--recompute",
            "--strict",
            "--contract",
            contract,
            "--clients",
            str(participants),
        )
    finally:
        node.stop()
    assert code == 0, lines
    assert lines[0] == f"verify: reading {node.url}, a node independent of the run directory"
    assert lines[-1].endswith(" checks passed, 0 problems, 0 notes")


@pytest.mark.anvil
def test_verify_with_rpc_of_a_node_without_the_run_fails(anvil_run, anvil, capsys):
    capsys.readouterr()
    assert main([str(anvil_run[0]), "--verify", "--rpc", anvil.url]) == 2  # a fresh chain: none of the run's records
    (error,) = capsys.readouterr().err.splitlines()
    assert error.startswith("error: the node --verify reads does not hold this run's contract deployment")
    assert "not the chain the run started on" in error


# --- tampering -----------------------------------------------------------------------------------


def test_forged_adapter_with_a_matching_trail_fails(finished_run, copy_run, capsys):
    run_dir = copy_run(finished_run)
    last = last_round(run_dir)
    global_file = run_dir / f"round_{last}" / "adapter_model.safetensors"
    old = adapter_file_digest(global_file)
    nudge_tensor(global_file)
    shutil.copyfile(global_file, run_dir / "final_adapter" / "adapter_model.safetensors")
    new = adapter_file_digest(global_file)
    replace_everywhere(run_dir, old, new, ("summary.json", "metrics.jsonl", "chain/trail.json"))
    assert rounds_from(read_trail(run_dir))[last]["global_digest"] == new  # the run's own trail now agrees

    code, lines = verify(capsys, run_dir)
    assert code == 1
    problems = "\n".join(mismatches(lines))
    for what in (
        f"round {last} global adapter",
        "final_adapter",
        "summary.json: final_digest",
        f"metrics.jsonl: round {last} global_digest",
    ):
        assert what in problems
    assert f"the chain holds {old}" in problems


@pytest.mark.parametrize("folder", ["round_2", "final_adapter"])
def test_lora_alpha_edit_fails(embedded_run, copy_run, capsys, folder):
    run_dir = copy_run(embedded_run)

    def scale_up(config):
        assert config["lora_alpha"] == 16
        config["lora_alpha"] = 1600  # the same tensors, their effect x100

    edit_json(run_dir / folder / "adapter_config.json", scale_up)
    code, lines = verify(capsys, run_dir)
    assert code == 1
    (problem,) = mismatches(lines)
    what = "round 2 global adapter" if folder == "round_2" else "final_adapter"
    assert problem.startswith(f"MISMATCH {what}: ") and "its LoRA settings were changed" in problem


def test_edited_summary_final_digest_fails(embedded_run, copy_run, capsys):
    run_dir = copy_run(embedded_run)
    edit_json(run_dir / "summary.json", lambda summary: summary.update(final_digest="ab" * 32))
    code, lines = verify(capsys, run_dir)
    assert code == 1
    (problem,) = mismatches(lines)
    assert problem.startswith("MISMATCH summary.json: final_digest " + "ab" * 32)


def test_edited_client_digest_in_metrics_fails(embedded_run, copy_run, capsys):
    run_dir = copy_run(embedded_run)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    row = next(r for r in rows if r["kind"] == "client" and r["round"] == 2 and r["client_id"] == 1)
    replace_everywhere(run_dir, row["digest"], "cd" * 32, ("metrics.jsonl",))
    code, lines = verify(capsys, run_dir)
    assert code == 1
    assert mismatches(lines) == ["MISMATCH metrics.jsonl: round 2 client 1 digest is not the chain's"]


def test_tampered_update_names_its_round_and_client(embedded_run, copy_run, capsys):
    run_dir = copy_run(embedded_run)
    nudge_tensor(run_dir / "round_2" / "updates" / "client_1.safetensors")
    code, lines = verify(capsys, run_dir)
    assert code == 1
    (problem,) = mismatches(lines)
    assert problem.startswith("MISMATCH round 2 client 1: ")


def test_a_round_directory_the_chain_does_not_hold_fails(embedded_run, copy_run, capsys):
    run_dir = copy_run(embedded_run)
    shutil.copytree(run_dir / "round_2", run_dir / "round_3")
    code, lines = verify(capsys, run_dir)
    assert code == 1
    (problem,) = mismatches(lines)
    assert problem.startswith("MISMATCH round 3: ") and "the chain holds no record of it" in problem


# --- a lying server --------------------------------------------------------------------------------


def test_recompute_catches_a_server_that_aggregated_something_else(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from server.strategy.fedavg import FedAvg

    fedavg = FedAvg.aggregate

    def mean_plus_epsilon(self, global_adapter, updates, round, num_sampled):
        return {
            name: tensor + 1e-4 for name, tensor in fedavg(self, global_adapter, updates, round, num_sampled).items()
        }

    monkeypatch.setattr(FedAvg, "aggregate", mean_plus_epsilon)
    run_dir = whole_run(tiny_model_dir, tmp_path, "num_rounds=1")
    monkeypatch.undo()  # the auditor's replay runs the honest strategy
    code, lines = verify(capsys, run_dir)
    assert code == 0  # files and chain agree with each other: only recomputing shows the lie
    code, lines = verify(capsys, run_dir, "--recompute")
    assert code == 1
    (problem,) = mismatches(lines)
    assert problem.startswith("MISMATCH round 1: fedavg of the recorded updates has digest ")
    assert "is not the aggregate of the recorded updates" in problem


# --- a chain that lost records -------------------------------------------------------------------------


@pytest.mark.anvil
def test_a_round_the_node_lost_is_sent_again_on_resume_and_verify_says_so(anvil_run, copy_run, capsys):
    from chain.backends import ANVIL_STATE_FILE

    run_dir = copy_run(anvil_run[0])
    shutil.copyfile(anvil_run[1], run_dir / "chain" / ANVIL_STATE_FILE)  # the node restarted on an older state
    assert main_simple_fl.main(["--resume", str(run_dir), "--set", "num_rounds=2"]) == 0
    outbox = [json.loads(line) for line in (run_dir / "chain" / "outbox.jsonl").read_text().splitlines()]
    lost = [line for line in outbox if "lost by the chain" in (line.get("error") or "")]
    assert [line["id"] for line in lost] == ["round:1"] and lost[0]["error"].endswith("sent again")
    assert sorted(rounds_from(read_trail(run_dir))) == [0, 1, 2]

    code, lines = verify(capsys, run_dir)
    assert code == 0
    notes = [line for line in lines if line.startswith("NOTE ")]
    assert len(notes) == 1 and notes[0].startswith("NOTE round:1: lost by the chain")


@pytest.mark.anvil
def test_resume_on_a_chain_without_the_runs_contract_is_refused(anvil_run, copy_run, capsys):
    from chain.backends import ANVIL_STATE_FILE

    run_dir = copy_run(anvil_run[0])
    (run_dir / "chain" / ANVIL_STATE_FILE).unlink()  # the node lost everything, the deployment included
    capsys.readouterr()
    assert main_simple_fl.main(["--resume", str(run_dir), "--set", "num_rounds=2"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not the chain the run started on" in errors[0]
    assert not (run_dir / "round_2").exists()


def test_recompute_follows_the_runs_lora_aggregation(tmp_path):
    """svd rounds are recomputed bit for bit, or (another LAPACK build: here a singular pair with its signs flipped)
    to SVD_TOLERANCE in B A with a note; a server that averaged the factors apart is caught."""
    import torch

    from chain.explorer import _replayer
    from chain.verify import Report, _recompute
    from flb.adapters.arithmetic import weighted_average
    from flb.adapters.lora_aggregation import svd_average
    from flb.config import Config

    generator = torch.Generator().manual_seed(0)
    updates = [
        (
            {
                "m.lora_A.weight": torch.randn(2, 6, generator=generator),
                "m.lora_B.weight": torch.randn(5, 2, generator=generator),
            },
            n,
        )
        for n in (3, 5)
    ]
    (tmp_path / "round_1" / "updates").mkdir(parents=True)
    (tmp_path / "round_0").mkdir()
    for i, (state, _) in enumerate(updates):
        save_file(state, str(tmp_path / "round_1" / "updates" / f"client_{i}.safetensors"))
    config = Config().to_dict()
    config["strategy"].update(name="fedavg", lora_aggregation="svd")
    initial = {"m.lora_A.weight": torch.zeros(2, 6), "m.lora_B.weight": torch.zeros(5, 2)}
    save_file(initial, str(tmp_path / "round_0" / "adapter_model.safetensors"))
    honest = svd_average(updates)
    flipped = {
        "m.lora_A.weight": honest["m.lora_A.weight"] * torch.tensor([[-1.0], [1.0]]),
        "m.lora_B.weight": honest["m.lora_B.weight"] * torch.tensor([-1.0, 1.0]),
    }

    def recompute(recorded):
        save_file(recorded, str(tmp_path / "round_1" / "adapter_model.safetensors"))
        report = Report()
        rounds = {
            0: {"clients": [], "previous": "00", "global_digest": adapter_digest(initial)},
            1: {
                "clients": ["0xa", "0xb"],
                "num_examples": [3, 5],
                "previous": "00",
                "global_digest": adapter_digest(recorded),
            },
        }
        _recompute(report, tmp_path, rounds, {"0xa": 0, "0xb": 1}, config, _replayer(), max_staleness=0)
        return report

    assert (recompute(honest).problems, recompute(honest).notes) == ([], [])
    assert recompute(flipped).problems == [] and "not bit for bit" in recompute(flipped).notes[0]
    assert "is not the aggregate of the recorded updates" in recompute(weighted_average(updates)).problems[0]


# --- a server that lies on purpose (tests/chain/lying_server.py) ----------------------------------------


def test_an_honest_round_the_lying_server_records_passes(embedded_run, copy_run, capsys):
    """The control for the lies below: the same tool recording an honest round leaves nothing to flag."""
    server = LyingServer(copy_run(embedded_run))
    updates = [(i, server.update_of(2, i), 7 + i) for i in (0, 1)]
    server.record_round(updates, server.honest_aggregate(updates))
    server.close()
    code, lines = verify(capsys, server.run_dir, "--recompute")
    assert (code, mismatches(lines)) == (0, [])


def test_a_sybil_key_registered_mid_run_and_a_round_of_its_own_fail(embedded_run, copy_run, tmp_path, capsys):
    from eth_account import Account

    server = LyingServer(copy_run(embedded_run))
    real = list(server.addresses)
    sybil = Account.create()
    sybil_id = server.register(sybil)
    sybil_round = [(sybil_id, server.update_of(2, 0), 10**18)]
    number = server.record_round(sybil_round, server.honest_aggregate(sybil_round), keys={sybil_id: sybil})
    server.close()
    code, lines = verify(capsys, server.run_dir, "--recompute")
    assert code == 1
    assert mismatches(lines) == [
        f"MISMATCH participant {sybil.address} was registered before round {number}, after "
        "the run began (a key the server added mid-run?); pass --clients FILE with the real "
        "participants' addresses to accept it"
    ]
    assert f"verify: participant {sybil.address}: registered before round {number}, in rounds [{number}]" in lines
    trusted = tmp_path / "participants.txt"
    trusted.write_text("# published by each organisation\n" + "\n".join(real) + "\n")
    code, lines = verify(capsys, server.run_dir, "--clients", str(trusted))
    assert code == 1 and mismatches(lines) == [
        f"MISMATCH participant {sybil.address} is registered but is not in "
        "--clients: an address the auditor does not know to be a real participant"
    ]


def test_a_round_that_ignores_every_update_fails_recompute(embedded_run, copy_run, capsys):
    server = LyingServer(copy_run(embedded_run))
    updates = [(i, server.update_of(1, i), 7) for i in (0, 1)]  # not round 2's: their mean is not its adapter
    number = server.record_round(updates, server.global_adapter(2))  # the previous global adapter, published again
    server.close()
    assert verify(capsys, server.run_dir)[0] == 0  # files and chain agree: only recomputing shows it
    code, lines = verify(capsys, server.run_dir, "--recompute")
    assert code == 1
    (problem,) = mismatches(lines)
    assert problem.startswith(f"MISMATCH round {number}: fedavg of the recorded updates has digest ")


def test_an_update_file_that_does_not_decode_is_a_problem_not_a_crash(embedded_run, copy_run, capsys):
    run_dir = copy_run(embedded_run)
    path = run_dir / "round_1" / "updates" / "client_0.safetensors"
    sent = load_file(str(path))
    del sent[next(name for name in sorted(sent) if name.endswith("#absmax"))]
    save_file(sent, str(path), metadata={"format": "pt"})
    code, lines = verify(capsys, run_dir, "--recompute")
    assert code == 1
    assert mismatches(lines)[0].startswith("MISMATCH round 1 client 0: ")
    assert any(
        "an update file does not decode as comm.compression int8 (int8 payload: " in line
        and "#absmax is missing" in line
        and line.endswith("that round and later are not recomputed")
        for line in lines
    )


def test_a_round_whose_global_adapter_skips_the_broadcast_codec_fails_recompute(embedded_run, copy_run, capsys):
    """The run anchors comm.broadcast_compression nf4: a server that publishes the mean at full precision (which no
    client received) records a global adapter that is not the round's."""
    server = LyingServer(copy_run(embedded_run))
    updates = [(i, server.update_of(2, i), 7 + i) for i in (0, 1)]
    full_precision = server.mean_of(updates)
    assert adapter_digest(full_precision) != adapter_digest(server.honest_aggregate(updates))
    number = server.record_round(updates, full_precision)
    server.close()
    code, lines = verify(capsys, server.run_dir, "--recompute")
    assert code == 1
    (problem,) = mismatches(lines)
    assert problem.startswith(f"MISMATCH round {number}: fedavg of the recorded updates has digest ")


def test_inflated_scores_fail(embedded_run, copy_run, capsys):
    server = LyingServer(copy_run(embedded_run))
    updates = [(i, server.update_of(2, i), 7) for i in (0, 1)]
    number = server.record_round(updates, server.honest_aggregate(updates), bytes_factor=1000)
    server.close()
    code, lines = verify(capsys, server.run_dir)
    assert code == 1
    problems = mismatches(lines)
    assert len(problems) == 2 and all(p.startswith(f"MISMATCH round {number} client ") for p in problems)
    assert "on chain, but the flb formula gives" in problems[0] and "uploads x" in problems[0]


def test_an_edited_strategy_in_config_json_fails_and_switches_nothing_off(embedded_run, copy_run, capsys):
    run_dir = copy_run(embedded_run)
    edit_json(run_dir / "config.json", lambda config: config["strategy"].update(name="median"))
    code, lines = verify(capsys, run_dir, "--recompute")
    assert code == 1
    problems = mismatches(lines)
    assert problems[0].startswith("MISMATCH config.json: its run spec (strategy, DP, scoring, sampling) has digest ")
    assert "the run's rules were edited after the fact" in problems[0]
    assert problems[1:] == [
        "MISMATCH rounds [1, 2]: not recomputed, as config.json is not the run spec the chain anchors"
    ]


@pytest.mark.parametrize(
    "file, change, expected",
    [
        ("metrics.jsonl", ("eval_loss", 2), "MISMATCH metrics.jsonl: round 2 row has digest "),
        ("metrics.jsonl", ("accuracy", 1), "MISMATCH metrics.jsonl: round 1 row has digest "),
        ("summary.json", ("eval_loss", "final"), "MISMATCH summary.json: eval_loss is "),
        ("summary.json", ("accuracy", "final"), "MISMATCH summary.json: accuracy is "),
    ],
)
def test_edited_metrics_and_summary_fail(embedded_run, copy_run, capsys, file, change, expected):
    run_dir = copy_run(embedded_run)
    key, where = change
    if file == "metrics.jsonl":
        rows = [json.loads(line) for line in (run_dir / file).read_text().splitlines()]
        row = next(r for r in rows if r["kind"] == "round" and r["round"] == where)
        row[key] = (row.get(key) or 0) + 0.01
        (run_dir / file).write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    else:
        edit_json(run_dir / file, lambda summary: summary[key].update({where: (summary[key][where] or 0) + 0.01}))
    code, lines = verify(capsys, run_dir)
    assert code == 1
    problems = mismatches(lines)
    assert problems[0].startswith(expected)
    if file == "metrics.jsonl":  # the summary derived from that row no longer agrees either, unless it is not used
        assert all(p.startswith(("MISMATCH metrics.jsonl", "MISMATCH summary.json")) for p in problems)
    else:
        assert len(problems) == 1


def test_a_deployment_json_naming_another_contract_fails_when_the_auditor_pins_the_real_one(
    embedded_run, copy_run, capsys
):
    from chain.deployment import deploy

    server = LyingServer(copy_run(embedded_run))
    real = json.loads((server.run_dir / "chain" / "deployment.json").read_text())["address"]
    with server.ledger.sender.lock:
        other = deploy(server.ledger.node.w3, server.ledger.node.accounts.admin)["contractAddress"]
    server.close()
    edit_json(server.run_dir / "chain" / "deployment.json", lambda deployment: deployment.update(address=other))
    code, lines = verify(capsys, server.run_dir, "--contract", real)
    assert code == 1
    assert lines[1].startswith(f"verify: contract {real} on chain id ")
    assert mismatches(lines) == [
        f"MISMATCH {server.run_dir / 'chain' / 'deployment.json'} names contract {other}, "
        f"not the pinned {real}: the run directory points auditors at another contract"
    ]


def test_strict_fails_on_a_local_export_and_on_notes(embedded_run, capsys):
    assert verify(capsys, embedded_run, "--recompute")[0] == 0
    code, lines = verify(capsys, embedded_run, "--recompute", "--strict")
    assert code == 1 and lines[-1].startswith("verify --strict: fails")


def test_a_pinned_contract_that_is_not_there_is_one_line(embedded_run, capsys):
    capsys.readouterr()
    assert main([str(embedded_run), "--verify", "--contract", "0x" + "11" * 20]) == 2
    (error,) = capsys.readouterr().err.splitlines()
    assert error.startswith(f"error: --contract 0x{'11' * 20}: no contract there on the chain --verify reads")


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--contract", "0xzz"], "error: --contract 0xzz: not a 0x-prefixed 20-byte address"),
        (["--clients", "/no/such/participants.txt"], "error: --clients /no/such/participants.txt: no such file"),
    ],
)
def test_typical_mistakes_with_the_auditors_flags_are_one_line(embedded_run, capsys, flags, expected):
    capsys.readouterr()
    assert main([str(embedded_run), "--verify", *flags]) == 2
    (error,) = capsys.readouterr().err.splitlines()
    assert error.startswith(expected)


# --- buffered runs (strategy fedbuff), recorded by the ledger alone -----------------------------------------------


def fedbuff_config(max_staleness: int = 1, strategy: str = "fedbuff") -> dict:
    from flb.config import load_config

    overrides = ["num_clients=3", "clients_per_round=2", f"strategy.fedbuff.max_staleness={max_staleness}"]
    return load_config(None, [f"strategy.name={strategy}", *overrides]).to_dict()


def buffered_trail(open_run_ledger, clients, run_dir: Path, config: dict, max_staleness: int | None = 1) -> dict:
    """The trail, read from the chain, of a run that anchored `config`'s run spec and buffered rounds: round 1 holds
    clients 0 and 1 started from round 0; round 2 client 0 started from round 1 and client 2 from round 0."""
    from chain.deployment import RunAnchors
    from chain.explorer import chain_of_run, live_trail
    from flb.audit.run_spec import run_spec_digest
    from tests.chain.conftest import register, signed_record

    (run_dir / "config.json").write_text(json.dumps(config))
    anchors = RunAnchors("c0" * 32, run_spec_digest(config), max_staleness=max_staleness)
    ledger = open_run_ledger(run_dir=run_dir, anchors=anchors)
    register(ledger, clients)
    for number, started in {0: {}, 1: {0: 0, 1: 0}, 2: {0: 1, 2: 0}}.items():
        ids = sorted(started)
        starts = [started[i] for i in ids] or None
        ledger.record_round(signed_record(ledger.signing_domain, clients, number, client_ids=ids, start_rounds=starts))
    assert ledger.close() is None
    with chain_of_run(run_dir, None) as (w3, _):
        deployment = json.loads((run_dir / "chain" / "deployment.json").read_text())
        return live_trail(w3, deployment["address"], 0, {}, "test")


def buffered_problems(run_dir: Path, trail: dict) -> list[str]:
    """verify()'s problems about signatures, starts and the kind of rounds (the run directory holds no files)."""
    from chain.verify import verify

    words = ("signed by", "started from", "anchors synchronous", "anchors buffered", "recorded as")
    return [p for p in verify(run_dir, trail).problems if any(word in p for word in words)]


def round_event(trail: dict, name: str, number: int | None = None) -> dict:
    return next(
        e
        for tx in trail["transactions"]
        for e in tx["events"]
        if e["event"] == name and (number is None or e["args"]["round"] == number)
    )


def test_an_honest_buffered_run_has_its_signatures_over_each_start(open_run_ledger, clients, tmp_path):
    from chain.verify import rounds_from

    trail = buffered_trail(open_run_ledger, clients, tmp_path, fedbuff_config())
    assert buffered_problems(tmp_path, trail) == []
    rounds = rounds_from(trail)
    order = sorted((clients[0].address, clients[2].address), key=lambda a: int(a, 16))
    assert rounds[2]["start_rounds"] == [{clients[0].address: 1, clients[2].address: 0}[a] for a in order]
    assert "start_rounds" not in rounds[0]


@pytest.mark.parametrize(
    "tamper, expected",
    [
        ("a start moved", "signed by"),
        ("a start reused", "not after its update recorded before (round 0)"),
        ("a lower anchored staleness", "started from round 0, staleness 1, outside the anchored 0..0"),
        ("a synchronous record", "round 2: recorded as synchronous, but the chain anchors buffered rounds"),
    ],
)
def test_a_trail_of_other_starts_fails(open_run_ledger, clients, tmp_path, tamper, expected):
    """What the contract refuses, checked again by the verifier on a trail as a node (or another contract) could
    serve it."""
    trail = buffered_trail(open_run_ledger, clients, tmp_path, fedbuff_config())
    event = round_event(trail, "BufferedRoundRecorded", 2)
    position = event["args"]["clients"].index(clients[2].address if tamper != "a start reused" else clients[0].address)
    if tamper == "a start moved":
        event["args"]["startRounds"][position] = 1
    elif tamper == "a start reused":
        event["args"]["startRounds"][position] = 0
    elif tamper == "a lower anchored staleness":
        round_event(trail, "RunAnchored")["args"]["maxStaleness"] = 0
    else:
        event["event"] = "RoundRecorded"
    problems = buffered_problems(tmp_path, trail)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    "config, anchored, expected",
    [
        (
            fedbuff_config(strategy="fedavg"),
            1,
            "strategy fedavg has synchronous rounds, but the chain anchors buffered",
        ),
        (fedbuff_config(max_staleness=2), 1, "strategy fedbuff has buffered rounds (max staleness 2), but the chain"),
    ],
)
def test_anchored_rounds_of_another_kind_than_the_strategys_fail(
    open_run_ledger, clients, tmp_path, config, anchored, expected
):
    trail = buffered_trail(open_run_ledger, clients, tmp_path, config, max_staleness=anchored)
    assert any(expected in p for p in buffered_problems(tmp_path, trail))


def test_recompute_of_a_buffered_round_opens_each_update_from_its_own_start(tmp_path):
    """Round 2 takes an update started from round 0 and one from round 1: the replay gets each with the recorded
    global adapter of its start round (checked against the chain), and gives FedBuff's aggregate bit for bit; one
    measured from the previous round instead, or from an altered base file, is caught."""
    import torch

    from chain.explorer import _replayer
    from chain.verify import Report, _recompute
    from flb.config import FedBuffSettings
    from flb.types import ClientUpdate
    from server.strategy.fedbuff import FedBuff

    generator = torch.Generator().manual_seed(3)

    def adapter(scale: float = 1.0) -> dict:
        return {name: scale * torch.randn(3, 5, generator=generator) for name in ("m.lora_A.weight", "m.lora_B.weight")}

    config = fedbuff_config(max_staleness=1)
    globals_ = {0: adapter(), 1: adapter()}
    for number, state in globals_.items():
        (tmp_path / f"round_{number}").mkdir()
        save_file(state, str(tmp_path / f"round_{number}" / "adapter_model.safetensors"))
    starts, counts = [0, 1], [4, 9]
    trained = [{name: t + adapter(0.01)[name] for name, t in globals_[s].items()} for s in starts]
    (tmp_path / "round_2" / "updates").mkdir(parents=True)
    for i, state in enumerate(trained):
        save_file(state, str(tmp_path / "round_2" / "updates" / f"client_{i}.safetensors"))
    fedbuff = FedBuff(settings=FedBuffSettings(**config["strategy"]["fedbuff"]))

    def aggregate(bases: list[dict]) -> dict:
        updates = [
            ClientUpdate(i, s + 1, x, n, None, 0.0, 0, "", base=b)
            for i, (x, s, n, b) in enumerate(zip(trained, starts, counts, bases))
        ]
        return fedbuff.aggregate(globals_[1], updates, 2, len(updates))

    def recompute(recorded: dict) -> Report:
        rounds = {
            number: {"clients": [], "previous": "00", "global_digest": adapter_digest(state)}
            for number, state in globals_.items()
        }
        rounds[2] = {
            "clients": ["0xa", "0xb"],
            "start_rounds": starts,
            "num_examples": counts,
            "previous": rounds[1]["global_digest"],
            "global_digest": adapter_digest(recorded),
        }
        report = Report()
        _recompute(report, tmp_path, rounds, {"0xa": 0, "0xb": 1}, config, _replayer(), max_staleness=1)
        return report

    honest = aggregate([globals_[s] for s in starts])
    assert recompute(honest).problems == []
    assert "is not the aggregate of the recorded updates" in recompute(aggregate([globals_[1]] * 2)).problems[0]
    nudge_tensor(tmp_path / "round_0" / "adapter_model.safetensors")
    assert (
        "round_0/adapter_model.safetensors is not the global adapter the chain records for round 0"
        in (recompute(honest).problems[0])
    )
