"""Prometheus metrics (own registry; served at GET /metrics on rank 0)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tpserve_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "status"],
            registry=r,
        )
        self.prompt_tokens = Counter("tpserve_prompt_tokens", "Prompt tokens admitted", registry=r)
        self.output_tokens = Counter("tpserve_output_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram(
            "tpserve_time_to_first_token_seconds",
            "Request arrival to first token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "tpserve_inter_token_latency_seconds",
            "Time between consecutive tokens of one sequence",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("tpserve_queue_depth", "Requests waiting to join the batch", registry=r)
        self.batch_size = Histogram(
            "tpserve_batch_size", "Sequences per engine step", buckets=BATCH_BUCKETS, registry=r
        )
        self.step_seconds = Counter(
            "tpserve_step_seconds",
            "Rank 0's engine-thread time by step phase (divide by tpserve_engine_steps for a mean): "
            "schedule (between steps: admit, capacity check), broadcast (step message to the ranks), "
            "forward (engine call; on GPU it only launches the kernels), sample (waits for the GPU, "
            "picks tokens), emit (detokenise, hand the deltas to the HTTP side)",
            ["phase"],
            registry=r,
        )
        self.steps = Counter("tpserve_engine_steps", "Engine steps run", registry=r)
        self.prefill_chunks = Counter(
            "tpserve_prefill_chunks",
            "Prompt chunks sent to the engine (a prompt longer than a step's token budget takes several)",
            registry=r,
        )
        self.in_flight = Gauge("tpserve_requests_in_flight", "Generation requests being served", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
