"""The gateway's Prometheus metrics (``GET /metrics``): requests, verdicts, teacher-call
rate, cost and latency, per worker process.

Labels hold only values the gateway chose (API names, configured teacher models, verdicts,
status codes), never a model name a client made up, a key or any request content.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
PASSTHROUGH = "passthrough"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("agentkd_gateway_requests", "Requests answered, by API, route "
                                "(teacher model or 'passthrough') and HTTP status.",
                                ["api", "route", "status"], registry=self.registry)
        self.steps = Counter("agentkd_gateway_steps", "Agent steps served, by route, verdict "
                             "and actor.", ["route", "verdict", "actor"], registry=self.registry)
        self.teacher_rate = Gauge("agentkd_gateway_teacher_call_rate", "Share of this worker's "
                                  "steps the teacher served, by route.", ["route"],
                                  registry=self.registry)
        self.cost = Counter("agentkd_gateway_cost_usd", "USD spent on LLM calls, by route.",
                            ["route"], registry=self.registry)
        self.latency = Histogram("agentkd_gateway_request_seconds", "Time to answer a request "
                                 "(to its last byte when streamed), by API.", ["api"],
                                 buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.episodes = Gauge("agentkd_gateway_open_episodes", "Episodes open in this worker.",
                              registry=self.registry)
        self._lock = threading.Lock()
        self._counts: dict[str, list[int]] = {}  # route → [steps, teacher steps]

    def step(self, route: str, verdict: str, actor: str, cost_usd: float) -> None:
        self.steps.labels(route, verdict, actor).inc()
        self.cost.labels(route).inc(cost_usd)
        with self._lock:
            counts = self._counts.setdefault(route, [0, 0])
            counts[0] += 1
            counts[1] += actor == "teacher"
            self.teacher_rate.labels(route).set(counts[1] / counts[0])

    def render(self) -> bytes:
        return generate_latest(self.registry)
