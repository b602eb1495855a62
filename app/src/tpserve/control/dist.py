"""Process groups: DeepSpeed's data plane (gloo/NCCL) and a gloo control channel with a timeout.

The control channel carries the scheduler's steps from rank 0 to every rank: through a
shared-memory mailbox when all ranks share a host (tpserve.control.mailbox), else over gloo (also on CUDA:
one pre-sized int64 tensor per step, see tpserve.control.stepwire). Its timeout is the heartbeat timeout:
an idle rank 0 broadcasts a no-op heartbeat every few seconds, so a rank that waits longer than
the timeout knows a peer died. After each step and heartbeat every rank reports its outcome
(`Channel.agree`): rank 0 goes on only once all did, so it knows of a CUDA OOM on any rank before the
next step, and an idle rank 0 knows when it last heard from every rank (/health).
Any collective error is fatal (see `fatal`).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

from tpserve.control import stepwire
from tpserve.control.mailbox import Mailbox
from tpserve.engines.base import DistInfo

log = logging.getLogger("tpserve.control.dist")
#: int64 slots of the mailbox's payload (512 KiB): larger step messages (long prompts) go over gloo.
MAILBOX_CAPACITY = 1 << 16
#: How long a rank busy-polls the mailbox before sleep-polling: rank 1 waits there while rank 0
#: samples and streams (~0.1-1 ms on GPU); polling longer would only burn a core while idle.
MAILBOX_SPIN_S = 0.005


def dist_info_from_env() -> DistInfo:
    """Read the launcher's RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_SIZE (defaults: one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_size = int(os.environ.get("LOCAL_SIZE", os.environ.get("LOCAL_WORLD_SIZE", str(world))))
    return DistInfo(
        rank=int(os.environ.get("RANK", "0")),
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_size=local_size,
        host=socket.gethostname(),
    )


#: how long a fatal hook may hold the exit so clients get an error, not a cut connection (rank 0:
#: the front end answers what is in flight; coreproc and the in-process scheduler both wait this long)
FATAL_GRACE_S = 2.0
_fatal_hooks: list[Callable[[str], None]] = []
_exiting = threading.Lock()


def on_fatal(hook: Callable[[str], None]) -> None:
    """`hook(message)` runs in `fatal` before the exit (bounded by the hook itself; errors ignored):
    rank 0's engine core tells its front end process why, so clients get an error, not a cut."""
    _fatal_hooks.append(hook)


def fatal(message: str, code: int = 1) -> None:
    """Log and leave NOW (no atexit, no waiting on threads): a TP group with a dead rank is useless.
    The first caller exits; a second thread's call (a consequence of the first) only waits for it."""
    if not _exiting.acquire(blocking=False):
        log.info("also: %s", message)
        threading.Event().wait()  # the first caller's os._exit ends this thread too
    log.critical("%s; exiting with %d", message, code)
    for hook in _fatal_hooks:
        try:
            hook(message)
        except Exception:  # never in the way of the exit
            log.exception("fatal hook failed")
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(code)


