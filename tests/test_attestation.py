"""flb.audit.attestation: the EIP-712 typed data clients sign, checked here and against the contract itself."""

import subprocess
import sys

import pytest
from eth_account import Account

from flb.audit.attestation import (
    DOMAIN_NAME,
    DOMAIN_VERSION,
    AttestationError,
    SignatureError,
    SigningDomain,
    commitment,
    data_upload_hash,
    data_upload_signer,
    domain_separator,
    sign_data_upload,
    sign_update,
    update_hash,
    update_signer,
)
from flb.errors import FLBError
from flb.privacy.secret_random import SecretRandom

CLIENT = Account.from_key(b"\x11" * 32)
OTHER = Account.from_key(b"\x22" * 32)
DOMAIN = SigningDomain(chain_id=31337, contract="0x5fbdb2315678afecb367f032d93f642f64180aa3")
UPDATE = {"round": 3, "previous_global_digest": "sha256:" + "ab" * 32, "update_digest": "cd" * 32, "num_examples": 40}
DIGEST = "ef" * 32


def test_update_signature_recovers_its_signer():
    signature = sign_update(CLIENT, DOMAIN, **UPDATE)
    assert len(bytes.fromhex(signature.removeprefix("0x"))) == 65
    assert update_signer(DOMAIN, **UPDATE, signature=signature) == CLIENT.address


@pytest.mark.parametrize(
    "field, value",
    [("round", 4), ("previous_global_digest", "00" * 32), ("update_digest", "cc" * 32), ("num_examples", 41)],
)
def test_an_altered_update_recovers_another_address(field, value):
    signature = sign_update(CLIENT, DOMAIN, **UPDATE)
    assert update_signer(DOMAIN, **{**UPDATE, field: value}, signature=signature) != CLIENT.address


@pytest.mark.parametrize(
    "domain",
    [SigningDomain(31338, DOMAIN.contract), SigningDomain(31337, OTHER.address)],
    ids=["another chain", "another contract"],
)
def test_a_signature_for_another_domain_recovers_another_address(domain):
    signature = sign_update(CLIENT, domain, **UPDATE)
    assert update_signer(DOMAIN, **UPDATE, signature=signature) != CLIENT.address


def test_data_upload_signature_recovers_its_signer_only_for_its_digest():
    signature = sign_data_upload(CLIENT, DOMAIN, DIGEST)
    assert data_upload_signer(DOMAIN, DIGEST, signature) == CLIENT.address
    assert data_upload_signer(DOMAIN, "ee" * 32, signature) != CLIENT.address


def test_digest_spellings_sign_the_same_bytes():
    spellings = [DIGEST, "sha256:" + DIGEST, "0x" + DIGEST, bytes.fromhex(DIGEST)]
    assert len({sign_data_upload(CLIENT, DOMAIN, digest) for digest in spellings}) == 1


@pytest.mark.parametrize("signature", ["0x1234", "zz" * 65, None], ids=["short", "not hex", "not a string"])
def test_malformed_signature_raises(signature):
    with pytest.raises(SignatureError, match="not 0x-hex of 65 bytes"):
        data_upload_signer(DOMAIN, DIGEST, signature)


def test_non_canonical_signatures_are_rejected_as_the_contract_does():
    raw = bytes.fromhex(sign_data_upload(CLIENT, DOMAIN, DIGEST)[2:])
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    high_s = raw[:32] + (n - int.from_bytes(raw[32:64], "big")).to_bytes(32, "big") + bytes([raw[64] ^ 1])
    v_zero = raw[:64] + bytes([raw[64] - 27])
    for twin in (high_s, v_zero):
        with pytest.raises(SignatureError, match="not canonical"):
            data_upload_signer(DOMAIN, DIGEST, "0x" + twin.hex())


def test_bad_inputs_raise_one_line_errors():
    with pytest.raises(AttestationError, match="update digest: 'sha256:12' is not a sha256 digest"):
        sign_update(CLIENT, DOMAIN, **{**UPDATE, "update_digest": "sha256:12"})
    with pytest.raises(AttestationError, match="num_examples: -1 is not an integer"):
        sign_update(CLIENT, DOMAIN, **{**UPDATE, "num_examples": -1})
    with pytest.raises(AttestationError, match="chain_id: 0 is not a positive integer"):
        SigningDomain(0, DOMAIN.contract)
    with pytest.raises(AttestationError, match="contract: '0x12' is not"):
        SigningDomain(1, "0x12")
    assert issubclass(SignatureError, FLBError)


def test_signing_domain_round_trips_through_json_checksummed():
    assert DOMAIN.contract == "0x5FbDB2315678afecb367f032d93F642f64180aa3"
    assert SigningDomain.from_dict(DOMAIN.to_dict()) == DOMAIN
    with pytest.raises(AttestationError, match=r"\['contract'\] missing"):
        SigningDomain.from_dict({"chain_id": 1})


def test_commitment_depends_on_the_salt_and_hides_the_digest():
    first, second = SecretRandom().random_bytes(32), SecretRandom().random_bytes(32)
    assert len(first) == 32 and first != second
    assert commitment(first, DIGEST) == commitment(first, "sha256:" + DIGEST)
    assert commitment(first, DIGEST) != commitment(second, DIGEST)
    assert commitment(first, DIGEST) not in (DIGEST, commitment(bytes(32), DIGEST))
    with pytest.raises(AttestationError, match="salt: got 16 bytes, need 32 random bytes"):
        commitment(b"\x00" * 16, DIGEST)


def test_importing_it_loads_no_ethereum_library():
    code = (
        "import sys, flb.audit.attestation; "
        "print(sorted(m for m in ('eth_account', 'web3', 'chain') if m in sys.modules))"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )


@pytest.fixture(scope="module")
def on_chain():
    """The FLB contract on the embedded EVM and the signing domain it checks signatures against."""
    from chain.backends import embedded_node
    from chain.contract import flb_contract
    from chain.transact import send_signed, sign_call

    node = embedded_node(num_clients=1)
    admin = node.accounts.admin
    receipt = send_signed(
        node.w3, sign_call(node.w3, admin, flb_contract(node.w3).constructor(admin.address), "deploy"), 30
    )
    contract = flb_contract(node.w3, receipt["contractAddress"])
    return contract, SigningDomain(node.w3.eth.chain_id, contract.address)


@pytest.mark.chain
def test_typed_data_hashes_equal_the_contracts(on_chain):
    contract, domain = on_chain
    assert domain_separator(domain) == "0x" + contract.functions.domainSeparator().call().hex()
    on_chain_update = contract.functions.updateHash(
        UPDATE["round"], bytes.fromhex("ab" * 32), bytes.fromhex("cd" * 32), UPDATE["num_examples"]
    ).call()
    assert update_hash(domain, **UPDATE) == "0x" + on_chain_update.hex()
    assert (
        data_upload_hash(domain, DIGEST) == "0x" + contract.functions.dataUploadHash(bytes.fromhex(DIGEST)).call().hex()
    )


@pytest.mark.chain
def test_contract_domain_fields_are_the_modules(on_chain):
    contract, domain = on_chain
    _, name, version, chain_id, verifying_contract, _, _ = contract.functions.eip712Domain().call()
    assert (name, version, chain_id, verifying_contract) == (
        DOMAIN_NAME,
        DOMAIN_VERSION,
        domain.chain_id,
        domain.contract,
    )
