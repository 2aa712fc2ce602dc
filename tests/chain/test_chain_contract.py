"""The FLB contract (version 5) itself, on the embedded EVM and on a real anvil."""

from dataclasses import dataclass

import pytest
from eth_account import Account
from web3.logs import DISCARD

from chain.contract import flb_contract, revert_reason, reverted
from chain.errors import TransactionReverted
from chain.transact import send_signed, sign_call
from flb.audit.attestation import SigningDomain, sign_data_upload, sign_update

pytestmark = pytest.mark.chain
DIGEST_A = b"\xaa" * 32
DIGEST_B = b"\xbb" * 32
ZERO = bytes(32)
OUTSIDER = Account.from_key(b"\x07" * 32)  # a key nobody registered; it signs, it never sends


@dataclass
class Deployed:
    w3: object
    accounts: object
    contract: object
    domain: SigningDomain

    def send(self, call, sender=None):
        receipt = send_signed(
            self.w3, sign_call(self.w3, sender or self.accounts.admin, call, "test call"), timeout_s=30
        )
        assert receipt["status"] == 1
        return receipt

    def rejects(self, call, error: str, sender=None):
        with pytest.raises(TransactionReverted, match=error):
            sign_call(self.w3, sender or self.accounts.admin, call, "test call")

    def events(self, name, receipt):
        return [e["args"] for e in getattr(self.contract.events, name)().process_receipt(receipt, errors=DISCARD)]


@pytest.fixture
def deployed(evm):
    """FLB deployed by the admin, with the dev clients registered."""
    w3, accounts = evm
    admin = accounts.admin
    receipt = send_signed(w3, sign_call(w3, admin, flb_contract(w3).constructor(admin.address), "deploy"), 30)
    contract = flb_contract(w3, receipt["contractAddress"])
    chain = Deployed(w3, accounts, contract, SigningDomain(w3.eth.chain_id, contract.address))
    chain.send(contract.functions.registerClients([a.address for a in accounts.clients]))
    return chain


def upload(chain, signer, digest=DIGEST_A, signature=None, client=None):
    """A batch of one upload."""
    signature = signature or sign_data_upload(signer, chain.domain, digest)
    return chain.contract.functions.uploadUserData([client or signer.address], [digest], [signature])


def round_args(
    chain, round_number, signers, previous=ZERO, global_digest=None, num_examples=None, scores=None, domain=None
):
    """recordRound's arguments with each signer's update signed over (round, previous, digest, count)."""
    signers = sorted(signers, key=lambda a: int(a.address, 16))
    digests = [bytes([round_number + 1, i + 1]) * 16 for i in range(len(signers))]
    counts = num_examples or [10 + i for i in range(len(signers))]
    signatures = [
        sign_update(
            a,
            domain or chain.domain,
            round=round_number,
            previous_global_digest=previous,
            update_digest=d,
            num_examples=n,
        )
        for a, d, n in zip(signers, digests, counts)
    ]
    return [
        round_number,
        global_digest or bytes([round_number + 1]) * 32,
        metrics_digest(round_number),
        [a.address for a in signers],
        digests,
        counts,
        scores or [3 * (i + 1) for i in range(len(signers))],
        signatures,
    ]


def metrics_digest(round_number: int) -> bytes:
    return bytes([0xE0 + round_number]) * 32


def record(chain, args):
    return chain.send(chain.contract.functions.recordRound(*args))


# --- data uploads ----------------------------------------------------------------------------


def test_signed_upload_is_recorded_with_its_digest(deployed):
    client = deployed.accounts.clients[0]
    receipt = deployed.send(upload(deployed, client), sender=client)
    assert deployed.events("DataUpload", receipt) == [{"user": client.address, "dataDigest": DIGEST_A}]
    functions = deployed.contract.functions
    assert functions.hasUploaded(client.address, DIGEST_A).call()
    assert functions.getUserData(client.address).call() == [DIGEST_A]
    assert functions.getUserDataCount(client.address).call() == 1
    assert functions.userExists(client.address).call() and functions.getUserCount().call() == 1
    assert receipt["gasUsed"] < 150_000, "a v1 upload (a 71-byte string) cost ~210k gas"


