"""The ServerApp: assembly.run with the clients on SuperNodes.

Run config (pyproject.toml [tool.flwr.app.config], override with `flwr run . <connection> --run-config`):
`flb-args` holds main_simple_fl's own flags (`--config`, `--set k=v`, `--resume`, `--use_server_dp`), so the
config is the same config.yaml; the timeouts say how long to wait for nodes, for a query and for a round.
"""

from __future__ import annotations

import shlex

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    import assembly
    from flb_flower.fleet import Fleet

    assembly.configure_logging()
    settings = context.run_config
    args = assembly.parse_args(shlex.split(str(settings["flb-args"])))
    config = assembly.resolve_config(args)
    fleet = Fleet(
        grid,
        config.to_dict(),
        wait_for_nodes_s=float(settings["wait-for-nodes-s"]),
        round_timeout_s=float(settings["round-timeout-s"]),
        query_timeout_s=float(settings["query-timeout-s"]),
    )
    assembly.run(config, resume=args.resume, export_merged=args.export_merged, fleet=fleet)
