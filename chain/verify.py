"""Check a run directory against what a chain node holds, without trusting the server that wrote either.

docs/audit-spec.md is the specification this module implements (and examples/audit/verify_run.py implements again,
independently). Input: the trail collected from a node (never the run's own trail.json), optionally the openings of
salted commitments from their owners, the addresses the auditor knows to be real participants, and a way to replay
the run's strategy. Checked: the contract was deployed from the committed artifact; the run's config.json is the run
spec the contract anchors, and the anchored kind of rounds (buffered, with its max staleness, or synchronous) is the
one its strategy has; every participant was registered before round 0 (or is one the auditor trusts); rounds are
contiguous and chained, and a round without clients changes nothing; in a buffered (fedbuff) run every update
started at most max staleness rounds before the previous round, and each client's start rounds increase; every
global adapter, update file, adapter_config.json, final_adapter/ and every metrics.jsonl round row (so eval loss,
accuracy, suites and privacy) match the chain, and summary.json says what those rows say; each recorded update and
data upload is signed by its registered client (a buffered update over the round it started from); committed digests
open to the files; each score is re-derived where the scoring formula allows; and with a replayer every round whose
aggregate is deterministic is recomputed from the update files and compared bit for bit with the recorded digest (an
svd round may match in its LoRA products instead: see `_svd_matches`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from flb.audit.digests import (
    ADAPTER_CONFIG,
    EXTRAS_PREFIX,
    adapter_config_digest,
    adapter_file_digest,
    json_digest,
    metrics_digest,
)

ZERO_DIGEST = "00" * 32
ROUND_EVENTS = ("RoundRecorded", "BufferedRoundRecorded", "RoundSealed")
SVD_TOLERANCE = 1e-5  # relative, in B A: another LAPACK build's SVD may differ from the server's in the last bits


@dataclass
class Report:
    """Facts (what was checked: the contract, the participants), problems (each fails --verify), notes (what could
    not be checked, and why: each fails --verify --strict) and passed checks."""

    facts: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    passed: int = 0

    def check(self, ok: bool, problem: str) -> bool:
        if ok:
            self.passed += 1
        else:
            self.problems.append(problem)
        return ok


@dataclass(frozen=True)
class Replayer:
    """How the run's strategy aggregates, handed over by the caller (server/replay.py: chain/ imports no server/):
    `not_replayable(config)` says why no round can be recomputed, or None; `replay(config, rounds)` takes
    (round, previous global adapter, [(update file content, on-chain example count, start round, base adapter)] in
    the chain's order) per round, the base being the recorded global adapter of the start round (in a synchronous
    round: round - 1 and the previous adapter), and yields (round, recomputed global adapter)."""

    not_replayable: Callable[[dict], str | None]
    replay: Callable[[dict, Iterable[tuple]], Iterator[tuple[int, dict]]]


def rounds_from(trail: dict) -> dict[int, dict]:
    """Every recorded round: previous, global and metrics digest, and per client its address, recorded digest,
    example count, score and signature (signatures from the call's data); buffered rounds carry each client's start
    round ("start_rounds"), sealed rounds their commitment."""
    rounds = {}
    for tx in _successful(trail):
        for event in tx["events"]:
            args = event["args"]
            if event["event"] not in ROUND_EVENTS:
                continue
            record = {
                "previous": _hex(args["previousGlobalDigest"]),
                "global_digest": _hex(args["globalDigest"]),
                "metrics_digest": _hex(args["metricsDigest"]),
                "clients": [],
            }
            if event["event"] != "RoundSealed":
                record.update(
                    clients=args["clients"],
                    update_digests=[_hex(d) for d in args["updateDigests"]],
                    num_examples=args["numExamples"],
                    scores=args["scores"],
                    signatures=tx["args"].get("signatures", []),
                )
            if event["event"] == "BufferedRoundRecorded":
                record["start_rounds"] = args["startRounds"]
            elif event["event"] == "RoundSealed":
                record["participants_commitment"] = _hex(args["participantsCommitment"])
            rounds[args["round"]] = record
    return rounds


def scores_from(trail: dict) -> dict[str, int]:
    """Cumulative score per address: the sum of its ScoreAdd events."""
    scores: dict[str, int] = {}
    for event in _events(trail, "ScoreAdd"):
        scores[event["args"]["user"]] = scores.get(event["args"]["user"], 0) + event["args"]["score"]
    return scores


def registrations(trail: dict) -> dict[str, int]:
    """Each registered client address, in registration order, and the round the contract was at when it was
    registered (0: before the run began)."""
    return {event["args"]["client"]: event["args"]["round"] for event in _events(trail, "ClientRegistered")}


def registered_clients(trail: dict) -> dict[str, int | None]:
    """Client addresses in registration order, each with its client id as the run lists it (chain.trail.client_ids;
    None for an address the run does not list)."""
    from chain.trail import client_ids

    ids = client_ids(trail.get("accounts") or {})
    return {address: ids.get(address) for address in registrations(trail)}


def verify(
    run_dir: Path,
    trail: dict,
    *,
    openings: dict[str, dict] | None = None,
    replayer: Replayer | None = None,
    trusted_clients: set[str] | None = None,
) -> Report:
    report = Report()
    openings = openings or {}
    rounds = rounds_from(trail)
    clients = registered_clients(trail)
    _describe_contract(report, trail)
    _check_deployment(report, trail)
    anchors = _anchors(trail)
    report.check(anchors is not None, "the contract anchors no adapter config and run spec (no RunAnchored event)")
    config = _check_run_spec(report, run_dir, anchors)
    _check_participants(report, trail, rounds, trusted_clients)
    _check_chain_of_rounds(report, rounds)
    if anchors is not None:
        _check_round_kind(report, rounds, clients, anchors, config)
    config_digest = anchors["adapter_config"] if anchors else None
    for number, record in sorted(rounds.items()):
        folder = run_dir / f"round_{number}"
        _check_adapter_dir(report, folder, record["global_digest"], config_digest, f"round {number} global adapter")
        if "participants_commitment" in record:
            record.update(_check_sealed(report, number, record, openings, trail, folder, clients, rounds))
        else:
            _check_updates(report, number, record, openings, trail, folder, clients, rounds)
    for number in sorted(_rounds_on_disk(run_dir) - rounds.keys()):
        report.problems.append(
            f"round {number}: {run_dir / f'round_{number}'} exists but the chain holds no record of it"
        )
    rows = _check_metrics(report, run_dir, rounds, clients)
    if rounds and (run_dir / "final_adapter").is_dir():
        last = max(rounds)
        _check_adapter_dir(
            report, run_dir / "final_adapter", rounds[last]["global_digest"], config_digest, "final_adapter"
        )
        _check_summary(report, run_dir, last, rounds[last]["global_digest"], rows)
    elif rounds:
        report.notes.append(f"{run_dir / 'final_adapter'} is missing (a run that did not finish): not checked")
    _check_uploads(report, trail, clients, openings)
    _check_scores(report, run_dir, trail, rounds, clients, config)
    if replayer is not None:
        _recompute(report, run_dir, rounds, clients, config, replayer, (anchors or {}).get("max_staleness") or 0)
    report.notes += [f"{entry['record']}: {entry['note']}" for entry in _resent(run_dir)]
    return report


# --- the contract, its anchors and its participants -------------------------------------------------


def _describe_contract(report: Report, trail: dict) -> None:
    constructor = _constructor(trail)
    deployed = (
        f"deployed by {constructor['from']} in block {constructor['block']}"
        if constructor
        else "its deployment transaction is not among the contract's transactions read"
    )
    report.facts.append(f"contract {trail['contract']} on chain id {trail.get('chain_id')}, {deployed}")


def _constructor(trail: dict) -> dict | None:
    return next((tx for tx in trail["transactions"] if tx["function"] == "constructor"), None)


def _check_deployment(report: Report, trail: dict) -> None:
    constructor = _constructor(trail)
    if constructor is None:
        report.notes.append(
            "the deployment transaction is not in the trail (a contract given by chain.contract_address): "
            "its bytecode was not compared with the committed artifact"
        )
        return
    report.check(
        constructor["args"].get("code_matches_artifact") is True,
        f"contract {trail['contract']}: its deployment code is not chain/artifacts/FLB.json's bytecode",
    )


def _anchors(trail: dict) -> dict | None:
    """The run's anchors: adapter config and run spec digests, and max_staleness (None: synchronous rounds)."""
    anchors = [
        {
            "adapter_config": _hex(e["args"]["adapterConfigDigest"]),
            "run_spec": _hex(e["args"]["runSpecDigest"]),
            "max_staleness": e["args"]["maxStaleness"] if e["args"]["buffered"] else None,
        }
        for e in _events(trail, "RunAnchored")
    ]
    return anchors[0] if anchors else None


def _check_run_spec(report: Report, run_dir: Path, anchors: dict | None) -> dict | None:
    """config.json when its run spec is the one the chain anchors (the rules every later check reads), else None."""
    from flb.audit.run_spec import run_spec_digest

    path = run_dir / "config.json"
    if not path.is_file():
        report.problems.append(f"{path} is missing: the run's rules cannot be checked against the chain")
        return None
    config = json.loads(path.read_text())
    actual = run_spec_digest(config)
    if anchors is None or not report.check(
        actual == anchors["run_spec"],
        (
            f"config.json: its run spec (strategy, DP, scoring, sampling) has digest {actual}, but the chain anchors "
            f"{anchors['run_spec']}: the run's rules were edited after the fact; nothing is recomputed or re-derived "
            "from it"
        ),
    ):
        return None
    return config


def _check_participants(report: Report, trail: dict, rounds: dict[int, dict], trusted: set[str] | None) -> None:
    """Every registered client with the round it was registered at and the rounds it is listed in; one the auditor
    does not trust (--clients), or without that list one registered after round 0 began, is a problem."""
    listed: dict[str, list[int]] = {}
    for number, record in sorted(rounds.items()):
        for address in record["clients"]:
            listed.setdefault(address, []).append(number)
    for address, registered_at in registrations(trail).items():
        report.facts.append(
            f"participant {address}: registered before round {registered_at}, in rounds {listed.get(address, [])}"
        )
        if trusted is not None:
            report.check(
                address.lower() in trusted,
                f"participant {address} is registered but is not in --clients: "
                "an address the auditor does not know to be a real participant",
            )
        else:
            report.check(
                registered_at == 0,
                f"participant {address} was registered before round {registered_at}, "
                "after the run began (a key the server added mid-run?); pass --clients "
                "FILE with the real participants' addresses to accept it",
            )


def _check_chain_of_rounds(report: Report, rounds: dict[int, dict]) -> None:
    numbers = sorted(rounds)
    report.check(numbers == list(range(len(numbers))), f"rounds on chain are {numbers}, not 0..{len(numbers) - 1}")
    for number in numbers:
        record = rounds[number]
        expected = ZERO_DIGEST if number == 0 else rounds.get(number - 1, {}).get("global_digest")
        report.check(
            record["previous"] == expected,
            f"round {number}: recorded after global digest {record['previous']}, not round {number - 1}'s {expected}",
        )
        if number > 0 and "participants_commitment" not in record and not record["clients"]:
            report.check(
                record["global_digest"] == record["previous"],
                f"round {number}: records no client but a new global adapter {record['global_digest']}: an "
                "aggregate of no updates",
            )


def _check_round_kind(
    report: Report, rounds: dict[int, dict], clients: dict[str, int | None], anchors: dict, config: dict | None
) -> None:
    """The anchored kind of rounds is the run spec's (buffered, with strategy.fedbuff.max_staleness, for strategy
    fedbuff; synchronous for any other); each round with clients is of that kind; in a buffered run every update
    started from a round before this one, at most max staleness rounds before the previous round, and each client's
    start rounds increase (so no signed update counts twice)."""
    max_staleness = anchors["max_staleness"]
    if config is not None:
        strategy = config["strategy"]
        expected = strategy["fedbuff"]["max_staleness"] if strategy["name"] == "fedbuff" else None
        report.check(
            max_staleness == expected,
            f"config.json: strategy {strategy['name']} has {_rounds_kind(expected)}, but the chain anchors "
            f"{_rounds_kind(max_staleness)}",
        )
    last_start: dict[str, int] = {}
    for number, record in sorted(rounds.items()):
        if not record["clients"] or "participants_commitment" in record:
            continue
        buffered = "start_rounds" in record
        as_anchored = report.check(
            buffered == (max_staleness is not None),
            f"round {number}: recorded as {'buffered' if buffered else 'synchronous'}, but the chain anchors "
            f"{_rounds_kind(max_staleness)}",
        )
        if not (as_anchored and buffered):
            continue
        for address, start in zip(record["clients"], record["start_rounds"]):
            who = f"round {number} client {_client_id(clients, address)}"
            report.check(
                0 <= number - 1 - start <= max_staleness,
                f"{who}: its update started from round {start}, staleness {number - 1 - start}, outside the anchored "
                f"0..{max_staleness}",
            )
            report.check(
                start > last_start.get(address, -1),
                f"{who}: its update started from round {start}, not after its update recorded before (round "
                f"{last_start.get(address)}): one signed update counted twice?",
            )
            last_start[address] = start


def _rounds_kind(max_staleness: int | None) -> str:
    return "synchronous rounds" if max_staleness is None else f"buffered rounds (max staleness {max_staleness})"


def _check_adapter_dir(report: Report, folder: Path, expected: str, config_digest: str | None, what: str) -> None:
    _check_file(report, folder / "adapter_model.safetensors", expected, what)
    config = folder / ADAPTER_CONFIG
    if not config.is_file():
        report.problems.append(f"{what}: {config} is missing")
    elif config_digest is not None:
        actual = adapter_config_digest(folder)
        report.check(
            actual == config_digest,
            f"{what}: {config} has digest {actual}, but the chain anchors "
            f"{config_digest} (its LoRA settings were changed)",
        )


def _check_file(report: Report, path: Path, expected: str, what: str) -> bool:
    if not path.is_file():
        report.problems.append(f"{what}: {path} is missing; the chain holds digest {expected}")
        return False
    actual = adapter_file_digest(path)
    return report.check(actual == expected, f"{what}: {path} has digest {actual} but the chain holds {expected}")


# --- clients, signatures, commitments -------------------------------------------------------


def _check_updates(
    report: Report,
    number: int,
    record: dict,
    openings: dict,
    trail: dict,
    folder: Path,
    clients: dict[str, int | None],
    rounds: dict[int, dict],
) -> None:
    from flb.audit.attestation import update_signer

    domain = _domain(trail)
    starts = record.get("start_rounds") or [number - 1] * len(record["clients"])
    for index, (address, start) in enumerate(zip(record["clients"], starts)):
        who = f"round {number} client {_client_id(clients, address)}"
        if not report.check(address in clients, f"{who}: {address} is not a registered client"):
            continue
        digest, count = record["update_digests"][index], record["num_examples"][index]
        signature = record["signatures"][index] if index < len(record["signatures"]) else None
        # each client signs the round after the one it started from, and that round's global digest
        started_from = record["previous"] if start == number - 1 else rounds.get(start, {}).get("global_digest")
        signer = _recovered(
            update_signer,
            domain,
            signature if started_from is not None else None,
            round=start + 1,
            previous_global_digest=started_from,
            update_digest=digest,
            num_examples=count,
        )
        report.check(signer == address, f"{who}: the recorded update is signed by {signer}, not by the client")
        path = folder / "updates" / f"client_{_client_id(clients, address)}.safetensors"
        _check_recorded_file(report, path, digest, openings, who, committed_regime=count == 0)


def _check_recorded_file(
    report: Report, path: Path, recorded: str, openings: dict, who: str, committed_regime: bool
) -> None:
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
        report.check(
            _opens(opening, recorded) and opening["digest"] == actual,
            f"{who}: {path} has digest {actual}, which the opening of commitment {recorded} does not give",
        )
    elif committed_regime:
        report.notes.append(f"{who}: the chain holds a salted commitment; only the client's opening can check {path}")
    else:
        report.problems.append(f"{who}: {path} has digest {actual} but the chain holds {recorded}")


def _check_sealed(
    report: Report,
    number: int,
    record: dict,
    openings: dict,
    trail: dict,
    folder: Path,
    clients: dict[str, int | None],
    rounds: dict[int, dict],
) -> dict:
    """The sealed round's participants (clients, update digests, example counts, signatures) when an opening opens
    its commitment, checked like a published round's; else {}."""
    opening = openings.get(record["participants_commitment"])
    if opening is None:
        report.notes.append(f"round {number}: who took part is sealed; only the server's opening reveals it")
        return {}
    participants = opening.get("value") or {}
    if not report.check(
        _opens(opening, record["participants_commitment"]) and json_digest(participants) == opening["digest"],
        f"round {number}: the opening does not open the sealed participants commitment",
    ):
        return {}
    _check_updates(report, number, {**record, **participants}, openings, trail, folder, clients, rounds)
    return participants


def _check_uploads(report: Report, trail: dict, clients: dict[str, int | None], openings: dict) -> None:
    from flb.audit.attestation import data_upload_signer

    domain = _domain(trail)
    for tx in _successful(trail):
        if tx["function"] != "uploadUserData":
            continue
        args = tx["args"]
        for client, data_digest, signature in zip(args["clients"], args["dataDigests"], args["signatures"]):
            who = f"data upload of client {_client_id(clients, client)}"
            signer = _recovered(data_upload_signer, domain, signature, data_digest=data_digest)
            report.check(
                signer == client and client in clients,
                f"{who}: signed by {signer}, not by the registered client {client}",
            )
            opening = openings.get(_hex(data_digest))
            if opening is not None:
                report.check(_opens(opening, _hex(data_digest)), f"{who}: its opening does not open the commitment")


def _opens(opening: dict, commitment: str) -> bool:
    from flb.audit.attestation import commitment as commit

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
    from flb.audit.attestation import SigningDomain

    return SigningDomain(trail["chain_id"], trail["contract"]) if trail.get("chain_id") else None


# --- the run's own summaries ------------------------------------------------------------------


def _check_metrics(
    report: Report, run_dir: Path, rounds: dict[int, dict], clients: dict[str, int | None]
) -> list[dict]:
    """Each recorded round's metrics.jsonl row against the chain's metrics digest (so its eval loss, accuracy,
    suites, privacy... are the ones recorded when the round was), and each published update's digest; returns the
    checked round rows in order."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        report.problems.append(f"{path} is missing")
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    checked = []
    for number, record in sorted(rounds.items()):
        found = [row for row in rows if row["kind"] == "round" and row["round"] == number]
        if not report.check(len(found) == 1, f"metrics.jsonl: {len(found)} rows for round {number}, not one"):
            continue
        row = found[0]
        report.check(
            row.get("global_digest") == record["global_digest"],
            f"metrics.jsonl: round {number} global_digest {row.get('global_digest')} is not the chain's",
        )
        actual = metrics_digest(row)
        if report.check(
            actual == record["metrics_digest"],
            f"metrics.jsonl: round {number} row has digest {actual}, but the chain holds "
            f"{record['metrics_digest']} (its eval loss, accuracy or other metrics were changed)",
        ):
            checked.append(row)
    for number in sorted({row["round"] for row in rows if row["kind"] == "round"} - rounds.keys()):
        report.problems.append(f"metrics.jsonl: a row for round {number}, which the chain does not hold")
    addresses = {client_id: address for address, client_id in clients.items()}
    for row in rows:
        record = rounds.get(row["round"])
        if row["kind"] != "client" or record is None or not record["clients"]:
            continue
        address = addresses.get(row["client_id"])
        if address in record["clients"]:
            index = record["clients"].index(address)
            if record["num_examples"][index]:  # published: the recorded digest is the update's own
                report.check(
                    row["digest"] == record["update_digests"][index],
                    f"metrics.jsonl: round {row['round']} client {row['client_id']} digest is not the chain's",
                )
    return checked


def _check_summary(report: Report, run_dir: Path, last: int, last_digest: str, rows: list[dict]) -> None:
    """summary.json: the last round and its digest, and every number it derives from the round rows (the rows checked
    against the chain; flb.run.summary.summary_numbers derives them)."""
    from flb.run.summary import summary_numbers

    path = run_dir / "summary.json"
    if not path.is_file():
        report.problems.append(f"{path} is missing beside final_adapter/")
        return
    summary = json.loads(path.read_text())
    report.check(
        summary.get("final_digest") == last_digest,
        f"summary.json: final_digest {summary.get('final_digest')} is not the last recorded round's {last_digest}",
    )
    report.check(
        summary.get("rounds") == last,
        f"summary.json: says {summary.get('rounds')} rounds; the chain records rounds up to {last}",
    )
    if len(rows) != last + 1:
        report.notes.append("summary.json: its numbers were not compared (not every round row matches the chain)")
        return
    for key, expected in summary_numbers(rows).items():
        report.check(
            summary.get(key) == expected,
            f"summary.json: {key} is {summary.get(key)!r}, but the round rows the chain anchors give {expected!r}",
        )


# --- scores -------------------------------------------------------------------------------------


def _check_scores(
    report: Report,
    run_dir: Path,
    trail: dict,
    rounds: dict[int, dict],
    clients: dict[str, int | None],
    config: dict | None,
) -> None:
    """Each ScoreAdd re-derived where the anchored scoring formula allows: flb scores (the client's data uploads
    recorded before the round x its update's tensor bytes + its recorded example count) from the chain and the update
    files; quality scores (leave-one-out eval-loss gains) are server-asserted and said to be."""
    published = {n: r for n, r in rounds.items() if r["clients"] and "participants_commitment" not in r}
    if not published:
        return
    if config is None:
        report.notes.append("scores: not re-derived (config.json is not the anchored run spec)")
        return
    if config["chain"]["scoring"] != "flb":
        report.notes.append(
            f"scores of rounds {sorted(published)}: server-asserted (chain.scoring "
            f"{config['chain']['scoring']}: leave-one-out eval-loss gains, which only the server's "
            "evaluation data can re-derive)"
        )
        return
    uploads = _uploads_before_each_round(trail)
    for number, record in sorted(published.items()):
        for address, count, score in zip(record["clients"], record["num_examples"], record["scores"]):
            path = run_dir / f"round_{number}" / "updates" / f"client_{_client_id(clients, address)}.safetensors"
            if not path.is_file():
                continue  # its own problem already
            update_bytes = _tensor_bytes(path)
            expected = uploads[number].get(address, 0) * update_bytes + count
            report.check(
                score == expected,
                f"round {number} client {_client_id(clients, address)}: score {score} on "
                f"chain, but the flb formula gives {expected} ({uploads[number].get(address, 0)} "
                f"uploads x {update_bytes} update bytes + {count} examples)",
            )


def _uploads_before_each_round(trail: dict) -> dict[int, dict[str, int]]:
    """round -> address -> data uploads recorded before that round's record, in chain order."""
    counts: dict[str, int] = {}
    before: dict[int, dict[str, int]] = {}
    for tx in _successful(trail):
        for event in tx["events"]:
            if event["event"] == "DataUpload":
                counts[event["args"]["user"]] = counts.get(event["args"]["user"], 0) + 1
            elif event["event"] in ROUND_EVENTS:
                before[event["args"]["round"]] = dict(counts)
    return before


def _tensor_bytes(path: Path) -> int:
    """Bytes of an update file's adapter tensors (its extras, SCAFFOLD's delta c_i, left out), as the client counts
    its update's size."""
    from safetensors.torch import load_file

    return sum(
        t.numel() * t.element_size() for name, t in load_file(str(path)).items() if not name.startswith(EXTRAS_PREFIX)
    )


# --- recomputing every round ------------------------------------------------------------------------


def _recompute(
    report: Report,
    run_dir: Path,
    rounds: dict[int, dict],
    clients: dict[str, int | None],
    config: dict | None,
    replayer: Replayer,
    max_staleness: int,
) -> None:
    """Every round with clients again, by the anchored rules, from the update files and the on-chain example counts:
    the result must have the recorded digest, bit for bit (svd: see _svd_matches). Rounds whose aggregate depends on
    a secret are noted with the reason."""
    from flb.adapters.compression import MalformedPayload
    from flb.audit.digests import adapter_digest

    with_clients = {n: r for n, r in sorted(rounds.items()) if r["clients"]}
    sealed = [n for n, r in sorted(rounds.items()) if "participants_commitment" in r and not r["clients"]]
    report.notes += [
        f"round {n}: not recomputed (sealed: only the server's opening reveals who took part)" for n in sealed
    ]
    if not with_clients:
        return
    if config is None:
        report.problems.append(
            f"rounds {sorted(with_clients)}: not recomputed, as config.json is not the run spec the chain anchors"
        )
        return
    reason = replayer.not_replayable(config)
    if reason is not None:
        report.notes += [f"round {n}: not recomputable ({reason})" for n in with_clients]
        return
    strategy, mode = config["strategy"]["name"], config["strategy"].get("lora_aggregation", "separate")
    inputs = _published_rounds(report, run_dir, rounds, with_clients, clients, sealed, max_staleness, _ranks(config))
    replayed = replayer.replay(config, inputs)
    while True:
        try:
            number, recomputed = next(replayed)
        except StopIteration:
            return
        except MalformedPayload as exc:
            report.problems.append(
                f"an update file does not decode as comm.compression {config['comm']['compression']} ({exc}): that "
                "round and later are not recomputed"
            )
            return
        recorded = with_clients[number]["global_digest"]
        actual = adapter_digest(recomputed)
        if actual != recorded and mode == "svd" and _svd_matches(report, number, recomputed, run_dir):
            continue
        report.check(
            actual == recorded,
            f"round {number}: {strategy} of the recorded updates has digest {actual}, but the server recorded "
            f"{recorded}: the global adapter is not the aggregate of the recorded updates",
        )


def _published_rounds(
    report: Report,
    run_dir: Path,
    rounds: dict[int, dict],
    with_clients: dict[int, dict],
    clients: dict[str, int | None],
    sealed: list[int],
    max_staleness: int,
    rank_of: Callable[[int], int] | None,
) -> Iterator[tuple]:
    """(round, previous global adapter, [(update file content, on-chain count, start round, base adapter)] in the
    chain's order) for each round in turn, the base being the recorded global adapter of the round the update started
    from (the previous one in a synchronous round), checked against the chain's digest, at the client's rank under
    model.lora.client_ranks (`rank_of`); a missing or altered file stops the replay there (a stateful strategy needs
    every round before the next)."""
    from safetensors.torch import load_file

    from flb.audit.digests import adapter_digest

    recorded: dict[int, dict] = {}  # global adapters by round, as far back as an update may start
    for number, record in with_clients.items():
        starts = record.get("start_rounds") or [number - 1] * len(record["clients"])
        ids = [_client_id(clients, address) for address in record["clients"]]
        paths = [run_dir / f"round_{number}" / "updates" / f"client_{client_id}.safetensors" for client_id in ids]
        bases = {start: run_dir / f"round_{start}" / "adapter_model.safetensors" for start in {number - 1, *starts}}
        missing = [str(p) for p in (*bases.values(), *paths) if not p.is_file()]
        if missing or any(n < number for n in sealed):
            why = f"{', '.join(missing)} missing" if missing else "a sealed round before it was not opened"
            report.problems.append(f"round {number} and later: not recomputed ({why})")
            return
        for start in sorted(bases.keys() - recorded.keys()):
            adapter = load_file(str(bases[start]))
            if start not in rounds or adapter_digest(adapter) != rounds[start]["global_digest"]:
                report.problems.append(
                    f"round {number} and later: not recomputed ({bases[start]} is not the global adapter the chain "
                    f"records for round {start})"
                )
                return
            recorded[start] = adapter
        yield (
            number,
            recorded[number - 1],
            [
                (load_file(str(path)), count, start, _at_rank(recorded[start], rank_of, client_id))
                for path, count, start, client_id in zip(paths, record["num_examples"], starts, ids)
            ],
        )
        for start in [s for s in recorded if s < number - max_staleness]:  # no later update starts this far back
            del recorded[start]


def _ranks(config: dict) -> Callable[[int], int] | None:
    """A client's LoRA rank by its id, under model.lora.client_ranks; None when every client has the global rank."""
    from flb.config import config_from_dict

    lora = config_from_dict(config).model.lora
    return lora.rank_of if lora.client_ranks else None


def _at_rank(adapter: dict, rank_of: Callable[[int], int] | None, client_id: str) -> dict:
    """The global adapter as client `client_id` started from it: its first components, as many as its rank."""
    from flb.adapters.ranks import at_rank

    return adapter if rank_of is None else at_rank(adapter, rank_of(int(client_id)))


def _svd_matches(report: Report, number: int, recomputed: dict, run_dir: Path) -> bool:
    """Whether the round's recorded global adapter (its file was checked against the chain) has LoRA products B A
    within SVD_TOLERANCE of the recomputed one's, noted as such: the products, not the factors, are what the model
    uses, and they are what another LAPACK build reproduces."""
    from safetensors.torch import load_file

    from flb.adapters.lora_aggregation import aggregation_error

    path = run_dir / f"round_{number}" / "adapter_model.safetensors"
    error = aggregation_error([(recomputed, 1.0)], load_file(str(path))) if path.is_file() else float("inf")
    if error <= SVD_TOLERANCE:
        report.passed += 1
        report.notes.append(
            f"round {number}: svd aggregate recomputed to {error:.1e} in B A, not bit for bit (its "
            "SVD ran on another LAPACK build)"
        )
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


def _client_id(clients: dict[str, int | None], address: str) -> str:
    """The client id the run lists for `address` (its update files are client_<id>), or the address itself."""
    client_id = clients.get(address)
    return address if client_id is None else str(client_id)


def _successful(trail: dict):
    return (tx for tx in trail["transactions"] if tx["status"] == 1)


def _events(trail: dict, name: str):
    for tx in _successful(trail):
        yield from (event for event in tx["events"] if event["event"] == name)


def _hex(value) -> str:
    return value.removeprefix("0x") if isinstance(value, str) else bytes(value).hex()
