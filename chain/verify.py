"""Check a run directory against what a chain node holds, without trusting the server that wrote either.

Input: the trail collected from a node (never the run's own trail.json) and, optionally, the openings of
salted commitments from their owners. Checked, round by round: the contract was deployed from the
committed artifact; rounds are contiguous and chained; every global adapter, update file, every
adapter_config.json, final_adapter/, summary.json and the digests in metrics.jsonl match the chain;
each recorded update is signed by its registered client; committed digests open to the files; and with
`recompute`, every FedAvg (or FedProx) round's global adapter is recomputed from the update files and the
on-chain example counts, with the mean strategy.lora_aggregation names, and compared bit for bit with the
recorded digest (an svd round may match in its LoRA products instead: see `_svd_matches`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from flb.digests import ADAPTER_CONFIG, adapter_config_digest, adapter_file_digest, json_digest

ZERO_DIGEST = "00" * 32
SVD_TOLERANCE = 1e-5  # relative, in B A: another LAPACK build's SVD may differ from the server's in the last bits


@dataclass
class Report:
    """Problems (each fails --verify), notes (facts a reader should know, not failures) and passed checks."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    passed: int = 0

    def check(self, ok: bool, problem: str) -> bool:
        if ok:
            self.passed += 1
        else:
            self.problems.append(problem)
        return ok


def rounds_from(trail: dict) -> dict[int, dict]:
    """Every recorded round: previous and global digest, and per client its address, recorded digest, example
    count, score and signature (signatures from the call's data); sealed rounds carry their commitment."""
    rounds = {}
    for tx in _successful(trail):
        for event in tx["events"]:
            args = event["args"]
            if event["event"] == "RoundRecorded":
                rounds[args["round"]] = {
                    "previous": _hex(args["previousGlobalDigest"]), "global_digest": _hex(args["globalDigest"]),
                    "clients": args["clients"], "update_digests": [_hex(d) for d in args["updateDigests"]],
                    "num_examples": args["numExamples"], "scores": args["scores"],
                    "signatures": tx["args"].get("signatures", [])}
            elif event["event"] == "RoundSealed":
                rounds[args["round"]] = {
                    "previous": _hex(args["previousGlobalDigest"]), "global_digest": _hex(args["globalDigest"]),
                    "participants_commitment": _hex(args["participantsCommitment"]), "clients": []}
    return rounds


def scores_from(trail: dict) -> dict[str, int]:
    """Cumulative score per address: the sum of its ScoreAdd events."""
    scores: dict[str, int] = {}
    for event in _events(trail, "ScoreAdd"):
        scores[event["args"]["user"]] = scores.get(event["args"]["user"], 0) + event["args"]["score"]
    return scores


def registered_clients(trail: dict) -> list[str]:
    """Client addresses in registration order (the run registers them in client id order)."""
    return [event["args"]["client"] for event in _events(trail, "ClientRegistered")]


def verify(run_dir: Path, trail: dict, *, openings: dict[str, dict] | None = None, recompute: bool = False) -> Report:
    report = Report()
    openings = openings or {}
    rounds = rounds_from(trail)
    clients = registered_clients(trail)
    _check_deployment(report, trail)
    config_digest = _anchored_config(trail)
    report.check(config_digest is not None, "the contract anchors no adapter config (no AdapterConfigAnchored event)")
    _check_chain_of_rounds(report, rounds)
    for number, record in sorted(rounds.items()):
        folder = run_dir / f"round_{number}"
        _check_adapter_dir(report, folder, record["global_digest"], config_digest, f"round {number} global adapter")
        if "participants_commitment" in record:
            _check_sealed(report, number, record, openings, trail, folder, clients)
        else:
            _check_updates(report, number, record, openings, trail, folder, clients)
    for number in sorted(_rounds_on_disk(run_dir) - rounds.keys()):
        report.problems.append(f"round {number}: {run_dir / f'round_{number}'} exists but the chain holds no record of it")
    if rounds and (run_dir / "final_adapter").is_dir():
        last = max(rounds)
        _check_adapter_dir(report, run_dir / "final_adapter", rounds[last]["global_digest"], config_digest,
                           "final_adapter")
        _check_summary(report, run_dir, last, rounds[last]["global_digest"])
    elif rounds:
        report.notes.append(f"{run_dir / 'final_adapter'} is missing (a run that did not finish): not checked")
    _check_metrics(report, run_dir, rounds, clients)
    _check_uploads(report, trail, clients, openings)
    if recompute:
        _recompute(report, run_dir, rounds, clients)
    report.notes += [f"{entry['record']}: {entry['note']}" for entry in _resent(run_dir)]
    return report