def test_a_batch_of_uploads_records_each_or_none(deployed):
    """Each upload of a batch is checked as alone; one bad signature reverts the whole batch (one transaction), and
    countUploaded tells a batch on chain whole from one not there."""
    clients = deployed.accounts.clients
    digests = [DIGEST_A, DIGEST_B, DIGEST_A]
    signatures = [sign_data_upload(c, deployed.domain, d) for c, d in zip(clients, digests)]
    functions = deployed.contract.functions
    addresses = [c.address for c in clients]
    forged = signatures[:2] + [sign_data_upload(OUTSIDER, deployed.domain, DIGEST_A)]
    deployed.rejects(functions.uploadUserData(addresses, digests, forged), "BadSignature", sender=clients[0])
    assert functions.countUploaded(addresses, digests).call() == 0
    deployed.rejects(functions.uploadUserData(addresses, digests[:2], signatures), "LengthMismatch", sender=clients[0])
    receipt = deployed.send(functions.uploadUserData(addresses, digests, signatures), sender=clients[0])
    assert [e["user"] for e in deployed.events("DataUpload", receipt)] == addresses
    assert functions.countUploaded(addresses, digests).call() == 3
    assert functions.countRegistered(addresses + [OUTSIDER.address]).call() == 3
    assert deployed.contract.functions.eip712Domain().call()[2] == "5"


def test_upload_signed_by_an_unregistered_account_reverts(deployed):
    deployed.rejects(upload(deployed, OUTSIDER), "NotRegistered", sender=deployed.accounts.clients[1])


def test_front_runner_cannot_claim_a_relayed_upload(deployed):
    victim, front_runner = deployed.accounts.clients[0], deployed.accounts.clients[1]
    signature = sign_data_upload(victim, deployed.domain, DIGEST_A)
    deployed.rejects(upload(deployed, front_runner, signature=signature), "BadSignature", sender=front_runner)
    deployed.send(upload(deployed, victim, signature=signature), sender=front_runner)
    assert deployed.contract.functions.hasUploaded(victim.address, DIGEST_A).call()
    assert deployed.contract.functions.getUserData(front_runner.address).call() == []
    deployed.rejects(upload(deployed, victim, signature=signature), "AlreadyUploaded", sender=victim)


def test_a_client_that_uploads_anothers_digest_first_does_not_block_it(deployed):
    """Uniqueness is per client: a registered client that learns another's digest and records it as its own first
    cannot make the owner's upload revert."""
    owner, squatter = deployed.accounts.clients[0], deployed.accounts.clients[1]
    deployed.send(upload(deployed, squatter, DIGEST_A), sender=squatter)
    deployed.send(upload(deployed, owner, DIGEST_A), sender=owner)
    functions = deployed.contract.functions
    assert functions.getUserData(owner.address).call() == [DIGEST_A]
    assert (
        functions.hasUploaded(owner.address, DIGEST_A).call()
        and functions.hasUploaded(squatter.address, DIGEST_A).call()
    )
    deployed.rejects(upload(deployed, squatter, DIGEST_A), r"AlreadyUploaded\(client=", sender=squatter)


def test_signature_over_another_digest_reverts(deployed):
    client = deployed.accounts.clients[0]
    signature = sign_data_upload(client, deployed.domain, DIGEST_B)
    deployed.rejects(upload(deployed, client, DIGEST_A, signature), "BadSignature", sender=client)


def test_zero_data_digest_reverts(deployed):
    client = deployed.accounts.clients[0]
    deployed.rejects(upload(deployed, client, ZERO), "ZeroDigest", sender=client)


@pytest.mark.parametrize("mangle", [lambda s: s[:-2], lambda s: s[:-2] + "00"], ids=["64 bytes", "v=0"])
def test_malformed_upload_signature_reverts(deployed, mangle):
    client = deployed.accounts.clients[0]
    signature = mangle(sign_data_upload(client, deployed.domain, DIGEST_A))
    deployed.rejects(upload(deployed, client, signature=signature), "BadSignature", sender=client)


def test_malleable_twin_of_a_valid_signature_reverts(deployed):
    """(r, n - s, v ^ 1) recovers the same signer through ecrecover; OpenZeppelin accepts only low s."""
    client = deployed.accounts.clients[0]
    raw = bytes.fromhex(sign_data_upload(client, deployed.domain, DIGEST_A)[2:])
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    twin = raw[:32] + (n - int.from_bytes(raw[32:64], "big")).to_bytes(32, "big") + bytes([raw[64] ^ 1])
    deployed.rejects(upload(deployed, client, signature=twin), "BadSignature", sender=client)


