"""What the ledger may publish about a run, decided from its public config, the same way by every party.

Without differential privacy nothing is private, so the chain holds plain digests, which anyone can
check against the published files. Under any DP mechanism the chain holds only DP outputs or salted
commitments H(salt || digest) whose salt stays with the party that owns the data:
- a client's data digest is committed (a plain shard hash lets someone who knows every record but one
  test membership by recomputing it);
- a client's update digest is committed unless the update is itself a DP output (local DP);
- example counts are not published (0 is recorded);
- with `chain.record_participants: false` even who took part is replaced by a commitment.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Disclosure:
    commit_data: bool
    commit_updates: bool
    publish_num_examples: bool
    record_participants: bool

    @classmethod
    def of(cls, config) -> Disclosure:
        """The policy of a flb.config.Config."""
        return cls(
            commit_data=config.uses_dp,
            commit_updates=config.server_dp and not config.client.local_dp,
            publish_num_examples=not config.uses_dp,
            record_participants=config.chain.record_participants,
        )

    def to_dict(self) -> dict:
        return {
            "commit_data": self.commit_data,
            "commit_updates": self.commit_updates,
            "publish_num_examples": self.publish_num_examples,
            "record_participants": self.record_participants,
        }
