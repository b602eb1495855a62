"""Commands run by the roles and by hand (``python -m tpserve.tools.<name>``).

| module | job |
|---|---|
| `plan` | which engine, why, per-node command lines (serve.yml runs it on the master) |
| `memory` | weights + KV + workspace arithmetic per GPU (gpu_preflight and serve.yml validation) |
| `prebuild` | build DeepSpeed's JIT ops ahead of the first start (dl_stack) |
| `synthetic` | tiny random-init models for tests and the lab |
| `oneshot` | load, answer one prompt, print the time, exit (the reference app.py) |
| `advice` | which layout suits this model, GPU and network, with the measured figures (serve.yml prints it) |
"""
