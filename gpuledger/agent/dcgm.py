"""Optional DCGM profiling fields, read from a local dcgm-exporter's /metrics.

MIG devices have no utilization in NVML (neither device nor per-process). When
the node also runs dcgm-exporter with profiling metrics enabled, its
``DCGM_FI_PROF_GR_ENGINE_ACTIVE{gpu, GPU_I_ID}`` (ratio of time the graphics
engine was active) is the best measure of a MIG slice's use; the agent scrapes
it with ``--dcgm-exporter-url``: the exporter on the *same node* -- e.g.
``http://$(NODE_IP):9400/metrics`` where it uses a hostPort or hostNetwork
(GPU operator option), since MIG instance ids are per node.

Caveat: dcgm-exporter reports DCGM's average over its own collection interval
(default 30 s in the exporter, 1 s in DCGM's watch), not over the agent's tick;
it is a sample of the interval, and the wire column says where it came from.
One scrape serves every MIG device of a tick (``max_age_s``).
"""

from __future__ import annotations

import logging
import time
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from gpuledger.errors import NotFound, NotSupported

log = logging.getLogger("gpuledger.agent.dcgm")
FIELD = "DCGM_FI_PROF_GR_ENGINE_ACTIVE"


def parse_gr_engine_active(text: str) -> dict[tuple[int, int], float]:
    """dcgm-exporter exposition text -> {(gpu index, GPU instance id): ratio}; -1 for a whole GPU."""
    out: dict[tuple[int, int], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != FIELD:
            continue
        for sample in family.samples:
            try:
                gpu = int(sample.labels["gpu"])
                gi = int(sample.labels.get("GPU_I_ID") or -1)
            except (KeyError, ValueError):
                continue
            out[(gpu, gi)] = float(sample.value)
    return out


class DcgmExporterScrape:
    """Cached reads of one dcgm-exporter endpoint."""

    def __init__(self, url: str, *, timeout_s: float = 2.0, max_age_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url, self.timeout_s, self.max_age_s, self.clock = url, timeout_s, max_age_s, clock
        self._values: dict[tuple[int, int], float] = {}
        self._at: float | None = None
        self._error: str | None = None

    def _refresh(self) -> None:
        now = self.clock()
        if self._at is not None and now - self._at < self.max_age_s:
            return
        self._at = now
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout_s) as resp:
                self._values = parse_gr_engine_active(resp.read(16 * 2**20).decode("utf-8", "replace"))
            self._error = None
        except (OSError, ValueError) as exc:
            if self._error is None:
                log.warning("dcgm-exporter at %s unreadable: %s (MIG utilization stays unmeasured)", self.url, exc)
            self._values, self._error = {}, str(exc)

    def gr_engine_active(self, gpu: int, gpu_instance_id: int) -> float:
        """Ratio 0..1; NotSupported when the exporter is unreachable, NotFound when it lacks the series."""
        self._refresh()
        if self._error is not None:
            raise NotSupported(f"dcgm-exporter unreachable: {self._error}")
        value = self._values.get((gpu, gpu_instance_id))
        if value is None:
            raise NotFound(f"dcgm-exporter has no {FIELD} for GPU {gpu} instance {gpu_instance_id} "
                           "(profiling metrics enabled in its counters file?)")
        return value
