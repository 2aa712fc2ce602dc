"""Differential privacy: the accountants, the secret randomness that decides privacy, each party's private state,
and what a run's public config lets the ledger disclose."""
