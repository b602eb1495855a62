"""The engine core on rank 0: requests, the pure scheduling policy, the step loop, outputs.

| module | job |
|---|---|
| `request` | one request's state, shared by the HTTP thread and the loop |
| `policy` | pure: admission, preemption, chunked prefill -> a `StepPlan`; `advance` after a step |
| `scheduler` | the rank-0 loop: plan -> broadcast -> forward -> sample -> emit; heartbeat, drain, shutdown |
| `output` | finish reasons, stop strings, per-token deltas |
| `textstream` | incremental detokenization (a small decode window, O(1) per token) |
| `sampling` | temperature / top-p / top-k / seeds, per request |
| `metrics` | Prometheus series |
| `service` | what the front end sees: status, tokenizer, the scheduler (or its `Backend` stand-in), /health |
| `ipc` | the typed front end <-> engine core messages and their one codec (msgpack, no pickle) |
| `coreproc` | rank 0 as the engine core: starts the front end process, the I/O thread, the step sink |
"""
