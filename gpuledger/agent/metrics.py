"""The agent's Prometheus ``/metrics``: a custom collector over the latest tick.

Two families of series, both rendered from the most recent wire message on
each scrape (no gauges mutated between scrapes, no stale series to clean up):

**DCGM-compatible device series** -- the names, units and label names of
NVIDIA dcgm-exporter, so existing dashboards and alerts keep working:

=========================================  ==========  ==================================
series                                     unit        wire column (source)
=========================================  ==========  ==================================
DCGM_FI_DEV_GPU_UTIL                       percent     gpu_util x 100 (driver samples)
DCGM_FI_DEV_MEM_COPY_UTIL                  percent     mem_copy_util x 100
DCGM_FI_DEV_ENC_UTIL / DEC_UTIL            percent     enc_util / dec_util x 100
DCGM_FI_DEV_FB_USED / FREE / RESERVED      MiB         fb_*_bytes / 2**20
DCGM_FI_DEV_POWER_USAGE                    W           power_w
DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION       mJ (ctr)    energy_total_mj
DCGM_FI_DEV_GPU_TEMP / MEMORY_TEMP         deg C       gpu_temp_c / mem_temp_c
DCGM_FI_DEV_SM_CLOCK / MEM_CLOCK           MHz         sm_clock_mhz / mem_clock_mhz
DCGM_FI_DEV_PCIE_REPLAY_COUNTER            counter     pcie_replay_total
DCGM_FI_DEV_XID_ERRORS                     XID code    xid_last (0: none in the interval)
DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS      counter     remapped_rows_correctable
DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS    counter     remapped_rows_uncorrectable
DCGM_FI_DEV_CLOCK_THROTTLE_REASONS         bitmask     throttle_reasons
DCGM_FI_PROF_GR_ENGINE_ACTIVE              ratio       gr_engine_active (MIG, optional)
=========================================  ==========  ==================================

Labels: ``gpu`` (NVML index), ``UUID`` (the physical GPU's, also on MIG rows,
as dcgm-exporter does), ``pci_bus_id``, ``device`` (``nvidia<N>``),
``modelName``, ``Hostname``, ``GPU_I_PROFILE`` and ``GPU_I_ID`` (MIG devices,
empty otherwise), and ``namespace``/``pod``/``container`` of the device's
holder **only when exactly one container holds it** -- dcgm-exporter copies a
shared GPU's value to every pod, which double counts; here a shared GPU's
device series carry no pod, and the per-pod series below split it.

dcgm-exporter's counters (energy, PCIe replays, remapped rows) keep their
exact names and are exposed ``untyped`` (prometheus-client would append
``_total`` to a counter family); Prometheus stores them the same and
``rate()`` works.

A value the driver did not give is *absent* (no sample), never 0; why it is
missing is in ``gpuledger_field_errors``.

**gpuledger series** (base units in names): device utilization, energy and
health, per-field errors, agent heartbeat, and per-pod series that split each
GPU among its holders with the ledger's rule, from the ledger's own code
(``gpuledger.split``: busy by per-process sample share with the ledger's
fallbacks, idle by allocation share; how the series differ from ledger lines
is in docs/agent.md): ``gpuledger_pod_gpu_busy_ratio``,
``..._allocated_ratio``, ``..._memory_used_bytes``, ``..._busy_seconds_total``
and ``..._energy_joules_total``. Per-pod series are bounded: at most
``max_pod_series`` (namespace, pod, container, GPU) keys, a key unseen for
``stale_ticks`` ticks is dropped, and keys refused over the bound are counted
in ``gpuledger_pod_series_dropped_total``. No pid label.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from gpuledger import split, wire

MIB = 2**20

#: DCGM series name -> (wire column, scale, Prometheus type, help).
DCGM_FIELDS: dict[str, tuple[str, float, str, str]] = {
    "DCGM_FI_DEV_GPU_UTIL": ("gpu_util", 100.0, "gauge", "GPU utilization (in %)."),
    "DCGM_FI_DEV_MEM_COPY_UTIL": ("mem_copy_util", 100.0, "gauge", "Memory utilization (in %)."),
    "DCGM_FI_DEV_ENC_UTIL": ("enc_util", 100.0, "gauge", "Encoder utilization (in %)."),
    "DCGM_FI_DEV_DEC_UTIL": ("dec_util", 100.0, "gauge", "Decoder utilization (in %)."),
    "DCGM_FI_DEV_FB_USED": ("fb_used_bytes", 1.0 / MIB, "gauge", "Framebuffer memory used (in MiB)."),
    "DCGM_FI_DEV_FB_FREE": ("fb_free_bytes", 1.0 / MIB, "gauge", "Framebuffer memory free (in MiB)."),
    "DCGM_FI_DEV_FB_RESERVED": ("fb_reserved_bytes", 1.0 / MIB, "gauge", "Framebuffer memory reserved (in MiB)."),
    "DCGM_FI_DEV_POWER_USAGE": ("power_w", 1.0, "gauge", "Power draw (in W)."),
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": ("energy_total_mj", 1.0, "counter",
                                             "Total energy consumption since boot (in mJ)."),
    "DCGM_FI_DEV_GPU_TEMP": ("gpu_temp_c", 1.0, "gauge", "GPU temperature (in C)."),
    "DCGM_FI_DEV_MEMORY_TEMP": ("mem_temp_c", 1.0, "gauge", "Memory temperature (in C)."),
    "DCGM_FI_DEV_SM_CLOCK": ("sm_clock_mhz", 1.0, "gauge", "SM clock frequency (in MHz)."),
    "DCGM_FI_DEV_MEM_CLOCK": ("mem_clock_mhz", 1.0, "gauge", "Memory clock frequency (in MHz)."),
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": ("pcie_replay_total", 1.0, "counter", "Total number of PCIe retries."),
    "DCGM_FI_DEV_XID_ERRORS": ("xid_last", 1.0, "gauge", "Value of the last XID error encountered."),
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": ("remapped_rows_correctable", 1.0, "counter",
                                              "Number of remapped rows for correctable errors."),
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": ("remapped_rows_uncorrectable", 1.0, "counter",
                                                "Number of remapped rows for uncorrectable errors."),
    "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS": ("throttle_reasons", 1.0, "gauge",
                                           "Current clock throttle reasons (bitmask of nvmlClocksEventReasons)."),
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": ("gr_engine_active", 1.0, "gauge",
                                      "Ratio of time the graphics engine is active (MIG devices, from DCGM)."),
}

DEVICE_LABELS = ("gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname", "GPU_I_PROFILE", "GPU_I_ID",
                 "namespace", "pod", "container")
POD_LABELS = ("namespace", "pod", "container", "gpu", "UUID", "GPU_I_PROFILE", "GPU_I_ID", "Hostname")


@dataclass(frozen=True)
class DeviceInfo:
    """What the wire message does not carry but dashboards label by (read once per device)."""

    pci_bus_id: str | None = None
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = None


@dataclass
class _PodTotals:
    busy_s: float = 0.0
    energy_j: float = 0.0
    seen_seq: int = 0


class AgentCollector(Collector):
    """Renders the latest tick; ``update`` is called by the agent loop after each tick."""

    def __init__(self, hostname: str, *, max_pod_series: int = 2000, stale_ticks: int = 30,
                 extra: Iterable[Callable[[], Iterable[Metric]]] = ()) -> None:
        self.hostname = hostname
        self.max_pod_series = max_pod_series
        self.stale_ticks = stale_ticks
        self.extra = list(extra)
        self._lock = threading.Lock()
        self._render_lock = threading.Lock()
        self._snapshot: tuple[wire.Message, dict[tuple[int, int], DeviceInfo],
                              dict[tuple[int, int, str, str, str], PodShare]] | None = None
        self._families: list[Metric] | None = None
        self._totals: dict[tuple[int, int, str, str, str], _PodTotals] = {}
        self._dropped = 0
        self._ticks = 0

    # --- update (agent thread) -----------------------------------------------------

    def update(self, msg: wire.Message, info: Mapping[tuple[int, int], DeviceInfo] | None = None) -> None:
        """Take the latest tick: accumulate the per-pod counters now; families are rendered on scrape."""
        shares = pod_shares(msg)
        interval_s = (msg.interval_end_ns - msg.interval_start_ns) / 1e9
        with self._lock:
            self._ticks += 1
            for key, s in shares.items():
                totals = self._totals.get(key)
                if totals is None:
                    if len(self._totals) >= self.max_pod_series:
                        self._dropped += 1
                        continue
                    totals = self._totals[key] = _PodTotals()
                totals.seen_seq = self._ticks
                if s.busy == s.busy:  # not NaN
                    totals.busy_s += s.busy * interval_s
                if s.energy_j == s.energy_j:
                    totals.energy_j += s.energy_j
            if len(self._totals) > len(shares):  # some key was not seen this tick: expire the stale ones
                for key in [k for k, t in self._totals.items() if self._ticks - t.seen_seq > self.stale_ticks]:
                    del self._totals[key]
            self._snapshot = (msg, dict(info or {}), shares)
            self._families = None

    def _render(self) -> list[Metric]:
        assert self._snapshot is not None
        msg, info, shares = self._snapshot
        labels = self._device_labels(msg, info)
        return self._dcgm(msg, labels) + self._own(msg, labels) + self._pods(msg, labels, shares)

    def _device_labels(self, msg: wire.Message, info: Mapping[tuple[int, int], DeviceInfo]) -> list[tuple[str, ...]]:
        dev = msg.devices
        out: list[tuple[str, ...]] = []
        parent_uuid = {int(r["gpu_index"]): msg.string(int(r["uuid"])) or "" for r in dev if r["mig_index"] < 0}
        holders = _single_holders(msg)
        for r in dev:
            gpu, mig = int(r["gpu_index"]), int(r["mig_index"])
            meta = info.get((gpu, mig)) or DeviceInfo()
            parent = info.get((gpu, -1)) or DeviceInfo()
            ns, pod, container = holders.get((gpu, mig), ("", "", ""))
            out.append((
                str(gpu), parent_uuid.get(gpu, ""), parent.pci_bus_id or "", f"nvidia{gpu}",
                msg.string(int(r["model"])) or "", self.hostname,
                (msg.string(int(r["profile"])) or "") if mig >= 0 else "",
                str(meta.gpu_instance_id if meta.gpu_instance_id is not None else mig) if mig >= 0 else "",
                ns, pod, container,
            ))
        return out

    def _dcgm(self, msg: wire.Message, labels: list[tuple[str, ...]]) -> list[Metric]:
        dev = msg.devices
        out = []
        for name, (column, scale, typ, doc) in DCGM_FIELDS.items():
            # prometheus-client's text format appends _total to counter families; dcgm-exporter's counter
            # names have no suffix, so its counters are exposed untyped to keep the exact series names.
            metric = Metric(name, doc, "unknown" if typ == "counter" else typ)
            values = dev[column]
            for k in np.flatnonzero(~np.isnan(values)):
                metric.add_sample(name, dict(zip(DEVICE_LABELS, labels[k])), float(values[k]) * scale)
            out.append(metric)
        return out

    def _own(self, msg: wire.Message, labels: list[tuple[str, ...]]) -> list[Metric]:
        dev = msg.devices
        ident = ("gpu", "UUID", "GPU_I_PROFILE", "GPU_I_ID", "Hostname")
        pick = [(lab[0], lab[1], lab[6], lab[7], lab[5]) for lab in labels]
        util = Metric("gpuledger_gpu_utilization_ratio", "Mean of the driver's utilization samples in the "
                      "last interval (0..1); absent when not reported (MIG, lost GPU).", "gauge")
        samples = Metric("gpuledger_gpu_utilization_samples", "Driver utilization samples integrated in the "
                         "last interval.", "gauge")
        health = Metric("gpuledger_gpu_health_state", "0 ok, 1 degraded (some field failed), 2 lost "
                        "(fell off the bus).", "gauge")
        energy = Metric("gpuledger_gpu_energy_joules", "Driver total-energy counter, joules "
                        "(resets with the driver).", "counter")
        slice_ = Metric("gpuledger_gpu_slice_ratio", "Capacity share of the parent GPU (MIG slice; 1 whole GPU).",
                        "gauge")
        for k, r in enumerate(dev):
            lab = dict(zip(ident, pick[k]))
            if not math.isnan(r["gpu_util"]):
                util.add_sample(util.name, lab, float(r["gpu_util"]))
            samples.add_sample(samples.name, lab, float(r["util_samples"]))
            health.add_sample(health.name, lab, float(r["health"]))
            slice_.add_sample(slice_.name, lab, float(r["slice_fraction"]))
            if not math.isnan(r["energy_total_mj"]):
                energy.add_sample(energy.name + "_total", lab, float(r["energy_total_mj"]) / 1000.0)
        info = Metric("gpuledger_gpu_info", "Static facts about each physical GPU (value 1).", "gauge")
        for k, r in enumerate(dev):
            if r["mig_index"] < 0:
                dl = labels[k]
                info.add_sample(info.name, {"gpu": dl[0], "UUID": dl[1], "pci_bus_id": dl[2],
                                            "modelName": dl[4], "Hostname": dl[5],
                                            "driver_version": msg.driver_version or ""}, 1.0)
        errors = Metric("gpuledger_field_errors", "Fields that could not be read in the last interval, by "
                        "reason (NotSupported, NotFound, GpuLost, ...): their values are absent, not 0.", "gauge")
        counts: dict[tuple[str, str, str, str], int] = {}
        fe = msg.field_errors
        for gpu, mig, fld, why in zip(fe["gpu_index"], fe["mig_index"], fe["field"], fe["reason"]):
            reason = (msg.string(int(why)) or "").split(":", 1)[0]
            key = (str(int(gpu)), str(int(mig)) if mig >= 0 else "", msg.string(int(fld)) or "", reason)
            counts[key] = counts.get(key, 0) + 1
        for (gpu, mig, fld, reason), n in sorted(counts.items()):
            errors.add_sample(errors.name, {"gpu": gpu, "GPU_I_ID": mig, "field": fld, "reason": reason,
                                            "Hostname": self.hostname}, float(n))
        tick = Metric("gpuledger_agent_last_tick_timestamp_seconds", "End of the last sampled interval, "
                      "seconds since the epoch.", "gauge")
        tick.add_sample(tick.name, {"Hostname": self.hostname}, msg.interval_end_ns / 1e9)
        seconds = Metric("gpuledger_agent_interval_seconds", "Length of the last sampled interval.", "gauge")
        seconds.add_sample(seconds.name, {"Hostname": self.hostname},
                           (msg.interval_end_ns - msg.interval_start_ns) / 1e9)
        return [util, samples, health, energy, slice_, info, errors, tick, seconds]

    def _pods(self, msg: wire.Message, labels: list[tuple[str, ...]],
              shares: dict[tuple[int, int, str, str, str], PodShare]) -> list[Metric]:
        busy = Metric("gpuledger_pod_gpu_busy_ratio", "Share of the GPU's capacity this container kept busy in "
                      "the last interval (device utilization x its share by the ledger's busy rule); absent when "
                      "the rule gives it none or the device reports no utilization.", "gauge")
        alloc = Metric("gpuledger_pod_gpu_allocated_ratio", "Share of the GPU allocated to this container "
                       "(PodResources: 1 whole, 1/N time-slicing replica, MIG slice of its device).", "gauge")
        memory = Metric("gpuledger_pod_gpu_memory_used_bytes", "GPU memory used by this container's processes.",
                        "gauge")
        busy_total = Metric("gpuledger_pod_gpu_busy_seconds", "GPU-seconds this container kept busy, summed over "
                            "the ticks this agent has seen.", "counter")
        energy_total = Metric("gpuledger_pod_gpu_energy_joules", "Energy attributed to this container: busy "
                              "energy by its busy share, idle energy by allocation share.", "counter")
        by_device = {(int(g), int(m)): k for k, (g, m) in
                     enumerate(zip(msg.devices["gpu_index"], msg.devices["mig_index"]))}

        def pod_labels(key: tuple[int, int, str, str, str]) -> dict[str, str] | None:
            gpu, mig, ns, pod, container = key
            k = by_device.get((gpu, mig))
            if k is None:
                return None
            lab = labels[k]
            return dict(zip(POD_LABELS, (ns, pod, container, lab[0], lab[1], lab[6], lab[7], self.hostname)))

        with self._lock:
            totals = {k: (t.busy_s, t.energy_j) for k, t in self._totals.items()}
            n_dropped = self._dropped
        for key, s in shares.items():
            if key not in totals:
                continue  # refused by the series bound
            lab_d = pod_labels(key)
            if lab_d is None:
                continue
            if not math.isnan(s.busy):
                busy.add_sample(busy.name, lab_d, s.busy)
            alloc.add_sample(alloc.name, lab_d, s.allocated)
            if not math.isnan(s.memory):
                memory.add_sample(memory.name, lab_d, s.memory)
        for key, (busy_s, energy_j) in totals.items():
            lab_d = pod_labels(key)
            if lab_d is None:
                continue
            busy_total.add_sample(busy_total.name + "_total", lab_d, busy_s)
            energy_total.add_sample(energy_total.name + "_total", lab_d, energy_j)
        dropped = Metric("gpuledger_pod_series_dropped", "Per-pod series refused because max_pod_series "
                         "keys were already tracked.", "counter")
        dropped.add_sample(dropped.name + "_total", {"Hostname": self.hostname}, float(n_dropped))
        return [busy, alloc, memory, busy_total, energy_total, dropped]

    # --- scrape (HTTP thread) --------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """Render the latest tick (once per tick, however often Prometheus scrapes)."""
        with self._render_lock:
            if self._families is None and self._snapshot is not None:
                self._families = self._render()
            families = list(self._families or ())
        yield from families
        for fn in self.extra:
            yield from fn()

    def describe(self) -> Iterator[Metric]:
        return iter(())  # families vary per tick: registry must not pre-check names


@dataclass
class PodShare:
    """One container's part of one device in one interval."""

    busy: float = math.nan  # fraction of the device's capacity
    allocated: float = 0.0  # fraction of the device held
    memory: float = math.nan  # bytes
    energy_j: float = math.nan  # joules in the interval


