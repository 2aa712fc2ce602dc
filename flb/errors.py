"""One root for every error FLB raises on purpose; each message says what is wrong and the fix."""


class FLBError(Exception):
    """Root of FLB's errors: the message is a single line meant for the user."""


class ConfigError(FLBError, ValueError):
    """A config key is unknown or its value is invalid."""


class DataError(FLBError):
    """A dataset cannot be loaded, normalised or partitioned."""


class ModelError(FLBError):
    """A model cannot be located or loaded as configured."""


class UpdateRejected(FLBError):
    """A client update failed validation; the round goes on without it."""


class RunDirError(FLBError):
    """A run directory is missing, incomplete or cannot be resumed."""
