"""Federated LoRA fine-tuning with an audit trail:
`python main_simple_fl.py [--config F] [--set k=v]... [--resume RUN]`.

The command line only: the run is assembled and driven by the composition layer (assembly/)."""

from __future__ import annotations

import sys

from assembly import configure_logging, logs_above_bars, parse_args, resolve_config, run, stopped_line
from flb.errors import FLBError, RunFailed


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 the run completed and everything is recorded; 2 bad input (nothing was created, or a resume
    was refused); 3 the run started but failed (what was done before is saved); 130 stopped by Ctrl-C or SIGTERM
    (the rounds completed before are saved)."""
    from flb.run.redaction import redact_text
    from flb.run.stop import EXIT_CODE, StopRequested, stop_signals

    configure_logging()
    try:
        args = parse_args(argv)
        with stop_signals(), logs_above_bars():
            run(resolve_config(args), resume=args.resume, export_merged=args.export_merged, verbose=args.verbose)
    except StopRequested as stop:
        print("\n" + stopped_line(stop), file=sys.stderr)  # on a line of its own, below an interrupted bar
        return EXIT_CODE
    except RunFailed as exc:
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return 3
    except FLBError as exc:
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
