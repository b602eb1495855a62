"""The control plane between rank 0 and the workers.

| module | job |
|---|---|
| `messages` | typed Step / Heartbeat / Shutdown |
| `stepwire` | their one codec (no pickle on the wire) |
| `mailbox` | the shared-memory mailbox in one node |
| `dist` | the process group (gloo / NCCL), all-gather of JSON |
| `ranks` | the worker loop of ranks > 0 |
"""