# --- client registry -------------------------------------------------------------------------


def test_registration_is_recorded_once_per_client(deployed):
    functions = deployed.contract.functions
    receipt = deployed.send(functions.registerClients([OUTSIDER.address]))
    assert deployed.events("ClientRegistered", receipt) == [{"client": OUTSIDER.address, "round": 0}]
    assert functions.isClient(OUTSIDER.address).call()
    assert functions.clientCount().call() == len(deployed.accounts.clients) + 1
    assert functions.clientAt(len(deployed.accounts.clients)).call() == OUTSIDER.address
    deployed.rejects(functions.registerClients([OUTSIDER.address]), "AlreadyRegistered")
    deployed.rejects(functions.registerClients(["0x" + "00" * 20]), "ZeroAddress")


def test_non_owner_cannot_register_or_record(deployed):
    stranger = deployed.accounts.clients[0]
    deployed.rejects(
        deployed.contract.functions.registerClients([OUTSIDER.address]), "not the contract owner", stranger
    )
    call = deployed.contract.functions.recordRound(*round_args(deployed, 0, []))
    deployed.rejects(call, "not the contract owner", stranger)
    deployed.rejects(
        deployed.contract.functions.recordSealedRound(0, b"\x01" * 32, b"\x03" * 32, b"\x02" * 32),
        "OwnableUnauthorized",
        stranger,
    )


# --- rounds ----------------------------------------------------------------------------------


def test_rounds_are_chained_and_signed_by_their_clients(deployed):
    base = round_args(deployed, 0, [])
    record(deployed, base)
    args = round_args(deployed, 1, deployed.accounts.clients[:2], previous=base[1])
    receipt = record(deployed, args)
    event = deployed.events("RoundRecorded", receipt)[0]
    assert [
        event[k]
        for k in (
            "round",
            "previousGlobalDigest",
            "globalDigest",
            "metricsDigest",
            "clients",
            "updateDigests",
            "numExamples",
            "scores",
        )
    ] == [1, base[1], *args[1:7]]
    functions = deployed.contract.functions
    assert functions.nextRound().call() == 2 and functions.lastGlobalDigest().call() == args[1]
    assert functions.getRound(1).call()[0] == args[1] and functions.roundExists(1).call()
    assert not functions.roundExists(2).call()
    assert [functions.getScore(c).call() for c in args[3]] == args[6]


def test_score_add_names_the_round(deployed):
    client = deployed.accounts.clients[0]
    record(deployed, round_args(deployed, 0, []))
    record(deployed, round_args(deployed, 1, [client], previous=b"\x01" * 32))
    receipt = record(deployed, round_args(deployed, 2, [client], previous=b"\x02" * 32, scores=[5]))
    assert deployed.events("ScoreAdd", receipt) == [{"user": client.address, "round": 2, "score": 5}]
    assert deployed.contract.functions.getScore(client.address).call() == 3 + 5


@pytest.mark.parametrize(
    "forgery, error",
    [
        ("signed by another client", "BadSignature"),
        ("signed by a non-client for itself", "NotRegistered"),
        ("signed by a non-client for a client", "BadSignature"),
        ("over another round", "BadSignature"),
        ("over another previous digest", "BadSignature"),
        ("over another num_examples", "BadSignature"),
        ("for another contract", "BadSignature"),
        ("for another chain id", "BadSignature"),
        ("missing", "BadSignature"),
    ],
)
def test_forged_update_signature_reverts(deployed, forgery, error):
    record(deployed, round_args(deployed, 0, []))
    previous = b"\x01" * 32
    client, other = deployed.accounts.clients[0], deployed.accounts.clients[1]
    args = round_args(deployed, 1, [client], previous=previous)
    resign = {"round": 1, "previous_global_digest": previous, "update_digest": args[4][0], "num_examples": args[5][0]}
    domain = deployed.domain
    if forgery == "signed by another client":
        args[7] = [sign_update(other, domain, **resign)]
    elif forgery == "signed by a non-client for itself":
        args = round_args(deployed, 1, [OUTSIDER], previous=previous)
    elif forgery == "signed by a non-client for a client":
        args[7] = [sign_update(OUTSIDER, domain, **resign)]
    elif forgery == "over another round":
        args[7] = [sign_update(client, domain, **{**resign, "round": 2})]
    elif forgery == "over another previous digest":
        args[7] = [sign_update(client, domain, **{**resign, "previous_global_digest": ZERO})]
    elif forgery == "over another num_examples":
        args[7] = [sign_update(client, domain, **{**resign, "num_examples": args[5][0] + 1})]
    elif forgery == "for another contract":
        args[7] = [sign_update(client, SigningDomain(domain.chain_id, OUTSIDER.address), **resign)]
    elif forgery == "for another chain id":
        args[7] = [sign_update(client, SigningDomain(domain.chain_id + 1, domain.contract), **resign)]
    else:
        args[7] = [b""]
    deployed.rejects(deployed.contract.functions.recordRound(*args), error)


