#!/usr/bin/env bash
# fastgen TP across N emulated single-GPU "nodes" on one GPU host, each made to look like a 24 GB
# A10: one tpserve process per GPU that sees only its GPU (local rank 0, LOCAL_WORLD_SIZE=1, like a
# 1-GPU node), NCCL over TCP sockets only (no P2P/SHM/IB), the rest of each GPU occupied before
# start. Default: the walkthrough's failed case, the Qwen2.5-14B shape (29.5 GB bf16), TP=2.
# Reports /health (engine, reason, each rank's weight bytes, KV blocks, memory plan) and loadgen
# at 1 and 32 clients (128-token prompts, 128 new tokens).
#   device tool, kind nvidia-h200-x2, carry .whl:  bash tests/gpu/across_nodes.sh
#   N=4 on a 4-GPU host (the walkthrough's exact TP=4) runs unchanged.
#   NETEM_MS=0.2: added one-way delay on the loopback device (tc netem), where the host allows it
#   (the lent 2xH200 host does not: no iproute2, and its kernel has no sch_netem, CONFIG_NET_SCH_NETEM
#   not set; netlink through pyroute2 gets ENOENT: checked in session 8);
#   every loopback packet is delayed (NCCL between the "nodes" and the HTTP client alike: ITL is a
#   gap between chunks, so it is not shifted, TTFT is); the measured TCP round trip goes to rtt.txt.
#   ENGINE=autotp SHAPE=qwen2.5-7b MAX_BATCH=8: the same harness for the other engine / model / batch.
set -u
cd "$(dirname "$0")/../.." || exit 1
N=${N:-2}; R="${OUT:-/tmp/across}"; SHAPE=${SHAPE:-qwen2.5-14b}
# shellcheck source=tests/gpu/env.sh
source tests/gpu/env.sh
occ=()
for ((g = 0; g < N; g++)); do  # occupy everything beyond an A10 on each GPU
  CUDA_VISIBLE_DEVICES=$g python3 -c "
import os, time, torch
free, _ = torch.cuda.mem_get_info(); keep = int(os.environ['A10_MIB']) * 2**20
x = torch.empty(free - keep, dtype=torch.uint8, device='cuda')
print(f'GPU $g: {torch.cuda.mem_get_info()[0] / 2**30:.2f} GiB left free', flush=True); time.sleep(3600)" \
    > "$R/occupier$g.log" 2>&1 &
  occ+=($!)
done
cat "$R"/occupier*.log 2>/dev/null
sleep 15
export NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 NCCL_IB_DISABLE=1 NCCL_NET=Socket NCCL_SOCKET_IFNAME=lo
rtt() {  # median TCP round trip over loopback (1-byte echo, 200 times), ms
  python3 -c "
import socket, statistics, threading, time
srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen(1)
def echo():
    c, _ = srv.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while (b := c.recv(1)): c.sendall(b)
threading.Thread(target=echo, daemon=True).start()
s = socket.create_connection(srv.getsockname()); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
ts = []
for _ in range(200):
    t = time.perf_counter(); s.sendall(b'x'); s.recv(1); ts.append((time.perf_counter() - t) * 1000)
print(f'TCP round trip over lo: median {statistics.median(ts):.3f} ms, p90 {sorted(ts)[179]:.3f} ms')"
}
if [ -n "${NETEM_MS:-}" ]; then
  if tc qdisc replace dev lo root netem delay "${NETEM_MS}ms" 2> "$R/netem.err"; then
    echo "netem: +${NETEM_MS} ms one way on lo"; rtt | tee "$R/rtt.txt"
  else
    echo "netem not available on this host: $(head -c 300 "$R/netem.err")" | tee "$R/rtt.txt"; NETEM_MS=
  fi
else
  rtt | tee "$R/rtt.txt"
fi
t0=$(date +%s)
for ((r = 0; r < N; r++)); do
  CUDA_VISIBLE_DEVICES=$r LOCAL_RANK=0 RANK=$r WORLD_SIZE=$N LOCAL_WORLD_SIZE=1 LOCAL_SIZE=1 \
    MASTER_ADDR=127.0.0.1 MASTER_PORT=29641 setsid python3 -m tpserve --model "$MODEL_DIR" \
    --served-model-name m --engine "${ENGINE:-auto}" --dtype bfloat16 --port 8012 --max-batch-size "${MAX_BATCH:-32}" \
    --max-queue 256 > "$R/node$r.log" 2>&1 &
done
ok=0
for _ in $(seq 300); do
  curl -sf localhost:8012/health > "$R/health.json" && { ok=1; break; }
  sleep 1
done
echo "ready=$ok after $(( $(date +%s) - t0 )) s"; grep -h "CRITICAL\|Error" "$R"/node*.log | head -5
python3 -c "
import json; h=json.load(open('$R/health.json')); d=h['engine_details']
print(json.dumps({'engine': h['engine'], 'reason': h['engine_reason'], 'world_size': h['world_size'],
  'ranks': [(r['rank'], r['weight_bytes'], r.get('linear_fraction')) for r in h['ranks']],
  'kv_cache_blocks': d.get('kv_cache_blocks'), 'memory_plan': d.get('memory_plan')}))"
nvidia-smi --query-gpu=index,memory.used,memory.total --format=csv | tee -a "$R/gpu.txt"
for c in 1 16 32; do
  n=$(( c == 1 ? 8 : c * 2 ))
  python3 bench/loadgen.py --url http://127.0.0.1:8012 --model m --concurrency $c --requests $n --warmup 1 \
    --prompt-tokens 128 --output-tokens 128 --vocab 151000 --timeout 300 --tag "c$c" --out "$R/load.jsonl" | tail -1
done
curl -s localhost:8012/metrics | grep -E '^tpserve_requests_total' | tee "$R/requests.txt"
pkill -f "python3 -m tpserve" ; sleep 3; pkill -9 -f "python3 -m tpserve"; kill "${occ[@]}" 2>/dev/null
[ -n "${NETEM_MS:-}" ] && tc qdisc del dev lo root 2>/dev/null
exit 0
