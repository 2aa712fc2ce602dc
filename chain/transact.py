"""Sign and send one contract call from a local account: fees, gas, nonce, receipt."""

from __future__ import annotations

from chain.contract import revert_reason, reverted

GAS_HEADROOM = 1.2


def fee_fields(w3) -> dict:
    """EIP-1559 fees where the chain has a base fee, a legacy gas price elsewhere."""
    base_fee = w3.eth.get_block("latest").get("baseFeePerGas")
    if base_fee is None:
        return {"gasPrice": w3.eth.gas_price}
    priority = w3.eth.max_priority_fee
    return {"maxFeePerGas": 2 * base_fee + priority, "maxPriorityFeePerGas": priority}


def sign_call(w3, account, call, action: str, gas: int | None = None):
    """Estimate (a revert raises TransactionReverted naming the cause), fill fees and nonce, sign. With `gas` (a
    known bound: a batch of registrations or uploads, whose estimate would execute it a score of times on a node
    that searches for it, as eth-tester does) the call is executed once, for its revert reason, and sent with
    that gas."""
    tx = {"from": account.address, "chainId": w3.eth.chain_id, **fee_fields(w3)}
    try:
        if gas is None:
            tx["gas"] = int(call.estimate_gas(tx) * GAS_HEADROOM)
        else:
            call.call(tx)
            tx["gas"] = gas
    except Exception as exc:
        reason = revert_reason(exc)
        if reason is None:
            raise
        raise reverted(action, reason) from None
    tx["nonce"] = w3.eth.get_transaction_count(account.address, "pending")
    return account.sign_transaction(call.build_transaction(tx))


def send_signed(w3, signed, timeout_s: float):
    """Broadcast and wait for the receipt; returns it (status 0 or 1)."""
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    return w3.eth.wait_for_transaction_receipt(tx_hash, timeout=timeout_s, poll_latency=0.1)
