"""The audit trail's shared pieces: digests, what a client signs (EIP-712), signing keys, the anchored run spec."""
