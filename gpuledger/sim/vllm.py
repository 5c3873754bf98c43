"""A vLLM twin for the simulator: per-pod token counters that follow what each pod really ran.

vLLM serves its token counts as Prometheus counters ``vllm:prompt_tokens_total``
and ``vllm:generation_tokens_total`` (labels ``model_name``, ``engine``;
docs.vllm.ai, "Production Metrics"). Here each simulated pod is an inference
server whose tokens are proportional to the GPU time it *really* ran
(``FleetSim.truth()``): ``tokens = rate x true busy GPU-seconds``, with a rate
(tokens per busy GPU-second, log-uniform in [500, 5000]) and a prompt share
(uniform in [0.2, 0.8]) drawn per pod from the seed. Counts are integers, as
counters are. So the true cost of a million tokens is known: the pod's true
busy GPU-hours, priced, over its tokens.

:class:`VllmExporter` serves those counters over HTTP in Prometheus's text
format, with the ``namespace`` and ``pod`` labels Prometheus's Kubernetes
discovery would add, for a real Prometheus to scrape. Each sample is stamped
``min(now, not_after_s)`` (Unix seconds): a run whose wall clock crossed the end
of the simulated hour still lands its samples inside that hour.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from gpuledger.sim.fleetsim import FleetSim
from gpuledger.sim.promserver import TextExporter

__all__ = ["PodTokens", "VllmExporter", "token_counts"]

RATE_RANGE = (500.0, 5000.0)  # tokens per busy GPU-second (an H100 serving a 7-70B model: order of thousands)


@dataclass(frozen=True)
class PodTokens:
    namespace: str
    pod: str
    model_name: str
    prompt: int  # vllm:prompt_tokens_total
    generation: int  # vllm:generation_tokens_total
    true_busy_gpu_s: float  # what the pod really ran, physical-GPU seconds (FleetSim.truth())


def token_counts(sim: FleetSim, seed: int) -> list[PodTokens]:
    """Per pod that ran in the simulation so far: its token counters, from its true busy time."""
    truth = (sim.truth().group_by("namespace", "pod_name").agg(pl.col("busy_gpu_seconds").sum())
             .sort("namespace", "pod_name"))
    rng = np.random.default_rng([seed, 0x70C])
    out = []
    for ns, pod, busy in truth.iter_rows():
        rate = math.exp(rng.uniform(math.log(RATE_RANGE[0]), math.log(RATE_RANGE[1])))
        prompt_share = float(rng.uniform(0.2, 0.8))
        total = round(rate * busy)
        prompt = round(total * prompt_share)
        out.append(PodTokens(ns, pod, f"model-{int(rng.integers(3))}", prompt, total - prompt, float(busy)))
    return out


def exposition(pods: list[PodTokens], stamp_ms: int | None = None) -> str:
    """The counters in Prometheus's text format (0.0.4), each sample stamped ``stamp_ms`` when given."""
    ts = "" if stamp_ms is None else f" {stamp_ms}"
    lines = []
    for name, help_, attr in (("vllm:prompt_tokens_total", "Number of prefill tokens processed.", "prompt"),
                              ("vllm:generation_tokens_total", "Number of generation tokens processed.",
                               "generation")):
        lines += [f"# HELP {name} {help_}", f"# TYPE {name} counter"]
        lines += [f'{name}{{model_name="{p.model_name}",engine="0",namespace="{p.namespace}",pod="{p.pod}"}} '
                  f"{getattr(p, attr)}{ts}" for p in pods]
    return "\n".join(lines) + "\n"


class VllmExporter(TextExporter):
    """The counters of ``pods`` served on ``http://127.0.0.1:PORT/metrics`` (a thread; ``close()`` stops it)."""

    def __init__(self, pods: list[PodTokens], *, not_after_s: float | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.pods, self.not_after_s, self.clock = pods, not_after_s, clock
        super().__init__(self._render)

    def _render(self) -> str:
        now = self.clock()
        stamp = now if self.not_after_s is None else min(now, self.not_after_s)
        return exposition(self.pods, round(stamp * 1000))