def test_duplicate_client_reverts(deployed):
    client = deployed.accounts.clients[0]
    args = round_args(deployed, 0, [client])
    twice = args[:3] + [column * 2 for column in args[3:]]
    deployed.rejects(deployed.contract.functions.recordRound(*twice), r"ClientsNotAscending\(index=1\)")


def test_clients_out_of_address_order_revert(deployed):
    args = round_args(deployed, 0, deployed.accounts.clients[:2])
    descending = args[:3] + [column[::-1] for column in args[3:]]
    deployed.rejects(deployed.contract.functions.recordRound(*descending), r"ClientsNotAscending\(index=1\)")


def test_rounds_cannot_be_skipped_or_repeated(deployed):
    record(deployed, round_args(deployed, 0, []))
    functions = deployed.contract.functions
    deployed.rejects(
        functions.recordRound(*round_args(deployed, 2, [])),
        r"WrongRound\(expected=1, given=2\); rounds are recorded in order; this contract expects round 1",
    )
    deployed.rejects(functions.recordRound(*round_args(deployed, 0, [])), r"WrongRound\(expected=1, given=0\)")
    deployed.rejects(
        functions.recordSealedRound(0, b"\x01" * 32, b"\x03" * 32, b"\x02" * 32), r"WrongRound\(expected=1, given=0\)"
    )


def test_zero_global_digest_reverts(deployed):
    args = round_args(deployed, 0, [])
    args[1] = ZERO
    deployed.rejects(deployed.contract.functions.recordRound(*args), "ZeroDigest")


def test_zero_update_digest_reverts_even_when_signed(deployed):
    client = deployed.accounts.clients[0]
    args = round_args(deployed, 0, [client])
    args[4] = [ZERO]
    args[7] = [
        sign_update(
            client, deployed.domain, round=0, previous_global_digest=ZERO, update_digest=ZERO, num_examples=args[5][0]
        )
    ]
    deployed.rejects(deployed.contract.functions.recordRound(*args), "ZeroDigest")


@pytest.mark.parametrize("column", [4, 5, 6, 7], ids=["updateDigests", "numExamples", "scores", "signatures"])
def test_arrays_of_other_lengths_revert(deployed, column):
    args = round_args(deployed, 0, deployed.accounts.clients[:2])
    args[column] = args[column][:1]
    deployed.rejects(deployed.contract.functions.recordRound(*args), "LengthMismatch")


def test_verify_round_accepts_only_the_exact_record(deployed):
    record(deployed, round_args(deployed, 0, []))
    previous = b"\x01" * 32
    args = round_args(deployed, 1, deployed.accounts.clients[:2], previous=previous)
    record(deployed, args)
    claim = [1, previous, *args[1:7]]
    verify = deployed.contract.functions.verifyRound
    assert verify(*claim).call()
    alterations = {
        "round": (0, 0),
        "previousGlobalDigest": (1, ZERO),
        "globalDigest": (2, DIGEST_A),
        "metricsDigest": (3, DIGEST_B),
        "clients": (4, claim[4][::-1]),
        "updateDigests": (5, [DIGEST_A, claim[5][1]]),
        "numExamples": (6, [claim[6][0] + 1, claim[6][1]]),
        "scores": (7, [claim[7][0], claim[7][1] + 1]),
    }
    for field, (index, value) in alterations.items():
        altered = claim[:index] + [value] + claim[index + 1 :]
        assert not verify(*altered).call(), f"verifyRound accepted an altered {field}"


