"""The same federation on Flower's deployment engine: a ServerApp that drives server.coordinator through
SuperNodes, and a ClientApp that runs client.sft.SFTClient on each node. Wiring only, like main_simple_fl.py."""
