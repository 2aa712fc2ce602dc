"""The composition layer: where flb/, server/, client/ and chain/ meet. It builds the data, the model, the clients,
the ledger and the execution mode, and runs them; the front ends (main_simple_fl.py, the Flower apps, the split node,
the bench scripts) call it, and nothing below it imports it.

Its modules: options (the command line's flags and the config they resolve to), build (what is checked and built
before the run directory exists), clients (the clients and how a round fits them, per execution mode), run (a whole
run, from round 0 or resumed, to the summary), console (logging). The names below are its interface."""

from assembly.build import Prepared, build_data, build_model, check_chain, prepare
from assembly.clients import build_client, build_run_client, split_client, split_clients_and_fit_all
from assembly.console import configure_logging, logs_above_bars
from assembly.options import parse_args, resolve_config
from assembly.run import coordinate, run, stopped_line

__all__ = [
    "Prepared",
    "build_client",
    "build_data",
    "build_model",
    "build_run_client",
    "check_chain",
    "configure_logging",
    "coordinate",
    "logs_above_bars",
    "parse_args",
    "prepare",
    "resolve_config",
    "run",
    "split_client",
    "split_clients_and_fit_all",
    "stopped_line",
]
