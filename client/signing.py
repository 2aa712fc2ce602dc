"""What a client states on the ledger, signed with its own key: its data upload and each update it sends.

The recorded digest is the plain digest, or, where the disclosure policy says so (under DP), a salted
commitment H(salt || digest) whose salt comes from the client's secret generator and is kept, with the
digest it hides, in the client's private openings so the client can prove it to an auditor. The
signature (EIP-712, flb.audit.attestation) covers the round and the global digest the client started from,
so the server can neither attribute to a client an update it did not send nor move it to another round.
"""

from __future__ import annotations

from dataclasses import dataclass

from flb.audit.attestation import SALT_BYTES, SigningDomain, commitment, sign_data_upload, sign_update
from flb.errors import FLBError
from flb.privacy.disclosure import Disclosure
from flb.privacy.private_state import PrivateState
from flb.privacy.secret_random import SecretRandom
from flb.types import Attestation, SignedUpload


def salted_commitment(digest: str, random: SecretRandom, private: PrivateState, what: str) -> str:
    """sha256(salt || digest) with a fresh salt from the client's secret generator; the opening (salt, digest) is kept
    in its private openings, so the client alone can later prove what the commitment hides."""
    salt = random.random_bytes(SALT_BYTES)
    committed = commitment(salt, digest)
    private.record_opening(committed, salt, digest, what)
    return committed


@dataclass
class ClientSigner:
    account: object  # eth_account LocalAccount: the client's own key
    disclosure: Disclosure
    domain: SigningDomain | None = None

    @property
    def address(self) -> str:
        return self.account.address

    def recorded(self, digest: str, commit: bool, random: SecretRandom, private: PrivateState, what: str) -> str:
        """`digest` as the chain will hold it: itself, or a fresh salted commitment to it (opening kept)."""
        return salted_commitment(digest, random, private, what) if commit else digest

    def upload(self, recorded_data: str) -> SignedUpload:
        return SignedUpload(recorded_data, sign_data_upload(self.account, self._domain(), recorded_data))

    def attest(
        self,
        *,
        round: int,
        global_digest: str,
        digest: str,
        num_examples: int,
        random: SecretRandom,
        private: PrivateState,
    ) -> Attestation:
        recorded = self.recorded(digest, self.disclosure.commit_updates, random, private, f"round {round} update")
        count = num_examples if self.disclosure.publish_num_examples else 0
        signature = sign_update(
            self.account,
            self._domain(),
            round=round,
            previous_global_digest=global_digest,
            update_digest=recorded,
            num_examples=count,
        )
        return Attestation(recorded_digest=recorded, recorded_num_examples=count, signature=signature)

    def _domain(self) -> SigningDomain:
        if self.domain is None:
            raise FLBError("client signer: no ledger bound; call bind_ledger(domain) before recording anything")
        return self.domain
