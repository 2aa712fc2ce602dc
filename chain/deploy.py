"""Deploy the FLB contract, owned by the admin account.

    FLB_KEYSTORE_PASSWORD=... python -m chain.deploy --rpc-url URL --chain-id N --keystore keys/admin.json

Prints the contract address; put it in `chain.contract_address` to record runs on it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chain.deployment import deploy
from flb.errors import FLBError


def main(argv: list[str] | None = None) -> int:
    from web3 import Web3

    from chain.backends import check_chain_id
    from flb.audit.keystore import keystore_password, load_keystore

    parser = argparse.ArgumentParser(prog="python -m chain.deploy", description="Deploy the FLB contract.")
    parser.add_argument("--rpc-url", required=True)
    parser.add_argument("--chain-id", type=int, required=True)
    parser.add_argument(
        "--keystore", type=Path, required=True, help="the admin's encrypted keystore (owner of the contract)"
    )
    parser.add_argument(
        "--password-env", default="FLB_KEYSTORE_PASSWORD", help="variable holding the keystore password"
    )
    args = parser.parse_args(argv)
    try:
        admin = load_keystore(args.keystore, keystore_password(args.password_env))
        w3 = Web3(Web3.HTTPProvider(args.rpc_url, request_kwargs={"timeout": 30}))
        check_chain_id(w3, args.chain_id, args.rpc_url)
        receipt = deploy(w3, admin)
    except (FLBError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"FLB deployed at {receipt['contractAddress']} (owner {admin.address}, "
        f"tx 0x{bytes(receipt['transactionHash']).hex()}, block {receipt['blockNumber']})"
    )
    print(f"set chain.contract_address: {receipt['contractAddress']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