# --- the contract and the chain of rounds --------------------------------------------------

def _check_deployment(report: Report, trail: dict) -> None:
    constructor = next((tx for tx in trail["transactions"] if tx["function"] == "constructor"), None)
    if constructor is None:
        report.notes.append("the deployment transaction is not in the trail (a contract given by chain.contract_address): "
                            "its bytecode was not compared with the committed artifact")
        return
    report.check(constructor["args"].get("code_matches_artifact") is True,
                 f"contract {trail['contract']}: its deployment code is not chain/artifacts/FLB.json's bytecode")


def _anchored_config(trail: dict) -> str | None:
    anchors = [_hex(e["args"]["adapterConfigDigest"]) for e in _events(trail, "AdapterConfigAnchored")]
    return anchors[0] if anchors else None


def _check_chain_of_rounds(report: Report, rounds: dict[int, dict]) -> None:
    numbers = sorted(rounds)
    report.check(numbers == list(range(len(numbers))), f"rounds on chain are {numbers}, not 0..{len(numbers) - 1}")
    for number in numbers:
        expected = ZERO_DIGEST if number == 0 else rounds.get(number - 1, {}).get("global_digest")
        report.check(rounds[number]["previous"] == expected,
                     f"round {number}: recorded after global digest {rounds[number]['previous']}, not round "
                     f"{number - 1}'s {expected}")


def _check_adapter_dir(report: Report, folder: Path, expected: str, config_digest: str | None, what: str) -> None:
    _check_file(report, folder / "adapter_model.safetensors", expected, what)
    config = folder / ADAPTER_CONFIG
    if not config.is_file():
        report.problems.append(f"{what}: {config} is missing")
    elif config_digest is not None:
        actual = adapter_config_digest(folder)
        report.check(actual == config_digest, f"{what}: {config} has digest {actual}, but the chain anchors "
                                              f"{config_digest} (its LoRA settings were changed)")


def _check_file(report: Report, path: Path, expected: str, what: str) -> bool:
    if not path.is_file():
        report.problems.append(f"{what}: {path} is missing; the chain holds digest {expected}")
        return False
    actual = adapter_file_digest(path)
    return report.check(actual == expected, f"{what}: {path} has digest {actual} but the chain holds {expected}")


# --- clients, signatures, commitments -------------------------------------------------------

def _check_updates(report: Report, number: int, record: dict, openings: dict, trail: dict, folder: Path,
                   clients: list[str]) -> None:
    from flb.attestation import update_signer

    domain = _domain(trail)
    for index, address in enumerate(record["clients"]):
        who = f"round {number} client {_client_id(clients, address)}"
        if not report.check(address in clients, f"{who}: {address} is not a registered client"):
            continue
        digest, count = record["update_digests"][index], record["num_examples"][index]
        signature = record["signatures"][index] if index < len(record["signatures"]) else None
        signer = _recovered(update_signer, domain, signature, round=number, previous_global_digest=record["previous"],
                            update_digest=digest, num_examples=count)
        report.check(signer == address, f"{who}: the recorded update is signed by {signer}, not by the client")
        path = folder / "updates" / f"client_{clients.index(address)}.safetensors"
        _check_recorded_file(report, path, digest, openings, who, committed_regime=count == 0)


