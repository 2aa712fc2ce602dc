"""The server's part of split learning: the trunk (the decoder blocks between the cuts) and its LoRA.

`TrunkServer.handle` answers one frame of a client's session (flb.split.cut): `open` puts the round's trunk adapter in
the model and makes the session's optimizer; each `forward` runs the trunk on the hidden states the client sent and
keeps the graph; the next `backward` back-propagates the client's gradient through it, returns the gradient at the
first cut and, at the last micro-batch of a client's step, clips the trunk's gradients (sft max_grad_norm) and
takes the optimizer step; `close` returns the trunk's adapter. With split.trunk shared, the trunk a session ends
with is where the next client's starts (every client trains it in turn); with per_client every session starts from
the round's global trunk and the strategy averages the copies. Dropout in the trunk draws from a generator seeded by
(seed, round, client, forward count), so the trunk computes the same wherever it runs.

Anything out of order or malformed (a frame for another client, a tensor of the wrong shape, a backward without a
forward) is answered with an error frame naming it; the session's state is left as it was.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from flb.errors import first_line
from flb.frames import decode_frame, encode_frame
from flb.seeding import derived_seed
from flb.split.cut import SplitError, SplitPlan, Traffic, set_adapter_part
from flb.types import AdapterState

log = logging.getLogger(__name__)
_DROPOUT_STREAM = 0x5B


@dataclass
class _Session:
    client_id: int
    round: int
    optimizer: object
    scheduler: object
    forwards: int = 0
    pending: tuple | None = None  # (input leaf, output) of the last forward, until its backward


@dataclass
class TrunkServer:
    model: object  # the peft model; the trunk's blocks are trained here
    plan: SplitPlan
    training_args: object  # trl's SFTConfig: the clients' optimizer, schedule, clipping and mixed precision
    local_steps: int
    learning_rate: object  # round -> the round's learning rate (flb.model.sft_settings.round_learning_rate)
    seed: int
    shared: bool  # split.trunk shared: each session continues the previous one's trunk
    traffic: Traffic = field(default_factory=Traffic)  # this round's frames, counted as received and sent
    _trunk: AdapterState = field(default_factory=dict)  # where the next session starts
    _global: AdapterState = field(default_factory=dict)
    _round: int | None = None
    expected: int | None = None  # the client the server waits on (None: any client, in one process)
    _session: _Session | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start_round(self, global_adapter: AdapterState, round: int) -> None:
        self._global = self.plan.trunk_part(global_adapter)
        self._trunk, self._round, self._session, self.traffic = dict(self._global), round, None, Traffic()

    def __call__(
        self, clients: list, global_adapter: AdapterState, round: int, extras: AdapterState, deadline=None
    ) -> list:
        """flb.types.FitAll for in-process split clients: the round's trunk set up, then the clients in
        turn."""
        from server.coordinator import fit_in_turn

        self.start_round(global_adapter, round)
        return fit_in_turn(clients, global_adapter, round, extras, deadline)

    def round_traffic(self) -> Traffic:
        return self.traffic

    def expect(self, client_id: int | None) -> None:
        """Accept sessions from this client only (a network run asks one client at a time); None: any."""
        self.expected = client_id

    def handle(self, frame: bytes) -> bytes:
        """One frame in, its reply out: never raises for what a client sent."""
        with self._lock:
            try:
                op, header, tensors = decode_frame(frame)
                reply = encode_frame(*self._dispatch(op, header, tensors))
            except (SplitError, ValueError, TypeError, KeyError, RuntimeError) as exc:
                log.warning("split: refused a frame: %s", first_line(exc))
                reply = encode_frame("error", {"message": first_line(exc)})
            self.traffic.add(len(frame), len(reply))
            return reply

    def _dispatch(self, op: str, header: dict, tensors: dict) -> tuple:
        if op == "open":
            return self._open(header)
        session = self._session
        if session is None:
            raise SplitError(f"{op!r} outside a session; open one first")
        if op == "forward":
            return self._forward(session, tensors)
        if op == "backward":
            return self._backward(session, header, tensors)
        if op == "close":
            return self._close(session)
        raise SplitError(f"unknown operation {op!r}")

    def _open(self, header: dict) -> tuple:
        from flb.model.sft_settings import optimizer_and_scheduler

        client_id, round = header.get("client_id"), header.get("round")
        if self._round is None or round != self._round:
            raise SplitError(f"session for round {round!r}; the server is in round {self._round}")
        if self.expected is not None and client_id != self.expected:
            raise SplitError(f"session for client {client_id!r}; the server waits on client {self.expected}")
        start = self._trunk if self.shared else self._global
        set_adapter_part(self.model, start)
        self.training_args.learning_rate = self.learning_rate(round)
        parameters = [p for name, p in self.model.named_parameters() if p.requires_grad and self.plan.in_trunk(name)]
        optimizer, scheduler = optimizer_and_scheduler(self.training_args, parameters, self.local_steps, self.model)
        self._session = _Session(client_id, round, optimizer, scheduler)
        self.model.train()
        return ("ok",)

    def _forward(self, session: _Session, tensors: dict) -> tuple:
        import torch

        from flb.model.sft_settings import mixed_precision

        if session.pending is not None:
            raise SplitError("forward before the last forward's backward")
        hidden, mask = tensors.get("hidden"), tensors.get("attention_mask")
        size = self.model.get_base_model().config.get_text_config().hidden_size
        if (
            hidden is None
            or mask is None
            or hidden.dim() != 3
            or hidden.shape[-1] != size
            or not hidden.is_floating_point()
            or tuple(mask.shape) != tuple(hidden.shape[:2])
        ):
            raise SplitError(f"forward needs hidden [batch, tokens, {size}] (float) and attention_mask [batch, tokens]")
        if not torch.isfinite(hidden).all() or not ((mask == 0) | (mask == 1)).all():
            raise SplitError("forward: hidden states must be finite and the attention mask 0 or 1")
        device = self.model.get_base_model().device
        leaf = hidden.to(device).requires_grad_()
        session.forwards += 1
        with (
            torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
            mixed_precision(self.training_args, device.type),
        ):
            torch.manual_seed(
                derived_seed(self.seed, session.round, session.client_id, session.forwards, _DROPOUT_STREAM)
            )
            output = self.plan.run(self.model, self.plan.trunk_layers, leaf, mask.to(device))
        session.pending = (leaf, output)
        self.traffic.forwards += 1
        return "hidden", {}, {"hidden": output}

    def _backward(self, session: _Session, header: dict, tensors: dict) -> tuple:
        import torch

        if session.pending is None:
            raise SplitError("backward without a forward")
        leaf, output = session.pending
        grad = tensors.get("grad")
        if grad is None or grad.shape != output.shape or not torch.isfinite(grad).all():
            raise SplitError(f"backward needs a finite grad of the forward's output shape {tuple(output.shape)}")
        output.backward(grad.to(output.device, output.dtype))
        session.pending = None
        if header.get("step") is True:
            self._optimizer_step(session)
        return "grad", {}, ({"grad": leaf.grad} if header.get("input_grad", True) else {})

    def _optimizer_step(self, session: _Session) -> None:
        import torch

        parameters = [p for group in session.optimizer.param_groups for p in group["params"]]
        if self.training_args.max_grad_norm and self.training_args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(parameters, self.training_args.max_grad_norm)
        session.optimizer.step()
        session.scheduler.step()
        session.optimizer.zero_grad(set_to_none=True)

    def _close(self, session: _Session) -> tuple:
        from flb.model.load import get_adapter_state

        if session.pending is not None:
            raise SplitError("close with a forward still waiting for its backward")
        trunk = self.plan.trunk_part(get_adapter_state(self.model))
        if self.shared:
            self._trunk = trunk
        self._session = None
        return "trunk", {}, trunk
