"""What the fleet simulator simulates: plain, frozen dataclasses.

A :class:`FleetSpec` is data: nodes, their GPUs, the pods holding them and the
processes those pods run, plus the driver :class:`Quirks` to inject. Times are
seconds relative to the simulation start (``start_us``); a negative start means
"already running when the simulation began", ``math.inf`` "never ends".
``gpuledger.sim.fleets.demo_spec`` builds a realistic one; tests write small
ones by hand.

Demand model: a process's duty cycle at time ``t`` (seconds) is
``clip(floor + scale * series(t + phase_s), 0, 1)`` where ``series`` is one of
the real per-pod duty-cycle series of the GenAI trace (``traces.duty_cycles``,
linearly interpolated, wrapping around its ~22.8 h). The trace gives the shape
(bursts, quiet hours); ``floor`` and ``scale`` set the intensity, so a training
job can be busy while a Stable Diffusion server idles at its real ~6 %.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["FleetSpec", "GpuSpec", "Holding", "NodeSpec", "PodSpec", "ProcSpec", "Quirks", "mig_profile_slices"]


@dataclass(frozen=True)
class Quirks:
    """Driver quirks, each a knob. All off by default; :meth:`mild` turns on the gentle ones.

    The two rates act on every simulated GPU. The flags say whether
    ``demo_spec`` places the structural quirks; in a hand-written spec set the
    matching ``GpuSpec``/``ProcSpec`` fields instead (the flags are then unused).
    """

    missing_sample_rate: float = 0.0  # probability that one per-process sample row is dropped
    process_noise: float = 0.0  # sigma of mean-1 log-normal noise on reported per-process smUtil
    process_bias: float = 0.0  # per GPU, reported per-process smUtil reads x(1 +- up to this) vs the device
    silent_process: bool = False  # demo: one process holds a context and runs nothing (no samples, as NVML)
    pid_reuse: bool = False  # demo: a pid exits and a process of another pod gets it later
    energy_reset: bool = False  # demo: one GPU's energy counter resets (driver reload)
    gpu_lost: bool = False  # demo: one GPU falls off the bus at 3/4 of the horizon

    @classmethod
    def mild(cls) -> Quirks:
        """Noise and gaps a real fleet shows, no lost GPU."""
        return cls(missing_sample_rate=0.01, process_noise=0.05, silent_process=True, pid_reuse=True,
                   energy_reset=True)


@dataclass(frozen=True)
class GpuSpec:
    """One physical GPU."""

    model: str  # a name from traces.gpu_models(), e.g. "NVIDIA H100 80GB HBM3"
    mig_profiles: tuple[str, ...] = ()  # configured MIG devices, e.g. ("3g.40gb", "1g.10gb"); () = MIG off
    mps: bool = False  # an MPS control daemon serves this GPU: clients are listed with kind=2
    mps_clients_hidden: bool = False  # quirk (with mps): NVML lists only the MPS server, no clients or samples
    lost_at_s: float | None = None  # falls off the bus at this time: every call then raises GpuLost
    energy_reset_at_s: tuple[float, ...] = ()  # the energy counter restarts from 0 at these times


@dataclass(frozen=True)
class Holding:
    """One device a pod holds (one PodResources entry).

    ``share``: 1.0 exclusive or MIG device, 1/replicas for a time-slicing
    replica ``GPU-uuid::replica``, gpu_milli/1000 for fractional sharing.
    """

    gpu: int  # NVML index on the node
    mig: int = -1  # index into GpuSpec.mig_profiles, -1 = the whole GPU
    resource: str = "nvidia.com/gpu"
    share: float = 1.0
    replica: int = -1


@dataclass(frozen=True)
class ProcSpec:
    """One host process using one GPU (or one MIG device) during [start_s, end_s)."""

    gpu: int
    mig: int = -1
    start_s: float = 0.0
    end_s: float = math.inf
    series: int = 0  # index into traces.duty_cycles().filled()
    phase_s: float = 0.0  # offset into the series, seconds
    floor: float = 0.0  # demand = clip(floor + scale * series, 0, 1)
    scale: float = 1.0
    memory_bytes: int = 2**30  # GPU memory at the series' peak; follows the trace's memory shape
    mem_util_ratio: float = 0.4  # reported memUtil = ratio * smUtil (percent)
    pid: int = 0  # host pid; 0 = let the simulator assign one
    silent: bool = False  # quirk: runs, has a context (listed), but its samples are all lost (NVML never
    #                       does this to a busy process; an idle one gets no sample anyway: scale=0, floor=0)


@dataclass(frozen=True)
class PodSpec:
    """A pod (one GPU container) holding devices during [start_s, end_s)."""

    uid: str
    namespace: str
    name: str
    labels: tuple[tuple[str, str], ...] = ()
    container: str = "main"
    holds: tuple[Holding, ...] = ()
    procs: tuple[ProcSpec, ...] = ()
    start_s: float = -math.inf
    end_s: float = math.inf

    def label(self, key: str) -> str | None:
        """The value of label ``key``, or None when the pod lacks it."""
        return dict(self.labels).get(key)


@dataclass(frozen=True)
class NodeSpec:
    """One GPU node: its GPUs (NVML index order) and the pods scheduled on it."""

    name: str
    gpus: tuple[GpuSpec, ...]
    pods: tuple[PodSpec, ...] = ()
    driver_version: str = "550.90.07"


@dataclass(frozen=True)
class FleetSpec:
    """The whole simulated fleet."""

    nodes: tuple[NodeSpec, ...]
    quirks: Quirks = field(default_factory=Quirks)
    #: The cluster its agents name in every message (``Sampler(cluster=...)``); None: they name none.
    cluster: str | None = None


def mig_profile_slices(profile: str) -> tuple[int, int]:
    """``"3g.40gb"`` -> (3 compute slices, 40 GiB of memory)."""
    try:
        g, mem = profile.split(".")
        return int(g.rstrip("g")), int(mem.rstrip("gb"))
    except ValueError:
        raise ValueError(f"MIG profile {profile!r} is not of the form '<n>g.<m>gb' (e.g. '3g.40gb')") from None
