"""One root for every error FLB raises on purpose; each message says what is wrong and the fix."""

from __future__ import annotations


class FLBError(Exception):
    """Root of FLB's errors: the message is a single line meant for the user."""


class ConfigError(FLBError, ValueError):
    """A config key is unknown or its value is invalid."""


def invalid_value(key: str, value, allowed: str) -> ConfigError:
    """The one wording of a bad value, wherever it is checked: "KEY: invalid value VALUE; allowed: ALLOWED"."""
    return ConfigError(f"{key}: invalid value {shown(value)}; allowed: {allowed}")


def require(ok: bool, key: str, value, allowed: str) -> None:
    """Raise `invalid_value(key, value, allowed)` unless `ok`."""
    if not ok:
        raise invalid_value(key, value, allowed)


class DataError(FLBError):
    """A dataset cannot be loaded, normalised or partitioned."""


class ModelError(FLBError):
    """A model cannot be located or loaded as configured."""


class UpdateRejected(FLBError):
    """A client update failed validation; the round goes on without it."""


class ClientUnavailable(FLBError):
    """A client could not be reached in time (its node is down or too slow); its round goes on without it."""


class ClientLate(FLBError):
    """A client's update did not arrive by the round's deadline (server.round_deadline_s), or under fedbuff arrived
    too stale; the round was aggregated without it, which is recorded as late, not as a failure."""

    @classmethod
    def before_turn(cls, client_id: int) -> ClientLate:
        return cls(f"client {client_id}: the round closed at its deadline before its turn to train")

    @classmethod
    def after_deadline(cls, client_id: int) -> ClientLate:
        return cls(f"client {client_id}: its update came after the round's deadline")

    @classmethod
    def still_training(cls, client_id: int) -> ClientLate:
        return cls(f"client {client_id}: still training when the round closed at its deadline")

    @classmethod
    def stale(cls, client_id: int, start_round: int, round: int, max_staleness: int) -> ClientLate:
        return cls(
            f"client {client_id}: its update started from round {start_round}, {round - 1 - start_round} rounds "
            f"stale in round {round} (strategy.fedbuff.max_staleness = {max_staleness})"
        )


class RunDirError(FLBError):
    """A run directory is missing, incomplete or cannot be resumed."""


class RunFailed(FLBError):
    """A started run cannot go on or did not achieve what it was for (a client crashed, every round was
    skipped, a ledger record could not be sent); everything completed before is saved."""


def first_line(exc: BaseException) -> str:
    """The first non-blank line of `exc`'s message (its type name when it has none), to quote in a one-line error."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def shown(value, limit: int = 80) -> str:
    """`value`'s repr cut to `limit` characters: a pasted blob must not flood a one-line error."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
