"""A split-learning client on its own machine: `python -m client.split_node --server HOST:PORT --client-id I`.

It asks the server (main_simple_fl.py with mode split, split.channel grpc) for the run's config, takes its shard of
the run's data, loads the model and keeps only its own part (embeddings, the first split.head_layers and last
split.tail_layers blocks, norm and head: the trunk's blocks are freed), then does what the server asks until it says
stop: sign for the run's ledger, send its signed data record, train a round (its session with the trunk, then its
signed update). Its secrets (secret generator, salts, signing key) live in --state-dir/<run id>/private and never
leave it. Exit codes: 0 the server said stop; 2 bad input; 3 the server went away or this client failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from flb.errors import ConfigError, FLBError, first_line
from flb.frames import encode_frame, grouped, ungrouped
from flb.split.cut import reply_or_raise

log = logging.getLogger("client.split_node")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A split-learning client (the server runs mode split).")
    parser.add_argument("--server", required=True, metavar="HOST:PORT", help="the server's split.address")
    parser.add_argument("--client-id", type=int, required=True, help="which of the run's num_clients this is")
    parser.add_argument("--state-dir", default="split-node", help="where this client keeps its secrets, per run")
    parser.add_argument("--wait-s", type=float, default=300.0, help="how long to wait for the server to answer")
    return parser.parse_args(argv)


class Node:
    """This client's end of the run: its transport, its SplitClient, its token."""

    def __init__(self, send, client_id: int, state_dir: Path):
        import assembly
        from client.split_client import drop_trunk
        from flb.config import config_from_dict
        from flb.split.cut import SplitPlan

        self.send, self.identity = send, {}
        header, _ = self.call("config", {})
        config, run_id = config_from_dict(json.loads(header["config"])), str(header["run_id"])
        if not 0 <= client_id < config.num_clients:
            raise ConfigError(f"--client-id {client_id}: the run has clients 0..{config.num_clients - 1}")
        shard = assembly.build_data(config)[0][client_id]
        tokenizer, model = assembly.build_model(config)
        plan = SplitPlan.of(model, config.split.head_layers, config.split.tail_layers)
        run_state = state_dir / Path(run_id).name
        inner = assembly.build_client(
            config, client_id, shard, model, tokenizer, work_dir=run_state / "work", private_dir=run_state / "private"
        )
        drop_trunk(model, plan)
        self.client = assembly.split_client(config, plan, inner, send)
        header, _ = self.call(
            "hello", {"client_id": client_id, "num_examples": inner.num_examples, "address": inner.address}
        )
        self.identity = {"token": header["token"]}
        self.client.channel.identity = self.identity

    def call(self, op: str, header: dict, tensors: dict | None = None) -> tuple[dict, dict]:
        return reply_or_raise(self.send(encode_frame(op, {**header, **self.identity}, tensors)))

    def serve(self) -> None:
        """Do the server's jobs until it says stop."""
        while True:
            job, tensors = self.call("next", {})
            kind = job.get("kind")
            if kind == "stop":
                return
            if kind == "wait":
                continue
            try:
                result, sent = self.do(kind, job, tensors)
            except Exception as exc:
                log.exception("%s failed", kind)
                result, sent = {"error": f"{type(exc).__name__}: {first_line(exc)}"}, {}
            self.call("result", result, sent)

    def do(self, kind: str, job: dict, tensors: dict) -> tuple[dict, dict]:
        from flb.audit.attestation import SigningDomain
        from flb.types import update_header

        if kind == "bind":
            self.client.bind_ledger(SigningDomain.from_dict(job["domain"]))
            return {}, {}
        if kind == "upload":
            upload = self.client.data_upload()
            return {"recorded_digest": upload.recorded_digest, "signature": upload.signature}, {}
        if kind == "fit":
            global_adapter, extras = ungrouped(tensors, "global_adapter", "extras")
            update = self.client.fit(global_adapter, int(job["round"]), extras)
            return update_header(update), grouped(tensors=update.tensors, extras=update.extras)
        raise FLBError(f"unknown job {kind!r} from the server")


def main(argv: list[str] | None = None) -> int:
    import assembly
    from flb.split.grpc_channel import GrpcSend

    assembly.configure_logging()
    args = parse_args(argv)
    send = GrpcSend(args.server, args.wait_s)
    try:
        Node(send, args.client_id, Path(args.state_dir)).serve()
    except FLBError as exc:
        print(f"error: client {args.client_id}: {first_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 3
    finally:
        send.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
