"""Ledger: the run's audit trail like a block explorer: contract and chain (for a chain file, the one in the run
directory shown), registered clients and their signed data uploads, the contribution score leaderboard with what the
score measures (chain.scoring), each round's digests with a verified / mismatch badge (chain.explorer's
own --verify), blocks, transactions and decoded events."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import rundata
import streamlit as st


def render(run: rundata.Run) -> None:
    st.title("Ledger")
    trail = run.trail()
    if trail is None:
        _no_trail(run)
        return
    from chain.explorer import account_names, format_trail, rounds_from, scores_from

    names = account_names(trail)
    deployment = trail.get("deployment") or {}
    owner = f" · owner `{deployment['owner']}`" if deployment.get("owner") else ""
    st.container(key="chain-source").markdown(
        f"**{trail.get('chain', 'chain')}** · chain id `{trail.get('chain_id')}` · "
        f"contract `{trail['contract']}`{owner}"
    )
    anchors = _event_args(trail, "RunAnchored")
    if anchors:
        st.caption(
            f"Anchored on chain: LoRA config `{anchors[0]['adapterConfigDigest']}` (sha256 of adapter_config.json)"
            f" and run spec `{anchors[0]['runSpecDigest']}` (sha256 of the run's rules: strategy, DP, scoring, "
            "sampling)"
        )
    rounds = rounds_from(trail)
    cards = st.columns(4)
    cards[0].metric("Blocks", len(trail["blocks"]))
    cards[1].metric("Transactions", len(trail["transactions"]))
    cards[2].metric("Rounds recorded", len(rounds))
    try:
        verification = rundata.verify(run)
    except rundata.RunProblem as exc:  # the trail is still worth showing
        verification = None
        st.error(str(exc), icon=":material/error:")
    else:
        cards[3].metric("Checks passed", verification.passed)
        _verdict(run, verification)

    scoring = run.config.get("chain", {}).get("scoring", "flb")
    st.subheader("Score leaderboard")
    st.container(key="score-meaning").caption(f"Score: {SCORE_MEANINGS[scoring]}")
    rows = [
        {"client": names.get(address, address), "address": address, "score": score}
        for address, score in scores_from(trail).items()
    ]
    rows.sort(key=lambda row: -row["score"])
    if rows:
        with st.container(key="leaderboard"):
            _paged_table([{"rank": rank, **row} for rank, row in enumerate(rows, 1)], "leaderboard")
    else:
        st.caption("No scores: none recorded yet, or who took part is sealed (chain.record_participants: false).")

    st.subheader("Clients and their data uploads")
    _clients(trail, names)

    st.subheader("Rounds")
    st.caption(
        f"Each round's score is what it added to the client's contribution score (chain.scoring: {scoring}, as above)."
    )
    problems = verification.problems if verification else {}
    for number, record in sorted(rounds.items()):
        _round(number, record, None if verification is None else problems.get(number, []), names)
    for problem in problems.get(-1, []):
        st.error(problem)

    st.subheader("Blocks and transactions")
    _transactions(trail, names)
    with st.expander("As `python -m chain.explorer` prints it"):
        st.code("\n".join(format_trail(trail)), language=None)


SCORE_MEANINGS = {  # chain/scoring.py and server/contribution.py compute them
    "flb": "each client's contribution score as the contract adds it up (chain.scoring: flb): for every round it "
    "takes part in, its data uploads × its update's size in bytes + its training examples. It measures "
    "participation and volume, not whether the update helped.",
    "quality": "each client's contribution score as the contract adds it up (chain.scoring: quality): for every "
    "round it takes part in, how much lower the held-out eval loss is with its update than without it "
    "(leave-one-out), in millionths of eval loss; 0 when it did not help.",
}


def _no_trail(run: rundata.Run) -> None:
    if not run.config.get("chain_record", False):
        st.info(
            f"Run {run.name} was recorded without a chain (`chain_record: false`), so it has no audit trail. "
            "Runs record on an in-process chain by default:",
            icon=":material/link_off:",
        )
        st.code("python main_simple_fl.py --set chain_record=true", language="bash")
    else:
        st.warning(
            f"{run.path / 'chain' / 'trail.json'} is not written yet: the ledger exports it as it records "
            "(see `chain/outbox.jsonl` for writes still pending).",
            icon=":material/hourglass_top:",
        )


def _verdict(run: rundata.Run, verification: rundata.Verification) -> None:
    """The banner, what --verify read (independent node or the run's own copy) and its notes."""
    count = verification.count
    if count:
        st.error(
            f"Mismatch: {count} problem{'s' * (count != 1)} between the files and the chain "
            f"(`python -m chain.explorer {run.path} --verify` reports the same)",
            icon=":material/gpp_bad:",
        )
    else:
        st.success(
            f"Verified: the run's files pass all {verification.passed} checks against the chain",
            icon=":material/verified:",
        )
    st.container(key="verify-source").caption(verification.source)
    if verification.notes:
        with st.expander(f"Notes from --verify ({len(verification.notes)})"):
            for note in verification.notes:
                st.markdown(f"- {note}")


def _clients(trail: dict, names: dict[str, str]) -> None:
    registered = [args["client"] for args in _event_args(trail, "ClientRegistered")]
    uploads = {args["user"]: args["dataDigest"] for args in _event_args(trail, "DataUpload")}
    if not registered:
        st.caption("No client registered yet.")
        return
    _paged_table(
        [
            {
                "client": names.get(address, address),
                "address": address,
                "data upload (digest, or a salted commitment under DP)": uploads.get(address, "not yet"),
            }
            for address in registered
        ],
        "clients",
    )


PAGE_ROWS = 50  # a longer list (thousands of registered clients) is shown a page at a time


def _paged_table(rows: list[dict], key: str) -> None:
    """`rows` as a table, PAGE_ROWS at a time with a page picker when there are more."""
    if len(rows) <= PAGE_ROWS:
        st.table(rows, hide_index=True)
        return
    pages = -(-len(rows) // PAGE_ROWS)
    page = st.number_input(f"Page (of {pages})", min_value=1, max_value=pages, value=1, key=f"{key}-page")
    first = (page - 1) * PAGE_ROWS
    st.table(rows[first : first + PAGE_ROWS], hide_index=True)
    st.caption(f"rows {first + 1}-{min(first + PAGE_ROWS, len(rows))} of {len(rows):,}")


def _round(number: int, record: dict, problems: list[str] | None, names: dict[str, str]) -> None:
    """One round's record; `problems` None when the run could not be checked."""
    with st.container(border=True, key=f"round-{number}"):
        head, badge = st.columns([5, 1])
        head.markdown(f"**Round {number}** · global adapter `{record['global_digest']}`")
        with badge:
            if problems is None:
                st.badge("not checked", icon=":material/help:", color="gray")
            elif problems:
                st.badge("mismatch", icon=":material/close:", color="red")
            else:
                st.badge("verified", icon=":material/check:", color="green")
        for problem in problems or []:
            st.error(problem)
        if "participants_commitment" in record:
            st.caption(
                f"Who took part is sealed: commitment `{record['participants_commitment']}` "
                "(chain.record_participants: false; the server's opening reveals it to an auditor)."
            )
        elif record["clients"]:
            starts = record.get("start_rounds", [number - 1] * len(record["clients"]))  # fedbuff: from older rounds
            st.table(
                [
                    {
                        "client": names.get(address, address),
                        "update digest": digest,
                        "examples": str(count) if count else "not published (DP)",
                        "score": score,
                        **({"started from": f"round {start}"} if "start_rounds" in record else {}),
                    }
                    for address, digest, count, score, start in zip(
                        record["clients"], record["update_digests"], record["num_examples"], record["scores"], starts
                    )
                ],
                hide_index=True,
            )
        else:
            st.caption("No client updates (the base adapter, or a skipped round).")


def _event_args(trail: dict, name: str) -> list[dict]:
    return [
        event["args"]
        for tx in trail["transactions"]
        if tx["status"] == 1
        for event in tx["events"]
        if event["event"] == name
    ]


def _transactions(trail: dict, names: dict[str, str]) -> None:
    blocks = {tx_hash: block for block in trail["blocks"] for tx_hash in block["transactions"]}
    for tx in trail["transactions"]:
        block = blocks.get(tx["hash"], {})
        when = datetime.fromtimestamp(block["timestamp"], UTC).strftime("%Y-%m-%d %H:%M:%S") if block else "?"
        status = "ok" if tx["status"] == 1 else "REVERTED"
        counts = Counter(event["event"] for event in tx["events"])
        events = ", ".join(name if n == 1 else f"{name} ×{n}" for name, n in counts.items()) or "no events"
        with st.expander(
            f"block {tx['block']} · {when} · `{tx['function']}` from {names.get(tx['from'], tx['from'])} "
            f"· {status} · gas {tx['gas_used']} · {events}"
        ):
            st.markdown(f"tx `{tx['hash']}` · block `{block.get('hash', '?')}` · nonce {tx['nonce']}")
            if trail.get("explorer_url"):
                st.markdown(f"[open in the chain's explorer]({trail['explorer_url'].format(tx=tx['hash'])})")
            st.json({"call": {tx["function"]: tx["args"]}, "events": tx["events"]}, expanded=2)