def test_sealed_rounds_are_chained_and_verifiable(deployed):
    functions = deployed.contract.functions
    base = round_args(deployed, 0, [])
    record(deployed, base)
    commitment = b"\x5e" * 32
    receipt = deployed.send(functions.recordSealedRound(1, b"\x02" * 32, metrics_digest(1), commitment))
    assert deployed.events("RoundSealed", receipt) == [
        {
            "round": 1,
            "previousGlobalDigest": base[1],
            "globalDigest": b"\x02" * 32,
            "metricsDigest": metrics_digest(1),
            "participantsCommitment": commitment,
        }
    ]
    assert functions.verifySealedRound(1, base[1], b"\x02" * 32, metrics_digest(1), commitment).call()
    assert not functions.verifySealedRound(1, base[1], b"\x02" * 32, metrics_digest(1), DIGEST_A).call()
    assert not functions.verifySealedRound(1, base[1], b"\x02" * 32, DIGEST_A, commitment).call()
    assert not functions.verifySealedRound(1, ZERO, b"\x02" * 32, metrics_digest(1), commitment).call()
    assert deployed.events("ScoreAdd", receipt) == []
    record(deployed, round_args(deployed, 2, deployed.accounts.clients[:1], previous=b"\x02" * 32))
    deployed.rejects(functions.recordSealedRound(3, b"\x04" * 32, metrics_digest(3), ZERO), "ZeroDigest")
    assert functions.nextRound().call() == 3


# --- buffered rounds (strategy fedbuff) -------------------------------------------------------------

BUFFERED_FIELDS = (
    "round",
    "previousGlobalDigest",
    "globalDigest",
    "metricsDigest",
    "clients",
    "startRounds",
    "updateDigests",
    "numExamples",
    "scores",
)


def buffered_run(chain, max_staleness: int, rounds: int = 1):
    """Anchor a buffered run and record rounds 0..rounds-1 without clients (recordRound, as in any run)."""
    functions = chain.contract.functions
    chain.send(functions.anchorRun(DIGEST_A, DIGEST_B, True, max_staleness))
    for number in range(rounds):
        record(chain, round_args(chain, number, []))  # distinct digests, so that a signature names one round


def stored_digest(chain, round_number: int) -> bytes:
    return chain.contract.functions.getRound(round_number).call()[0]


def buffered_args(chain, round_number, starts, *, signed_over=None, global_digest=None, scores=None):
    """recordBufferedRound's arguments for `starts` ({signer: start round}): each update signed as its client signs
    it, over (start + 1, the stored global digest of round start); `signed_over` ({signer: (round, digest)}) forges
    what one of them signed."""
    signers = sorted(starts, key=lambda a: int(a.address, 16))
    digests = [bytes([0x40 + round_number, i + 1]) * 16 for i in range(len(signers))]
    counts = [20 + i for i in range(len(signers))]
    signatures = []
    for signer, digest, count in zip(signers, digests, counts):
        signed_round, previous = (signed_over or {}).get(
            signer, (starts[signer] + 1, stored_digest(chain, starts[signer]))
        )
        signatures.append(
            sign_update(
                signer,
                chain.domain,
                round=signed_round,
                previous_global_digest=previous,
                update_digest=digest,
                num_examples=count,
            )
        )
    return [
        round_number,
        global_digest or bytes([0x80 + round_number]) * 32,
        metrics_digest(round_number),
        [a.address for a in signers],
        [starts[a] for a in signers],
        digests,
        counts,
        scores or [7 * (i + 1) for i in range(len(signers))],
        signatures,
    ]


def record_buffered(chain, args):
    return chain.send(chain.contract.functions.recordBufferedRound(*args))


