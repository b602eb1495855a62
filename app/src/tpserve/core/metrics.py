"""Prometheus metrics (own registry; served at GET /metrics on rank 0).

With the front end in its own process (tpserve.frontend.process) both processes hold a `Metrics`:
the front end serves the series it observes (FRONTEND_SERIES) from its own and every other one
from the engine core's, which renders them on request (tpserve.core.coreproc). One owner each."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: The families the HTTP side observes (app counting, Service.new_request, Service.events).
FRONTEND_SERIES = frozenset({"tpserve_requests", "tpserve_prompt_tokens", "tpserve_requests_in_flight"})


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
            "schedule (between steps: admit, capacity check), broadcast (step message to the ranks, "
            "their outcomes back), "
            "forward (engine call; on GPU it only launches the kernels), sample (waits for the GPU, "
            "picks tokens), emit (detokenise (in-process front end), hand the step's deltas or token ids "
            "to the HTTP side)",
            ["phase"],
            registry=r,
        )
        self.steps = Counter("tpserve_engine_steps", "Engine steps run", registry=r)
        self.oom_steps = Counter(
            "tpserve_oom_steps",
            "Steps (forward or sampling) a CUDA out-of-memory error failed on some rank: their sequences "
            "were recomputed with fewer per step, or the newest request ended with 503",
            registry=r,
        )
        self.prefill_chunks = Counter(
            "tpserve_prefill_chunks",
            "Prompt chunks sent to the engine (a prompt longer than a step's token budget takes several)",
            registry=r,
        )
        self.in_flight = Gauge("tpserve_requests_in_flight", "Generation requests being served", registry=r)
        self.finished = Counter(
            "tpserve_finished_requests",
            "Generation requests that ended, by finish reason (stop, length, cancelled: the client went "
            "away or was told to, timeout, error)",
            ["reason"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "tpserve_request_duration_seconds",
            "Arrival to final event of a generation request (any outcome)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.load_seconds = Gauge(
            "tpserve_model_load_seconds", "Engine start-up: load + shard the model", registry=r
        )
        self.kv_blocks = Gauge(  # registered only for engines that report them (register_kv)
            "tpserve_kv_cache_blocks",
            "KV cache blocks of rank 0's engine (absent: no paged cache)",
            ["state"],
            registry=None,
        )
        self._kv_registered = False
        self.gpu_problem: str | None = None

    def register_kv(self) -> None:
        if not self._kv_registered:
            self.registry.register(self.kv_blocks)
            self._kv_registered = True

    def enable_gpu(self) -> str | None:
        """Per-GPU series of this host from NVML (nvidia-ml-py), read at scrape time. On CPU
        clusters they are absent, not zero. Returns why they are off (None: on)."""
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as exc:  # the package or the driver's library is missing
            self.gpu_problem = f"GPU metrics off: NVML unavailable ({type(exc).__name__}: {exc})"
            return self.gpu_problem
        self.registry.register(GpuCollector(pynvml))
        return None

    def render(self, series: Literal["all", "frontend", "core"] = "all") -> bytes:
        """The exposition text: every family, or only the front end's / all but the front end's."""
        if series == "all":
            return generate_latest(self.registry)
        return generate_latest(_Select(self.registry, keep_frontend=series == "frontend"))  # type: ignore[arg-type]


class _Select:
    """A registry view: the FRONTEND_SERIES families only, or every family but those."""

    def __init__(self, registry: CollectorRegistry, keep_frontend: bool) -> None:
        self.registry, self.keep_frontend = registry, keep_frontend

    def collect(self) -> Iterator[Any]:
        for family in self.registry.collect():
            if (family.name in FRONTEND_SERIES) == self.keep_frontend:
                yield family


class GpuCollector:
    """tpserve_gpu_{utilization_ratio,memory_used_bytes,memory_total_bytes,power_watts,temperature_celsius}
    per GPU of this host (labels gpu = NVML index, uuid), read from NVML on every scrape."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml

    def collect(self) -> Iterator[GaugeMetricFamily]:
        nvml = self.nvml
        labels = ["gpu", "uuid"]
        fams = {
            "util": GaugeMetricFamily(
                "tpserve_gpu_utilization_ratio", "GPU busy time share (NVML)", labels=labels
            ),
            "used": GaugeMetricFamily("tpserve_gpu_memory_used_bytes", "GPU memory used", labels=labels),
            "total": GaugeMetricFamily("tpserve_gpu_memory_total_bytes", "GPU memory", labels=labels),
            "power": GaugeMetricFamily("tpserve_gpu_power_watts", "GPU power draw", labels=labels),
            "temp": GaugeMetricFamily("tpserve_gpu_temperature_celsius", "GPU temperature", labels=labels),
        }
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            uuid = nvml.nvmlDeviceGetUUID(h)
            uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
            key = [str(i), uuid]
            readers = {
                "util": lambda h=h: nvml.nvmlDeviceGetUtilizationRates(h).gpu / 100.0,
                "used": lambda h=h: nvml.nvmlDeviceGetMemoryInfo(h).used,
                "total": lambda h=h: nvml.nvmlDeviceGetMemoryInfo(h).total,
                "power": lambda h=h: nvml.nvmlDeviceGetPowerUsage(h) / 1000.0,
                "temp": lambda h=h: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU),
            }
            for name, read in readers.items():
                try:
                    fams[name].add_metric(key, float(read()))
                except Exception:
                    continue
        yield from fams.values()