def _check_recorded_file(report: Report, path: Path, recorded: str, openings: dict, who: str,
                         committed_regime: bool) -> None:
    """A file against the digest on chain: equal to it, or (under DP) opened by its owner's salt to it."""
    if not path.is_file():
        report.problems.append(f"{who}: {path} is missing; the chain holds {recorded}")
        return
    actual = adapter_file_digest(path)
    if actual == recorded:
        report.passed += 1
        return
    opening = openings.get(recorded)
    if opening is not None:
        report.check(_opens(opening, recorded) and opening["digest"] == actual,
                     f"{who}: {path} has digest {actual}, which the opening of commitment {recorded} does not give")
    elif committed_regime:
        report.notes.append(f"{who}: the chain holds a salted commitment; only the client's opening can check {path}")
    else:
        report.problems.append(f"{who}: {path} has digest {actual} but the chain holds {recorded}")


def _check_sealed(report: Report, number: int, record: dict, openings: dict, trail: dict, folder: Path,
                  clients: list[str]) -> None:
    opening = openings.get(record["participants_commitment"])
    if opening is None:
        report.notes.append(f"round {number}: who took part is sealed; only the server's opening reveals it")
        return
    participants = opening.get("value") or {}
    if not report.check(_opens(opening, record["participants_commitment"]) and
                        json_digest(participants) == opening["digest"],
                        f"round {number}: the opening does not open the sealed participants commitment"):
        return
    _check_updates(report, number, {**record, **participants}, openings, trail, folder, clients)


def _check_uploads(report: Report, trail: dict, clients: list[str], openings: dict) -> None:
    from flb.attestation import data_upload_signer

    domain = _domain(trail)
    for tx in _successful(trail):
        if tx["function"] != "uploadUserData":
            continue
        args = tx["args"]
        who = f"data upload of client {_client_id(clients, args['client'])}"
        signer = _recovered(data_upload_signer, domain, args["signature"], data_digest=args["dataDigest"])
        report.check(signer == args["client"] and args["client"] in clients,
                     f"{who}: signed by {signer}, not by the registered client {args['client']}")
        opening = openings.get(_hex(args["dataDigest"]))
        if opening is not None:
            report.check(_opens(opening, _hex(args["dataDigest"])), f"{who}: its opening does not open the commitment")


def _opens(opening: dict, commitment: str) -> bool:
    from flb.attestation import commitment as commit

    return commit(bytes.fromhex(opening["salt"]), opening["digest"]) == commitment


def _recovered(recover, domain, signature, **fields) -> str | None:
    from flb.errors import FLBError

    if domain is None or not signature:
        return None
    try:
        return recover(domain, signature=signature, **fields)
    except FLBError:
        return None


def _domain(trail: dict):
    from flb.attestation import SigningDomain

    return SigningDomain(trail["chain_id"], trail["contract"]) if trail.get("chain_id") else None


# --- the run's own summaries ------------------------------------------------------------------

def _check_summary(report: Report, run_dir: Path, last: int, last_digest: str) -> None:
    path = run_dir / "summary.json"
    if not path.is_file():
        report.problems.append(f"{path} is missing beside final_adapter/")
        return
    summary = json.loads(path.read_text())
    report.check(summary.get("final_digest") == last_digest,
                 f"summary.json: final_digest {summary.get('final_digest')} is not the last recorded round's {last_digest}")
    report.check(summary.get("rounds") == last, f"summary.json: says {summary.get('rounds')} rounds; the chain "
                                                f"records rounds up to {last}")


def _check_metrics(report: Report, run_dir: Path, rounds: dict[int, dict], clients: list[str]) -> None:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        report.problems.append(f"{path} is missing")
        return
    for row in (json.loads(line) for line in path.read_text().splitlines() if line.strip()):
        record = rounds.get(row["round"])
        if record is None:
            continue
        if row["kind"] == "round":
            report.check(row["global_digest"] == record["global_digest"],
                         f"metrics.jsonl: round {row['round']} global_digest {row['global_digest']} is not the chain's")
        elif record["clients"] and row["client_id"] < len(clients) and clients[row["client_id"]] in record["clients"]:
            index = record["clients"].index(clients[row["client_id"]])
            if record["num_examples"][index]:  # published: the recorded digest is the update's own
                report.check(row["digest"] == record["update_digests"][index],
                             f"metrics.jsonl: round {row['round']} client {row['client_id']} digest is not the chain's")