def test_a_buffered_round_records_stale_and_fresh_updates(deployed):
    """Round 2 takes one update started from round 0 (stale by one) and one from round 1 (fresh, signed as in a
    synchronous round 2): each signature is checked over its own start, and the record is hashed with the starts."""
    from eth_abi import encode
    from eth_utils import keccak

    first, second, third = deployed.accounts.clients[:3]
    buffered_run(deployed, max_staleness=1)
    record_buffered(deployed, buffered_args(deployed, 1, {first: 0}))
    args = buffered_args(deployed, 2, {second: 0, third: 1})
    assert args[4] == [{second: 0, third: 1}[a] for a in sorted((second, third), key=lambda a: int(a.address, 16))]
    receipt = record_buffered(deployed, args)
    previous = stored_digest(deployed, 1)
    event = deployed.events("BufferedRoundRecorded", receipt)[0]
    assert [event[k] for k in BUFFERED_FIELDS] == [2, previous, *args[1:8]]
    record_hash = keccak(
        encode(
            ["bytes32", "bytes32", "address[]", "uint256[]", "bytes32[]", "uint256[]", "uint256[]"],
            [previous, args[2], *args[3:8]],
        )
    )
    functions = deployed.contract.functions
    assert functions.getRound(2).call() == [args[1], record_hash]
    assert functions.nextRound().call() == 3 and functions.lastGlobalDigest().call() == args[1]
    assert deployed.events("ScoreAdd", receipt) == [
        {"user": address, "round": 2, "score": score} for address, score in zip(args[3], args[7])
    ]
    assert deployed.events("RoundRecorded", receipt) == []


@pytest.mark.parametrize("start", [0, 3, 4], ids=["two rounds stale", "the round itself", "a later round"])
def test_an_update_too_stale_or_from_the_future_reverts(deployed, start):
    client = deployed.accounts.clients[0]
    buffered_run(deployed, max_staleness=1, rounds=3)
    fresh = {client: (start + 1, stored_digest(deployed, 2))}  # signed over something: the start is what fails
    args = buffered_args(deployed, 3, {client: 2}, signed_over=fresh)
    args[4] = [start]
    deployed.rejects(
        deployed.contract.functions.recordBufferedRound(*args),
        rf"TooStale\(client={client.address}, startRound={start}\)",
    )
    record_buffered(deployed, buffered_args(deployed, 3, {client: 1}))  # one round stale: allowed


def test_a_signed_update_cannot_be_recorded_twice(deployed):
    """The owner replays a client's signed update (start round 0) in a later round, where it is still fresh enough,
    or records an update the client started before one already recorded: both revert."""
    client, other = deployed.accounts.clients[:2]
    buffered_run(deployed, max_staleness=2)
    functions = deployed.contract.functions
    replayed = buffered_args(deployed, 1, {client: 0})
    record_buffered(deployed, replayed)
    again = [2, b"\x92" * 32, *replayed[2:]]
    deployed.rejects(functions.recordBufferedRound(*again), rf"StartReused\(client={client.address}, startRound=0\)")
    record_buffered(deployed, buffered_args(deployed, 2, {client: 1, other: 0}))
    deployed.rejects(
        functions.recordBufferedRound(*buffered_args(deployed, 3, {client: 1})),
        rf"StartReused\(client={client.address}, startRound=1\)",
    )
    record_buffered(deployed, buffered_args(deployed, 3, {client: 2, other: 1}))


@pytest.mark.parametrize(
    "forgery", ["another round's digest", "the previous round's digest", "the arrival round", "the start round"]
)
def test_a_signature_over_another_start_reverts(deployed, forgery):
    """An update started from round 0 arrives in round 3: only its signature over (1, round 0's digest) is valid."""
    client = deployed.accounts.clients[0]
    buffered_run(deployed, max_staleness=2, rounds=3)
    signed_over = {
        "another round's digest": (1, stored_digest(deployed, 1)),
        "the previous round's digest": (3, stored_digest(deployed, 2)),  # as a fresh update of round 3 signs
        "the arrival round": (3, stored_digest(deployed, 0)),
        "the start round": (0, stored_digest(deployed, 0)),
    }[forgery]
    forged = buffered_args(deployed, 3, {client: 0}, signed_over={client: signed_over})
    deployed.rejects(deployed.contract.functions.recordBufferedRound(*forged), "BadSignature")
    record_buffered(deployed, buffered_args(deployed, 3, {client: 0}))


