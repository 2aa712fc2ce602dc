"""Chain errors: each message is one line naming the cause and the fix."""

from flb.errors import FLBError


class ChainError(FLBError):
    """The ledger cannot reach, deploy to or write to its chain."""


class TransactionReverted(ChainError):
    """The contract rejected a write (duplicate upload, not the owner, round already recorded)."""


class AccountError(ChainError):
    """A keystore is missing, unreadable or its password is not set."""
