#!/usr/bin/env python3
"""Cluster network preflight: a short collective between the master and every worker.

Started at the same time on every node by the net_preflight role (rank 0 = the master). The master
hosts a TCPStore on --port; each worker connects to it and then forms a 2-rank process group with
the master (gloo on CPU clusters, NCCL on GPU clusters), over the cluster interface, exactly like
the service's ranks do: the rendezvous port plus the ports gloo/NCCL open on each node (ephemeral
ports, net.ipv4.ip_local_port_range). Every pair is measured one after the other: latency (median
of small all_reduce round trips) and bandwidth (median of 3 --bytes broadcasts each way).

When every master-worker pair is fine and there are two workers or more, all nodes then form ONE
group (what the service's ranks do): gloo connects every pair of ranks in its constructor, NCCL the
pairs its rings and trees use, so a firewall that lets workers talk to the master but not to each
other is caught here too ("group" in the result; the master publishes "group" = 1/0 in the store).

Nothing is written anywhere: the last line on stdout is one JSON object:
  {"node", "role", "ok", "stage", "error", "pairs": [{"worker", "ok", "stage", "error",
   "latency_ms", "bw_to_worker_MBps", "bw_to_master_MBps"}], "group": {"ok", "size", "error"}}
A watchdog ends the process with that line once --deadline seconds have passed since torch was
imported, whatever the backend is stuck in (NCCL hangs rather than failing), naming the stage.
Exit status: 0 ok, 1 a pair failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import sys
import threading
import time

T0 = time.monotonic()
_lock = threading.Lock()
_printed = False
RESULT: dict = {"ok": False, "stage": "start", "error": None, "pairs": []}


def emit(code: int) -> None:
    """Print the JSON result once and exit (from any thread)."""
    global _printed
    with _lock:
        if _printed:
            return
        _printed = True
        RESULT["elapsed_s"] = round(time.monotonic() - T0, 2)
        sys.stdout.write(json.dumps(RESULT, sort_keys=True) + "\n")
        sys.stdout.flush()
    os._exit(code)


def watchdog(deadline: float) -> None:
    time.sleep(max(deadline - (time.monotonic() - T0), 0.0))
    RESULT["ok"] = False
    for pair in RESULT["pairs"]:
        if pair.get("ok") is not None:
            continue
        if pair["stage"].startswith(("connected", "measuring")):
            # it connected: the network is open for this pair; only the numbers are missing
            pair.update(ok=True, note=f"connected, measurement cut off at {deadline:.0f} s")
        else:
            pair["ok"] = False
            pair["error"] = (
                pair.get("error") or f"no answer within {deadline:.0f} s ({pair['stage']})"
            )
    group = RESULT.get("group")
    if group and group.get("ok") is None:
        group.update(ok=False, error=f"not formed within {deadline:.0f} s")
    RESULT["error"] = (
        RESULT["error"] or f"no answer within {deadline:.0f} s (stage: {RESULT['stage']})"
    )
    emit(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--node", required=True, help="this node's inventory name")
    ap.add_argument("--rank", type=int, required=True, help="0 = master, 1..N-1 = workers")
    ap.add_argument("--workers", required=True, help="comma-separated worker names, rank order")
    ap.add_argument("--master-addr", required=True)
    ap.add_argument("--port", type=int, required=True, help="the check's rendezvous port")
    ap.add_argument("--backend", choices=["gloo", "nccl"], default="gloo")
    ap.add_argument("--ifname", default="", help="cluster interface (GLOO/NCCL_SOCKET_IFNAME)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per connection")
    ap.add_argument("--deadline", type=float, default=25.0, help="seconds for the whole check")
    ap.add_argument("--bytes", type=int, default=64 << 20, help="bandwidth message size")
    ap.add_argument("--iters", type=int, default=20, help="latency round trips")
    args = ap.parse_args()

    workers = [w for w in args.workers.split(",") if w]
    try:  # the ephemeral ports gloo/NCCL listen on: what a firewall must let through
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as handle:
            RESULT["port_range"] = "-".join(handle.read().split())
    except OSError:
        RESULT["port_range"] = "unknown"
    RESULT.update(
        node=args.node, role="master" if args.rank == 0 else "worker", backend=args.backend
    )
    if not 0 <= args.rank <= len(workers):
        RESULT["error"] = f"--rank {args.rank} outside 0..{len(workers)}"
        emit(2)
    if args.ifname:
        os.environ["GLOO_SOCKET_IFNAME"] = args.ifname
        os.environ["NCCL_SOCKET_IFNAME"] = args.ifname
    os.environ.setdefault("NCCL_IB_DISABLE", "1")
    if args.backend == "nccl":
        # a broken connection raises within the timeout instead of hanging the watchdog's way
        os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")

    RESULT["stage"] = "import torch"
    import torch
    import torch.distributed as dist

    # The deadline counts from here: importing torch took > 10 s on a loaded 2-core CI machine and
    # made healthy pairs miss it (Ansible's async limit still bounds a hung import).
    global T0
    T0 = time.monotonic()
    threading.Thread(target=watchdog, args=(args.deadline,), daemon=True).start()

    timeout = datetime.timedelta(seconds=args.timeout)
    device = torch.device("cuda", 0) if args.backend == "nccl" else torch.device("cpu")
    pairs = workers if args.rank == 0 else [workers[args.rank - 1]]
    for worker in pairs:
        RESULT["pairs"].append({"worker": worker, "ok": None, "stage": "waiting", "error": None})

    # 1) rendezvous: the master's store on --port
    RESULT["stage"] = f"rendezvous at {args.master_addr}:{args.port}"
    try:
        store = dist.TCPStore(
            args.master_addr,
            args.port,
            is_master=args.rank == 0,
            timeout=timeout,
            wait_for_workers=False,
        )
    except Exception as exc:
        RESULT["error"] = (
            f"{RESULT['stage']}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        )
        for pair in RESULT["pairs"]:
            pair.update(ok=False, stage=RESULT["stage"], error=RESULT["error"])
        emit(1)

    def make_group(index: int, rank_in_pair: int) -> object:
        # the master connects its pairs at once, each with its OWN store client: a TCPStore client
        # runs one request at a time (a lock held through a blocking wait), so a worker that never
        # came held every other pair's rendezvous for the whole timeout and failed healthy pairs
        own = store
        if args.rank == 0:
            own = dist.TCPStore(args.master_addr, args.port, is_master=False, timeout=timeout)
        prefix = dist.PrefixStore(f"pair{index}/", own)
        if args.backend == "nccl":
            opts = dist.ProcessGroupNCCL.Options()
            opts._timeout = timeout
            group = dist.ProcessGroupNCCL(prefix, rank_in_pair, 2, opts)
        else:
            group = dist.ProcessGroupGloo(prefix, rank_in_pair, 2, timeout)
        # the first collective connects NCCL (gloo connected in its constructor)
        probe = torch.ones(1, device=device)
        group.allreduce([probe]).wait()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return group

    def measure(group: object, pair: dict) -> None:
        small = torch.ones(1, device=device)
        times = []
        for _ in range(max(args.iters, 1)):
            t = time.perf_counter()
            group.allreduce([small]).wait()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t)
        big = torch.empty(max(args.bytes // 4, 1), dtype=torch.float32, device=device)
        bw = {}
        for root, key in ((0, "bw_to_worker_MBps"), (1, "bw_to_master_MBps")):
            opts = dist.BroadcastOptions()
            opts.rootRank = root
            group.broadcast([big], opts).wait()  # warm-up
            runs = []
            for _ in range(3):
                t = time.perf_counter()
                group.broadcast([big], opts).wait()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                runs.append(time.perf_counter() - t)
            bw[key] = round(big.numel() * 4 / statistics.median(runs) / 1e6, 1)
        pair.update(latency_ms=round(statistics.median(times) * 1e3, 3), **bw)

    def whole_group() -> None:
        """Every node in one group and one all_reduce; the outcome goes to RESULT["group"]."""
        size = len(workers) + 1
        RESULT["stage"] = f"all {size} nodes in one group"
        RESULT["group"] = {"ok": None, "size": size, "error": None}
        try:
            prefix = dist.PrefixStore("all/", store)
            if args.backend == "nccl":
                opts = dist.ProcessGroupNCCL.Options()
                opts._timeout = timeout
                group = dist.ProcessGroupNCCL(prefix, args.rank, size, opts)
            else:
                group = dist.ProcessGroupGloo(prefix, args.rank, size, timeout)
            probe = torch.ones(1, device=device)
            group.allreduce([probe]).wait()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if int(probe.item()) != size:
                raise RuntimeError(f"all_reduce of ones gave {probe.item()}, not {size}")
            RESULT["group"]["ok"] = True
        except Exception as exc:
            RESULT["group"].update(
                ok=False, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            )

    def run_pair(index: int, pair: dict, rank_in_pair: int) -> None:
        who = f"{args.node}<->{pair['worker']}" if rank_in_pair == 0 else f"{args.node}<->master"
        try:
            pair["stage"] = f"connecting {who}"
            group = make_group(index, rank_in_pair)
            pair["stage"] = f"connected {who}"
            groups[index] = group
        except Exception as exc:
            pair.update(ok=False, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")

    def connect(todo: list[tuple[int, dict]], rank_in_pair: int) -> None:
        """Connect pairs at once; one still connecting after --timeout (a dropped SYN makes TCP
        retry for minutes) is a failed pair, the others go on."""
        if args.backend == "nccl":  # NCCL: one communicator after the other; the watchdog bounds it
            for index, pair in todo:
                run_pair(index, pair, rank_in_pair)
            return
        threads = []
        for index, pair in todo:
            th = threading.Thread(target=run_pair, args=(index, pair, rank_in_pair), daemon=True)
            th.start()
            threads.append((th, pair))
        # ... and early enough to measure the others and report before the watchdog (a loaded node
        # can spend 10 s and more importing torch)
        until = min(time.monotonic() + args.timeout + 2, T0 + args.deadline - 6)
        for th, pair in threads:
            th.join(max(until - time.monotonic(), 0.0))
            if th.is_alive():
                pair.update(ok=False, error=f"no connection within {args.timeout:.0f} s")

    groups: dict[int, object] = {}
    RESULT["stage"] = "connecting the pairs"
    if args.rank == 0:
        connect(list(enumerate(RESULT["pairs"], start=1)), 0)
        # measured one after the other: a pair's numbers are not shared with the others'
        RESULT["stage"] = "measuring"
        measured = set()
        for index, pair in enumerate(RESULT["pairs"], start=1):
            measuring = index in groups and pair["ok"] is None
            if measuring and args.deadline - (time.monotonic() - T0) < 5:
                # connected, but no time left to measure: the pair is fine, the numbers are missing
                store.set(f"go{index}", "2")
                pair.update(ok=True, stage="done", note="connected, not measured (out of time)")
                continue
            store.set(f"go{index}", "1" if measuring else "0")  # "0": the worker stops waiting
            if measuring:
                measured.add(index)
                try:
                    measure(groups[index], pair)
                    pair.update(ok=True, stage="done")
                except Exception as exc:
                    pair.update(
                        ok=False, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                    )
            if index in groups:
                store.set(f"done{index}", "1" if pair["ok"] else "0")
        everyone = len(workers) > 1 and all(
            p["ok"] and i in measured for i, p in enumerate(RESULT["pairs"], start=1)
        )
        store.set("group", "1" if everyone else "0")
        if everyone:
            whole_group()
        # workers wait for their verdicts before leaving; the master's store must outlive them
        RESULT["stage"] = "waiting for the workers to finish"
        for index, pair in enumerate(RESULT["pairs"], start=1):
            if pair["ok"] and index in measured:
                store.wait([f"left{index}"], timeout)
    else:
        pair = RESULT["pairs"][0]
        connect([(args.rank, pair)], 1)
        if args.rank in groups and pair["ok"] is None:
            try:
                # the master measures one pair after the other: wait for this one's turn
                pair["stage"] = "waiting for the master to measure this pair"
                rest = datetime.timedelta(seconds=max(args.deadline - (time.monotonic() - T0), 1.0))
                store.wait([f"go{args.rank}"], rest)
                go = store.get(f"go{args.rank}")
                if go == b"2":
                    pair.update(ok=True, stage="done", note="connected, not measured (out of time)")
                elif go != b"1":
                    raise RuntimeError("the master could not connect this pair")
                else:
                    pair["stage"] = f"measuring {args.node}<->master"
                    measure(groups[args.rank], pair)
                    pair["stage"] = "waiting for the master's verdict"
                    pair.update(ok=store.get(f"done{args.rank}") == b"1", stage="done")
                    rest = datetime.timedelta(
                        seconds=max(args.deadline - (time.monotonic() - T0), 1.0)
                    )
                    store.wait(["group"], rest)
                    if store.get("group") == b"1":
                        whole_group()
                    store.set(f"left{args.rank}", "1")
            except Exception as exc:
                pair.update(
                    ok=False, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                )
    RESULT["stage"] = "done"
    RESULT["ok"] = (
        all(p["ok"] for p in RESULT["pairs"]) and RESULT.get("group", {}).get("ok") is not False
    )
    RESULT["host"] = socket.gethostname()
    emit(0 if RESULT["ok"] else 1)


if __name__ == "__main__":
    main()