def test_each_kind_of_run_refuses_the_other_kinds_rounds(deployed):
    """A synchronous run records no buffered round; a buffered one records no round with clients but by
    recordBufferedRound (its rounds without clients go to recordRound, as in any run) and no sealed round."""
    client = deployed.accounts.clients[0]
    functions = deployed.contract.functions
    record(deployed, round_args(deployed, 0, []))
    deployed.rejects(functions.recordBufferedRound(*buffered_args(deployed, 1, {client: 0})), r"NotBuffered\(\)")

    w3, admin = deployed.w3, deployed.accounts.admin
    receipt = send_signed(w3, sign_call(w3, admin, flb_contract(w3).constructor(admin.address), "deploy"), 30)
    contract = flb_contract(w3, receipt["contractAddress"])
    chain = Deployed(w3, deployed.accounts, contract, SigningDomain(w3.eth.chain_id, contract.address))
    chain.send(contract.functions.registerClients([client.address]))
    buffered_run(chain, max_staleness=1)
    synchronous = round_args(chain, 1, [client], previous=stored_digest(chain, 0))
    chain.rejects(contract.functions.recordRound(*synchronous), r"NotSynchronous\(\)")
    chain.rejects(contract.functions.recordSealedRound(1, b"\x02" * 32, metrics_digest(1), DIGEST_A), "NotSynchronous")
    record(chain, round_args(chain, 1, [], global_digest=stored_digest(chain, 0)))
    record_buffered(chain, buffered_args(chain, 2, {client: 1}))


def test_verify_buffered_round_accepts_only_the_exact_record(deployed):
    first, second = deployed.accounts.clients[:2]
    buffered_run(deployed, max_staleness=1, rounds=2)
    args = buffered_args(deployed, 2, {first: 0, second: 1})
    record_buffered(deployed, args)
    claim = [2, stored_digest(deployed, 1), *args[1:8]]
    verify = deployed.contract.functions.verifyBufferedRound
    assert verify(*claim).call()
    assert not deployed.contract.functions.verifyRound(*claim[:5], *claim[6:]).call()
    alterations = {
        "round": (0, 1),
        "previousGlobalDigest": (1, stored_digest(deployed, 0)),
        "globalDigest": (2, DIGEST_A),
        "metricsDigest": (3, DIGEST_B),
        "clients": (4, claim[4][::-1]),
        "startRounds": (5, claim[5][::-1]),
        "updateDigests": (6, [DIGEST_A, claim[6][1]]),
        "numExamples": (7, [claim[7][0] + 1, claim[7][1]]),
        "scores": (8, [claim[8][0], claim[8][1] + 1]),
    }
    for field, (index, value) in alterations.items():
        altered = claim[:index] + [value] + claim[index + 1 :]
        assert not verify(*altered).call(), f"verifyBufferedRound accepted an altered {field}"


# --- ownership -------------------------------------------------------------------------------


def test_adapter_config_and_run_spec_are_anchored_once_by_the_owner(deployed):
    functions = deployed.contract.functions
    assert (functions.adapterConfigDigest().call(), functions.runSpecDigest().call()) == (ZERO, ZERO)
    deployed.rejects(
        functions.anchorRun(DIGEST_A, DIGEST_B, False, 0),
        "OwnableUnauthorizedAccount",
        sender=deployed.accounts.clients[0],
    )
    deployed.rejects(functions.anchorRun(ZERO, DIGEST_B, False, 0), "ZeroDigest")
    deployed.rejects(functions.anchorRun(DIGEST_A, ZERO, False, 0), "ZeroDigest")
    deployed.rejects(functions.anchorRun(DIGEST_A, DIGEST_B, False, 1), r"StalenessWithoutBuffer\(maxStaleness=1\)")
    receipt = deployed.send(functions.anchorRun(DIGEST_A, DIGEST_B, False, 0))
    assert deployed.events("RunAnchored", receipt) == [
        {"adapterConfigDigest": DIGEST_A, "runSpecDigest": DIGEST_B, "buffered": False, "maxStaleness": 0}
    ]
    deployed.rejects(functions.anchorRun(DIGEST_A, DIGEST_A, False, 0), "AlreadyAnchored")
    deployed.rejects(functions.anchorRun(DIGEST_A, DIGEST_B, True, 2), "AlreadyAnchored")
    assert (functions.adapterConfigDigest().call(), functions.runSpecDigest().call()) == (DIGEST_A, DIGEST_B)
    assert (functions.buffered().call(), functions.maxStaleness().call()) == (False, 0)


