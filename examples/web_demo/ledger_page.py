"""Ledger: the run's audit trail like a block explorer: contract and chain, score leaderboard, each
round's digests with a verified / mismatch badge (chain.explorer's own --verify), blocks,
transactions and decoded events."""
from __future__ import annotations

from datetime import datetime, timezone

import streamlit as st

import rundata


def render(run: rundata.Run) -> None:
    st.title("Ledger")
    trail = run.trail()
    if trail is None:
        _no_trail(run)
        return
    from chain.explorer import account_names, format_trail, rounds_from, scores_from

    names = account_names(trail)
    deployment = trail.get("deployment") or {}
    st.markdown(f"**{trail.get('chain', 'chain')}** · chain id `{trail.get('chain_id')}` · "
                f"contract `{trail['contract']}`" + (f" · owner `{deployment['owner']}`" if deployment.get("owner") else ""))
    problems, matched = rundata.verify(run, trail)
    cards = st.columns(4)
    cards[0].metric("Blocks", len(trail["blocks"]))
    cards[1].metric("Transactions", len(trail["transactions"]))
    cards[2].metric("Rounds recorded", len(rounds_from(trail)))
    cards[3].metric("Adapter files matching the chain", matched)
    if problems:
        count = sum(map(len, problems.values()))
        st.error(f"Mismatch: {count} problem{'s' * (count != 1)} between the files and the chain "
                 f"(`python -m chain.explorer --verify {run.path}` reports the same)", icon=":material/gpp_bad:")
    else:
        st.success(f"Verified: all {matched} adapter files match the digests on chain", icon=":material/verified:")

    st.subheader("Score leaderboard")
    rows = [{"client": names.get(address, address), "address": address, "score": score}
            for address, score in scores_from(trail).items()]
    rows.sort(key=lambda row: -row["score"])
    if rows:
        st.container(key="leaderboard").table([{"rank": rank, **row} for rank, row in enumerate(rows, 1)], hide_index=True)
    else:
        st.caption("No scores yet.")

    st.subheader("Rounds")
    for number, record in sorted(rounds_from(trail).items()):
        _round(number, record, problems.get(number, []), names)
    for problem in problems.get(-1, []):
        st.error(problem)

    st.subheader("Blocks and transactions")
    _transactions(trail, names)
    with st.expander("As `python -m chain.explorer` prints it"):
        st.code("\n".join(format_trail(trail)), language=None)


def _no_trail(run: rundata.Run) -> None:
    if not run.config.get("chain_record", False):
        st.info(f"Run {run.name} was recorded without a chain (`chain_record: false`), so it has no audit trail. "
                "Runs record on an in-process chain by default:", icon=":material/link_off:")
        st.code("python main_simple_fl.py --set chain_record=true", language="bash")
    else:
        st.warning(f"{run.path / 'chain' / 'trail.json'} is not written yet: the ledger exports it as it records "
                   "(see `chain/outbox.jsonl` for writes still pending).", icon=":material/hourglass_top:")


def _round(number: int, record: dict, problems: list[str], names: dict[str, str]) -> None:
    with st.container(border=True, key=f"round-{number}"):
        head, badge = st.columns([5, 1])
        head.markdown(f"**Round {number}** · global adapter `{record['global_digest']}`")
        with badge:
            if problems:
                st.badge("mismatch", icon=":material/close:", color="red")
            else:
                st.badge("verified", icon=":material/check:", color="green")
        for problem in problems:
            st.error(problem)
        if record["clients"]:
            st.table([{"client": names.get(address, address), "update digest": digest, "score": score}
                      for address, digest, score in zip(record["clients"], record["update_digests"], record["scores"])],
                     hide_index=True)
        else:
            st.caption("No client updates (the base adapter, or a skipped round).")


def _transactions(trail: dict, names: dict[str, str]) -> None:
    blocks = {tx_hash: block for block in trail["blocks"] for tx_hash in block["transactions"]}
    for tx in trail["transactions"]:
        block = blocks.get(tx["hash"], {})
        when = datetime.fromtimestamp(block["timestamp"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if block else "?"
        status = "ok" if tx["status"] == 1 else "REVERTED"
        events = ", ".join(event["event"] for event in tx["events"]) or "no events"
        with st.expander(f"block {tx['block']} · {when} · `{tx['function']}` from {names.get(tx['from'], tx['from'])} "
                         f"· {status} · gas {tx['gas_used']} · {events}"):
            st.markdown(f"tx `{tx['hash']}` · block `{block.get('hash', '?')}` · nonce {tx['nonce']}")
            if trail.get("explorer_url"):
                st.markdown(f"[open in the chain's explorer]({trail['explorer_url'].format(tx=tx['hash'])})")
            st.json({"call": {tx["function"]: tx["args"]}, "events": tx["events"]}, expanded=2)