class Channel:
    """Rank-0 → all broadcast and all-gather; a no-op loopback when world_size == 1."""

    def __init__(
        self, info: DistInfo, group: Any = None, mailbox: Mailbox | None = None, timeout_s: float = 30.0
    ) -> None:
        self.info = info
        self.group = group
        self.mailbox = mailbox
        self.timeout_s = timeout_s
        self._buf: Any = None  # the pre-sized int64 message buffer (torch imported lazily)
        self._outcome: Any = None  # the one-int64 tensor of `agree` over gloo

    def broadcast(self, message: Any = None) -> Any:
        """Rank 0 sends `message`, every other rank returns it.

        Ranks on one host: through the shared-memory mailbox (tpserve.control.mailbox), except messages too
        big for it. Otherwise over gloo: see `_gloo_broadcast`.
        """
        if self.info.world_size == 1:
            return message
        box = self.mailbox
        if box is None:
            return self._gloo_broadcast(message)
        if self.info.rank == 0:
            ints = stepwire.encode(message)
            fits = len(ints) <= box.capacity
            box.send(ints if fits else None, self.timeout_s, MAILBOX_SPIN_S)
            return message if fits else self._gloo_broadcast(message)
        ints = box.receive(self.timeout_s, MAILBOX_SPIN_S)
        return stepwire.decode(ints) if ints is not None else self._gloo_broadcast(None)

    def _gloo_broadcast(self, message: Any = None) -> Any:
        """ONE broadcast of a pre-sized int64 tensor (a second one for a prompt longer than the
        buffer); see tpserve.control.stepwire for the format. Never a pickle."""
        import torch
        import torch.distributed as tdist

        if self._buf is None:
            self._buf = torch.zeros(stepwire.SLOTS, dtype=torch.int64)
        buf = self._buf
        if self.info.rank == 0:
            ints = stepwire.encode(message)
            head = ints[: stepwire.SLOTS]
            buf[: len(head)] = torch.tensor(head, dtype=torch.int64)
            tdist.broadcast(buf, src=0, group=self.group)
            if len(ints) > stepwire.SLOTS:
                rest = torch.tensor(ints[stepwire.SLOTS :], dtype=torch.int64)
                tdist.broadcast(rest, src=0, group=self.group)
            return message
        tdist.broadcast(buf, src=0, group=self.group)
        kind, total = buf[:2].tolist()
        ints = buf[: min(total, stepwire.SLOTS)].tolist()
        if kind == stepwire.CONTINUED:
            rest = torch.empty(total - stepwire.SLOTS, dtype=torch.int64)
            tdist.broadcast(rest, src=0, group=self.group)
            ints += rest.tolist()
        return stepwire.decode(ints)

    def agree(self, outcome: int) -> int:
        """Every rank calls this after each Step, Heartbeat and Recover with its own outcome (0 ok,
        1 CUDA OOM): rank 0 gets the worst of all ranks' once every rank has reported; the other
        ranks get their own (they only follow rank 0's next message).

        Ranks on one host: the mailbox's outcome slots (rank 0 polls them; no collective, ~us).
        Otherwise one all_reduce(MAX) of one int64 over the gloo control group (one round trip). On
        CUDA neither touches the device: the outcome is known on the host when forward() returns.
        A rank that does not report within the control timeout raises (dead or partitioned peer)."""
        if self.info.world_size == 1:
            return outcome
        box = self.mailbox
        if box is not None:
            if self.info.rank == 0:
                return max(outcome, box.outcome(self.timeout_s, MAILBOX_SPIN_S))
            box.report(outcome)
            return outcome
        import torch
        import torch.distributed as tdist

        if self._outcome is None:
            self._outcome = torch.zeros(1, dtype=torch.int64)
        self._outcome[0] = outcome
        tdist.all_reduce(self._outcome, op=tdist.ReduceOp.MAX, group=self.group)
        return int(self._outcome[0])

    def all_gather(self, obj: Any) -> list[Any]:
        """Gather on the default group (long timeout: ranks may finish loading at different times)."""
        if self.info.world_size == 1:
            return [obj]
        return all_gather_json(obj, self.info.world_size)