def test_a_buffered_run_is_anchored_with_its_max_staleness(deployed):
    functions = deployed.contract.functions
    receipt = deployed.send(functions.anchorRun(DIGEST_A, DIGEST_B, True, 3))
    assert deployed.events("RunAnchored", receipt) == [
        {"adapterConfigDigest": DIGEST_A, "runSpecDigest": DIGEST_B, "buffered": True, "maxStaleness": 3}
    ]
    assert (functions.buffered().call(), functions.maxStaleness().call()) == (True, 3)


def test_registration_says_which_round_the_contract_was_at(deployed):
    """A key the owner registers after round 0 began carries that round: the verifier flags it."""
    record(deployed, round_args(deployed, 0, []))
    late = Account.from_key(b"\x08" * 32)
    receipt = deployed.send(deployed.contract.functions.registerClients([late.address]))
    assert deployed.events("ClientRegistered", receipt) == [{"client": late.address, "round": 1}]


def test_ownership_moves_only_when_the_new_owner_accepts(deployed):
    functions = deployed.contract.functions
    admin, heir, stranger = deployed.accounts.admin, deployed.accounts.clients[0], deployed.accounts.clients[1]
    deployed.send(functions.transferOwnership(heir.address))
    assert functions.owner().call() == admin.address and functions.pendingOwner().call() == heir.address
    deployed.rejects(functions.acceptOwnership(), "OwnableUnauthorizedAccount", stranger)
    deployed.send(functions.acceptOwnership(), sender=heir)
    assert functions.owner().call() == heir.address
    deployed.rejects(functions.recordRound(*round_args(deployed, 0, [])), "not the contract owner", admin)


def test_ownership_cannot_be_renounced(deployed):
    deployed.rejects(
        deployed.contract.functions.renounceOwnership(), r"RenounceDisabled\(\); ownership cannot be renounced"
    )
    assert deployed.contract.functions.owner().call() == deployed.accounts.admin.address


# --- reverts made readable, on each backend --------------------------------------------------


@pytest.mark.parametrize("how", ["call", "estimate_gas"])
def test_revert_reason_decodes_custom_errors(deployed, how):
    call = deployed.contract.functions.recordSealedRound(5, b"\x01" * 32, b"\x03" * 32, b"\x02" * 32)
    with pytest.raises(Exception) as caught:
        getattr(call, how)({"from": deployed.accounts.admin.address})
    assert revert_reason(caught.value) == "WrongRound(expected=0, given=5)"


def test_revert_reason_decodes_panics_and_ignores_other_errors(deployed):
    with pytest.raises(Exception) as caught:
        deployed.contract.functions.clientAt(99).call()
    assert revert_reason(caught.value) == "Panic(code=0x32)"
    assert revert_reason(ConnectionError("node is down")) is None


def test_reverted_message_is_one_line_with_the_fix():
    error = reverted("round 3", "NotRegistered(client=0x1234)")
    assert str(error) == (
        "round 3: the contract reverted with NotRegistered(client=0x1234); 0x1234 is not a registered "
        "client; the owner registers it with registerClients first"
    )
    assert "chain/contracts/FLB.sol" in str(reverted("upload", "some require\nstring"))
    assert "\n" not in str(reverted("upload", "some require\nstring"))


# --- gas -------------------------------------------------------------------------------------


def test_gas_of_uploads_and_signed_rounds(deployed, capsys):
    """Figures for docs/ledger.md; only the upload bound is asserted (v1 uploads cost 210k-228k, 143k after)."""
    client = deployed.accounts.clients[0]
    first = deployed.send(upload(deployed, client, DIGEST_A), sender=client)["gasUsed"]
    second = deployed.send(upload(deployed, client, DIGEST_B), sender=client)["gasUsed"]
    signers = [Account.from_key(bytes([i + 1]) * 32) for i in range(10)]
    deployed.send(deployed.contract.functions.registerClients([a.address for a in signers]))
    record(deployed, round_args(deployed, 0, []))
    gas = {}
    for round_number, label, group in [
        (1, "2 new", signers[:2]),
        (2, "8 new", signers[2:]),
        (3, "8 known", signers[2:]),
        (4, "2 known", signers[:2]),
    ]:
        previous = bytes([round_number]) * 32
        gas[label] = record(deployed, round_args(deployed, round_number, group, previous=previous))["gasUsed"]
    with capsys.disabled():
        print(f"\ngas: upload {first} (first), {second} (next); recordRound by clients: {gas}")
    assert first < 150_000 and second < first
