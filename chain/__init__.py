"""FLB's on-chain audit trail: the FLB contract, a web3 ledger (embedded py-evm, anvil or any
JSON-RPC node) behind a durable outbox, contribution scoring, accounts and an explorer.

Importing this package is cheap; web3 is imported by the modules that talk to a chain."""