def all_gather_json(obj: Any, world_size: int, group: Any = None) -> list[Any]:
    """Every rank's JSON-able `obj`, as JSON bytes in uint8 tensors (no pickle on the wire): the
    sizes first, then the padded bytes. On an NCCL group the tensors live on this rank's GPU."""
    import json

    import torch
    import torch.distributed as tdist

    device = "cuda" if tdist.get_backend(group) == "nccl" else "cpu"
    data = torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8).to(device)
    size = torch.tensor([data.numel()], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    tdist.all_gather(sizes, size, group=group)
    lengths = [int(s.item()) for s in sizes]
    padded = torch.zeros(max(lengths), dtype=torch.uint8, device=device)
    padded[: data.numel()] = data
    out = [torch.zeros_like(padded) for _ in range(world_size)]
    tdist.all_gather(out, padded, group=group)
    return [json.loads(bytes(o[:n].cpu().tolist())) for o, n in zip(out, lengths, strict=True)]


def init(info: DistInfo, device: str, heartbeat_timeout_s: float, startup_timeout_s: float = 1800) -> Channel:
    """Initialise torch.distributed through DeepSpeed and build the control channel."""
    if info.world_size == 1:
        return Channel(info)
    import deepspeed
    import deepspeed.comm as dscomm
    import torch.distributed as tdist

    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        import torch

        torch.cuda.set_device(info.local_rank)
    cross_host_cpu = device == "cpu" and not info.single_host
    if cross_host_cpu:
        # DeepSpeed's shm all-reduce only works when every rank shares one host; across hosts it
        # SEGFAULTs (deepspeed#7625). Do not even JIT-build it (30-90 s per node for nothing).
        import importlib

        # not `import deepspeed.comm.torch as m`: deepspeed.comm has an attribute `torch` (the torch module)
        ds_torch_backend = importlib.import_module("deepspeed.comm.torch")
        ds_torch_backend.build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend=backend, timeout=dt.timedelta(seconds=startup_timeout_s))
    if cross_host_cpu:
        # level 0: inference_all_reduce uses torch.distributed (gloo) whatever the op state
        dscomm.comm.cdb.shm_vector_kernel_level = 0
        log.info("ranks span hosts: DeepSpeed shm all-reduce disabled (not built), gloo all-reduce used")
    group = tdist.new_group(backend="gloo", timeout=dt.timedelta(seconds=heartbeat_timeout_s))
    mailbox = attach_mailbox(info, group) if info.single_host else None
    log.info(
        "rank %d/%d (local %d/%d on %s) joined; data plane %s, control %s (timeout %.0f s)",
        info.rank,
        info.world_size,
        info.local_rank,
        info.local_size,
        info.host,
        backend,
        "shared-memory mailbox" if mailbox else "gloo",
        heartbeat_timeout_s,
    )
    return Channel(info, group, mailbox, heartbeat_timeout_s)


def attach_mailbox(info: DistInfo, group: Any) -> Mailbox | None:
    """Rank 0 creates the mailbox file, the others map it, rank 0 unlinks it (nothing left behind).

    Every rank learns whether all of them could map it (all-gather); if one could not (no writable
    /dev/shm in its sandbox, say), all use gloo.
    """

    path = "/dev/shm/tpserve-ctl-{}-{}-{}".format(
        os.getuid(), os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    )
    box: Mailbox | None = None
    problem = ""
    if info.rank == 0:
        try:
            box = Mailbox(path, info.world_size, 0, MAILBOX_CAPACITY, create=True)
        except OSError as exc:
            problem = f"rank 0 cannot create {path}: {exc}"
    problem = all_gather_json(problem, info.world_size, group)[0]
    if info.rank != 0 and not problem:
        try:
            box = Mailbox(path, info.world_size, info.rank, MAILBOX_CAPACITY, create=False)
        except OSError as exc:
            problem = f"rank {info.rank} cannot map {path}: {exc}"
    mapped = all_gather_json(problem, info.world_size, group)
    if info.rank == 0 and box is not None:
        box.unlink()
    problems = [p for p in mapped if p]
    if problems:
        log.warning("control messages over gloo: %s", "; ".join(problems))
        return None
    return box


def unlink_own_shm_buffer(info: DistInfo) -> bool:
    """Unlink this rank's DeepSpeed shm all-reduce buffer name (DeepSpeed never does: it leaks).

    Call after a collective that follows init_distributed: by then every local rank has mapped
    every buffer, and the mappings stay valid after the name is gone. Nothing is left in /dev/shm
    even if the process is later SIGKILLed. Name: deepspeed_allreduce_buffer_UID_ADDR_PORT_RANK.
    """
    name = "deepspeed_allreduce_buffer_{}_{}_{}_{}".format(
        os.getuid(), os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", ""), info.rank
    )
    try:
        os.unlink(os.path.join("/dev/shm", name))
    except FileNotFoundError:
        return False
    log.info("unlinked /dev/shm/%s (mapping stays valid)", name)
    return True