# --- recomputing FedAvg ------------------------------------------------------------------------

def _recompute(report: Report, run_dir: Path, rounds: dict[int, dict], clients: list[str]) -> None:
    """FedAvg rounds again from the update files and the on-chain example counts, in client id order (the
    server's order), with the run's mean (flb.lora_aggregation.MEANS): the result must have the recorded digest,
    bit for bit."""
    from safetensors.torch import load_file

    from flb.config import MEAN_STRATEGY_NAMES
    from flb.digests import adapter_digest
    from flb.lora_aggregation import MEANS

    settings = json.loads((run_dir / "config.json").read_text()).get("strategy", {})
    strategy, mode = settings.get("name"), settings.get("lora_aggregation", "separate")
    for number, record in sorted(rounds.items()):
        if not record["clients"] or record["previous"] == record["global_digest"]:
            continue
        if strategy not in MEAN_STRATEGY_NAMES or 0 in record["num_examples"]:
            report.notes.append(f"round {number}: not recomputable (strategy {strategy}, or DP: the noise is secret)")
            continue
        rows = sorted((clients.index(a), n) for a, n in zip(record["clients"], record["num_examples"]) if a in clients)
        paths = [run_dir / f"round_{number}" / "updates" / f"client_{i}.safetensors" for i, _ in rows]
        if not all(p.is_file() for p in paths):
            report.problems.append(f"round {number}: update files are missing; cannot recompute")
            continue
        mean = MEANS[mode]([(load_file(str(p)), n) for p, (_, n) in zip(paths, rows)])
        actual = adapter_digest(mean)
        if actual != record["global_digest"] and mode == "svd" and _svd_matches(report, number, mean, run_dir):
            continue
        report.check(actual == record["global_digest"],
                     f"round {number}: FedAvg of the recorded updates has digest {actual}, but the server recorded "
                     f"{record['global_digest']}: the global adapter is not the aggregate of the recorded updates")


def _svd_matches(report: Report, number: int, recomputed: dict, run_dir: Path) -> bool:
    """Whether the round's recorded global adapter (its file was checked against the chain) has LoRA products B A
    within SVD_TOLERANCE of the recomputed one's, noted as such: the products, not the factors, are what the model
    uses, and they are what another LAPACK build reproduces."""
    from safetensors.torch import load_file

    from flb.lora_aggregation import aggregation_error

    path = run_dir / f"round_{number}" / "adapter_model.safetensors"
    error = aggregation_error([(recomputed, 1.0)], load_file(str(path))) if path.is_file() else float("inf")
    if error <= SVD_TOLERANCE:
        report.passed += 1
        report.notes.append(f"round {number}: svd aggregate recomputed to {error:.1e} in B A, not bit for bit (its "
                            "SVD ran on another LAPACK build)")
    return error <= SVD_TOLERANCE


# --- helpers -----------------------------------------------------------------------------------

def _resent(run_dir: Path) -> list[dict]:
    """Records the ledger found lost by the chain and sent again (read from the outbox, never written)."""
    from chain.sender import LOST

    path = run_dir / "chain" / "outbox.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    resent = []
    for text in lines:
        try:
            line = json.loads(text)
        except ValueError:
            continue  # a torn last line: the ledger drops it when it opens the outbox
        if LOST in (line.get("error") or ""):
            resent.append({"record": line["id"], "note": line["error"]})
    return resent


def _rounds_on_disk(run_dir: Path) -> set[int]:
    return {int(p.name[6:]) for p in run_dir.glob("round_*") if p.is_dir() and p.name[6:].isdigit()}


def _client_id(clients: list[str], address: str) -> str:
    return str(clients.index(address)) if address in clients else address


def _successful(trail: dict):
    return (tx for tx in trail["transactions"] if tx["status"] == 1)


def _events(trail: dict, name: str):
    for tx in _successful(trail):
        yield from (event for event in tx["events"] if event["event"] == name)


def _hex(value) -> str:
    return value.removeprefix("0x") if isinstance(value, str) else bytes(value).hex()
