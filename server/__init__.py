"""The server: strategies, validation, evaluation, checkpoints, and the round coordinator."""
