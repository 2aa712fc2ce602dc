"""The run's FLB contract: deployed once, then found again on every reopen, on the same chain or not at all.

RUN_DIR/chain/deployment.json names the chain id, the contract, the deployment transaction and the hash
of the block that holds it. Reopening checks the node against it: another chain id, no contract there,
or a deployment block with another hash (a reset or different chain that happens to have code at the
same address) is an error, never a silent fresh start that would orphan the run's records.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from chain.contract import flb_contract
from chain.errors import ChainError
from chain.transact import send_signed, sign_call
from flb.atomic import write_json_atomic
from flb.audit.attestation import DOMAIN_VERSION

log = logging.getLogger(__name__)
DEPLOYMENT_FILE = "deployment.json"
ZERO_HEX = "00" * 32


@dataclass(frozen=True)
class RunAnchors:
    """What a run's contract anchors once, before any round: the canonical adapter_config.json
    (flb.audit.digests.adapter_config_digest) and the run spec (flb.audit.run_spec.run_spec_digest), hex sha256 each,
    and `max_staleness`: None for a synchronous run, else the run's rounds are buffered (strategy fedbuff) and an
    update may start at most that many rounds before the previous one."""

    adapter_config: str
    run_spec: str
    max_staleness: int | None = None


RECEIPT_TIMEOUT_S = 120.0


def deploy(w3, admin):
    """Send the deployment signed by `admin` (who becomes the owner); returns the receipt."""
    signed = sign_call(w3, admin, flb_contract(w3).constructor(admin.address), "contract deployment")
    return _mined(send_signed(w3, signed, RECEIPT_TIMEOUT_S), "contract deployment")


def _mined(receipt, action: str):
    if receipt["status"] != 1:
        raise ChainError(
            f"{action}: transaction 0x{bytes(receipt['transactionHash']).hex()} failed; "
            "check the admin account's balance"
        )
    return receipt


def read_deployment(chain_dir: Path) -> dict | None:
    path = Path(chain_dir) / DEPLOYMENT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def deploy_or_attach(node, chain_dir: Path, configured_address: str | None, anchors: RunAnchors) -> dict:
    """The run's deployment record: the one in `chain_dir` checked against the node, the configured contract
    checked, or a new deployment written there."""
    w3, admin = node.w3, node.accounts.admin
    chain_id = w3.eth.chain_id
    recorded = read_deployment(chain_dir)
    if recorded is not None:
        check_same_chain(w3, recorded, chain_id, node.description)
        deployment = recorded
    elif configured_address is not None:
        deployment = {
            "backend": node.backend,
            "chain_id": chain_id,
            "address": w3.to_checksum_address(configured_address),
            "tx": None,
            "block": 0,
            "block_hash": None,
            "owner": admin.address,
        }
        if not w3.eth.get_code(deployment["address"]):
            raise ChainError(
                f"chain.contract_address: no contract at {configured_address} on {node.description}; "
                "fix the address or set it to null to deploy a new one"
            )
        write_json_atomic(Path(chain_dir) / DEPLOYMENT_FILE, deployment)  # where --verify finds the run's contract
    else:
        receipt = deploy(w3, admin)
        deployment = {
            "backend": node.backend,
            "chain_id": chain_id,
            "address": receipt["contractAddress"],
            "tx": _hex(receipt["transactionHash"]),
            "block": receipt["blockNumber"],
            "block_hash": _hex(receipt["blockHash"]),
            "owner": admin.address,
        }
        write_json_atomic(Path(chain_dir) / DEPLOYMENT_FILE, deployment)
        log.info("deployed FLB at %s on %s", deployment["address"], node.description)
    _check_contract(w3, deployment, admin, anchors, node.description)
    return deployment


def check_same_chain(w3, recorded: dict, chain_id: int, description: str) -> None:
    if chain_id != recorded["chain_id"]:
        raise ChainError(
            f"{description} serves chain id {chain_id}, but this run's contract is on chain "
            f"{recorded['chain_id']}; point the run at that chain"
        )
    if recorded.get("block_hash"):
        try:
            block_hash = _hex(w3.eth.get_block(recorded["block"])["hash"])
        except Exception:  # web3 raises BlockNotFound, or a provider error for a block past the head
            block_hash = None
        if block_hash != recorded["block_hash"]:
            raise ChainError(
                f"{description} does not hold this run's contract deployment (block {recorded['block']} "
                f"is {block_hash or 'missing'}, the run deployed in {recorded['block_hash']}): it is not "
                "the chain the run started on; restore that chain's state or start a new run"
            )


def _check_contract(w3, deployment: dict, admin_account, anchors: RunAnchors, description: str) -> None:
    """The contract is there, owned by the run's admin, and anchors the run's adapter config and run spec (anchored
    now when it anchors none yet: a new deployment, or one made with `python -m chain.deploy`)."""
    admin = admin_account.address
    address = deployment["address"]
    if not w3.eth.get_code(address):
        raise ChainError(
            f"{description} has no contract at {address}, where this run's FLB contract was deployed; "
            "restore that chain's state or start a new run"
        )
    contract = flb_contract(w3, address)
    owner = contract.functions.owner().call()
    if owner != admin:
        raise ChainError(
            f"the FLB contract at {address} is owned by {owner}, not by this run's admin {admin}; "
            "use the admin keystore that deployed it"
        )
    version = _contract_version(contract)
    if version != DOMAIN_VERSION:
        raise ChainError(
            f"the FLB contract at {address} is version {version or '2 or older'}, not {DOMAIN_VERSION} "
            "(this version records buffered rounds); its runs cannot be continued "
            "by this version: start a new run"
        )
    functions = contract.functions
    anchored = RunAnchors(
        functions.adapterConfigDigest().call().hex(),
        functions.runSpecDigest().call().hex(),
        functions.maxStaleness().call() if functions.buffered().call() else None,
    )
    if anchored.adapter_config == ZERO_HEX:
        buffered = anchors.max_staleness is not None
        call = functions.anchorRun(
            bytes.fromhex(anchors.adapter_config),
            bytes.fromhex(anchors.run_spec),
            buffered,
            anchors.max_staleness if buffered else 0,
        )
        _mined(send_signed(w3, sign_call(w3, admin_account, call, "run anchor"), RECEIPT_TIMEOUT_S), "run anchor")
    elif anchored != anchors:
        raise ChainError(
            f"the FLB contract at {address} anchors adapter config 0x{anchored.adapter_config}, run "
            f"spec 0x{anchored.run_spec} and {_rounds_kind(anchored)}, not this run's 0x{anchors.adapter_config}, "
            f"0x{anchors.run_spec} and {_rounds_kind(anchors)}: the run's LoRA settings or rules changed; start a new "
            "run"
        )


def _rounds_kind(anchors: RunAnchors) -> str:
    if anchors.max_staleness is None:
        return "synchronous rounds"
    return f"buffered rounds (max staleness {anchors.max_staleness})"


def _contract_version(contract) -> str | None:
    """The contract's EIP-712 domain version (EIP-5267), or None for a contract too old to report one."""
    try:
        return contract.functions.eip712Domain().call()[2]
    except Exception:  # web3 raises a contract logic or decoding error, by node, for a function the code lacks
        return None


def _hex(value) -> str:
    return value if isinstance(value, str) else "0x" + bytes(value).hex()