def pod_shares(msg: wire.Message) -> dict[tuple[int, int, str, str, str], PodShare]:
    """Split each device among containers: (gpu, mig, namespace, pod, container) -> share.

    The ledger's rule, from the same code (``gpuledger.split``; tested against
    the ledger in tests/analytics/test_agent_split.py): each device row is a
    unit whose busy ``util`` (MIG: GR_ENGINE_ACTIVE) goes to its processes by
    SM-sample share (a listed unsampled process is idle; the unplaced remainder is nobody's), an equal split, or -- no owned
    process listed -- to the holders by allocation share; idle energy goes to
    the holders by ``share / max(Σ share, 1)``. A GPU in MIG mode is, as in the
    ledger, its unconfigured remainder: nothing runs there (util 0), energy ×
    (1 − Σ slice fractions). Per container: ``busy`` is the fraction of the
    device's capacity it kept busy (NaN when the rule gives it none, or the
    device reports no utilization), ``energy_j`` its busy + idle energy. What
    differs from the ledger (docs/agent.md, "Per-pod series and the ledger"):
    containers instead of pods, device fractions instead of GPU-seconds, no
    tenancy and no unknown-holders rule, memory on every device. Processes
    outside pods (host, Slurm) take their busy share but get no series here.
    """
    dev = msg.devices
    n = len(dev)
    out: dict[tuple[int, int, str, str, str], PodShare] = {}
    if n == 0:
        return out
    gpu = dev["gpu_index"].astype(np.int64)
    mig = dev["mig_index"].astype(np.int64)
    is_mig = mig >= 0
    slices = np.bincount(gpu[is_mig], weights=dev["slice_fraction"][is_mig], minlength=int(gpu.max()) + 1)
    mig_mode = ~is_mig & (np.bincount(gpu[is_mig], minlength=int(gpu.max()) + 1)[gpu] > 0)
    rest = np.minimum(np.maximum(1.0 - slices[gpu], 0.0), 1.0)  # 0..1, as np.clip but cheaper on a few rows
    util = np.minimum(np.maximum(np.where(is_mig, dev["gr_engine_active"], np.where(mig_mode, 0.0, dev["gpu_util"])),
                                 0.0), 1.0)
    parent_j = np.full(int(gpu.max()) + 1, np.nan)
    parent_j[gpu[~is_mig]] = dev["energy_delta_mj"][~is_mig] / 1000.0
    energy = parent_j[gpu] * np.where(is_mig, dev["slice_fraction"], np.where(mig_mode, rest, 1.0))
    util_samples = np.where(is_mig | mig_mode, 0.0, dev["util_samples"])
    dkey = gpu * 4096 + mig + 1
    order = np.argsort(dkey, kind="stable")
    sorted_key = dkey[order]

    def device_row(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's device row, and whether it has one; rows without are dropped (as by the ledger)."""
        key = table["gpu_index"].astype(np.int64) * 4096 + table["mig_index"].astype(np.int64) + 1
        pos = np.minimum(np.searchsorted(sorted_key, key), n - 1)
        return order[pos], sorted_key[pos] == key

    procs, allocs = msg.processes, msg.allocations
    p_row, p_ok = device_row(procs)
    procs, p_row = procs[p_ok], p_row[p_ok]
    a_row, a_ok = device_row(allocs)
    allocs, a_row = allocs[a_ok], a_row[a_ok]
    owned = (procs["pod"] >= 0) | (procs["slurm_job"] != wire.NULL_STR)  # a pod or a Slurm job
    samples = procs["samples"].astype(np.float64)
    evidence = split.clean_evidence(procs["sm_util_sum"])

    def per_device(values: np.ndarray, rows: np.ndarray = p_row) -> np.ndarray:
        return np.bincount(rows, weights=np.asarray(values, np.float64), minlength=n)

    n_procs, n_owned = per_device(np.ones(len(procs))), per_device(owned)
    n_sampled, n_unsampled = per_device(samples > 0), per_device(owned & (samples <= 0))
    evidence_sum, share_sum = per_device(evidence), per_device(allocs["share"], a_row)
    capacity = np.ones(n)  # busy as a fraction of the device
    unit = split.split_units(util, capacity, util_samples, n_procs, n_owned, n_sampled, n_unsampled, evidence_sum,
                             share_sum)
    w, _ = split.process_weights(evidence, owned, samples, unit.remainder[p_row], unit.r[p_row],
                                 evidence_sum[p_row], n_owned[p_row], n_procs[p_row])
    p_busy = np.where(unit.by_process[p_row], unit.busy[p_row] * w, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        a_frac = allocs["share"] / share_sum[a_row]
    a_busy = np.where(unit.by_share[a_row], unit.busy[a_row] * a_frac, np.nan)
    idle_energy = np.where(unit.measured, energy * (1.0 - util), energy)  # unmeasured: all of it held, not busy

    names = [(p["namespace"], p["name"]) for p in msg.pods]
    strings = msg.strings
    gpus, migs, energies = gpu.tolist(), mig.tolist(), energy.tolist()  # per device row, as Python numbers

    def share_of(r: int, pod: int, container: int) -> PodShare:
        """The PodShare of (device row r, pod, container), created on first use."""
        key = (gpus[r], migs[r], *names[pod], strings[container] if container < len(strings) else "")
        found = out.get(key)
        if found is None:
            found = out[key] = PodShare(energy_j=0.0 if energies[r] == energies[r] else math.nan)
        return found

    def add_busy(s: PodShare, busy: float, r: int) -> None:
        if busy == busy:  # not NaN: the rule gave this container a busy part (and busy energy E × part)
            s.busy = busy if s.busy != s.busy else s.busy + busy
            s.energy_j += energies[r] * busy

    for pod, container, mem, r, busy in zip(procs["pod"].tolist(), procs["container"].tolist(),
                                            procs["used_memory_bytes"].tolist(), p_row.tolist(), p_busy.tolist()):
        if pod < 0:
            continue
        s = share_of(r, pod, container)
        add_busy(s, busy, r)
        if mem == mem:
            s.memory = mem if s.memory != s.memory else s.memory + mem
    idle_per_share = (idle_energy / unit.norm).tolist()
    for pod, container, share, r, busy in zip(allocs["pod"].tolist(), allocs["container"].tolist(),
                                              allocs["share"].tolist(), a_row.tolist(), a_busy.tolist()):
        if pod < 0:
            continue
        s = share_of(r, pod, container)
        s.allocated += share
        add_busy(s, busy, r)
        s.energy_j += idle_per_share[r] * share
    return out


def _single_holders(msg: wire.Message) -> dict[tuple[int, int], tuple[str, str, str]]:
    """(gpu, mig) -> (namespace, pod, container) for devices held by exactly one container."""
    seen: dict[tuple[int, int], set[tuple[str, str, str]]] = {}
    for a in msg.allocations:
        if a["pod"] < 0:
            continue
        p = msg.pods[int(a["pod"])]
        seen.setdefault((int(a["gpu_index"]), int(a["mig_index"])), set()).add(
            (p["namespace"], p["name"], msg.string(int(a["container"])) or ""))
    return {k: next(iter(v)) for k, v in seen.items() if len(v) == 1}
