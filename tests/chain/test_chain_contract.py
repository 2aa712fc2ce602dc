"""The FLB contract itself, on the embedded EVM and on a real anvil."""
import pytest

from web3.logs import DISCARD

from chain.contract import flb_contract
from chain.errors import TransactionReverted
from chain.transact import send_signed, sign_call

pytestmark = pytest.mark.chain
DIGEST_A = "sha256:" + "aa" * 32


def transact(w3, account, call):
    receipt = send_signed(w3, sign_call(w3, account, call, "test call"), timeout_s=30)
    assert receipt["status"] == 1
    return receipt


@pytest.fixture
def deployed(evm):
    w3, accounts = evm
    receipt = transact(w3, accounts.admin, flb_contract(w3).constructor(accounts.admin.address))
    return w3, accounts, flb_contract(w3, receipt["contractAddress"])


def test_non_owner_add_score_reverts(deployed):
    w3, accounts, contract = deployed
    with pytest.raises(TransactionReverted, match="not the contract owner"):
        sign_call(w3, accounts.clients[0], contract.functions.addScore(accounts.clients[0].address, 5), "addScore")


def test_owner_add_score_is_cumulative(deployed):
    w3, accounts, contract = deployed
    user = accounts.clients[1].address
    transact(w3, accounts.admin, contract.functions.addScore(user, 5))
    receipt = transact(w3, accounts.admin, contract.functions.addScore(user, 7))
    assert contract.functions.getScore(user).call() == 12
    assert contract.functions.getUserScore(0).call() == [user, 12]
    event = contract.events.ScoreAdd().process_receipt(receipt, errors=DISCARD)[0]
    assert (event["args"]["user"], event["args"]["score"]) == (user, 7)


def test_duplicate_upload_reverts(deployed):
    w3, accounts, contract = deployed
    transact(w3, accounts.clients[0], contract.functions.uploadUserData(DIGEST_A))
    for uploader in (accounts.clients[0], accounts.clients[1]):
        with pytest.raises(TransactionReverted, match="Data already uploaded"):
            sign_call(w3, uploader, contract.functions.uploadUserData(DIGEST_A), "upload")


def test_upload_event_and_getters(deployed):
    w3, accounts, contract = deployed
    client = accounts.clients[0]
    receipt = transact(w3, client, contract.functions.uploadUserData(DIGEST_A))
    assert contract.events.DataUpload().process_receipt(receipt, errors=DISCARD)[0]["args"]["user"] == client.address
    assert contract.functions.getUserData(client.address).call() == [DIGEST_A]
    assert contract.functions.getUserDataCount(client.address).call() == 1
    assert contract.functions.userExists(client.address).call()
    assert contract.functions.getUserCount().call() == 1
    assert contract.functions.uploaderOf(DIGEST_A).call() == client.address


def test_round_record_round_trips(deployed):
    w3, accounts, contract = deployed
    clients = [a.address for a in accounts.clients]
    digests = [bytes([i + 1]) * 32 for i in range(len(clients))]
    scores = [3, 0, 11]
    receipt = transact(w3, accounts.admin, contract.functions.recordRound(4, b"\x07" * 32, clients, digests, scores))
    event = contract.events.RoundRecorded().process_receipt(receipt, errors=DISCARD)[0]["args"]
    assert (event["round"], event["globalDigest"], event["clients"], event["updateDigests"], event["scores"]) == (
        4, b"\x07" * 32, clients, digests, scores)
    assert contract.functions.getRound(4).call()[0] == b"\x07" * 32
    assert contract.functions.verifyRound(4, b"\x07" * 32, clients, digests, scores).call()
    assert not contract.functions.verifyRound(4, b"\x07" * 32, clients, digests, [3, 0, 12]).call()
    assert [contract.functions.getScore(c).call() for c in clients] == scores
    with pytest.raises(TransactionReverted, match="Round already recorded"):
        sign_call(w3, accounts.admin, contract.functions.recordRound(4, b"\x07" * 32, clients, digests, scores), "round")


def test_non_owner_round_record_reverts(deployed):
    w3, accounts, contract = deployed
    call = contract.functions.recordRound(1, b"\x01" * 32, [accounts.clients[0].address], [b"\x02" * 32], [1])
    with pytest.raises(TransactionReverted, match="not the contract owner"):
        sign_call(w3, accounts.clients[0], call, "round")
