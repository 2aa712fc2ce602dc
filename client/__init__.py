"""One federated client: local SFT on its own shard, an optional privacy step, a ClientUpdate."""
