"""The busy/idle split of one GPU unit in one interval: the rule the ledger books and the agent shows.

A *unit* is a whole GPU or a MIG device for one sample interval. Its busy
time ``util × capacity`` goes to processes by the first rule that applies
(docs/attribution.md tables them; the codes below name them)::

    per-process SM samples, Σ > 0              PROCESS_SAMPLES      w_p = (1 - r) × evidence_p / Σ evidence
      ... and a listed owned process has no    UNPLACED_REMAINDER   the part r of busy the samples cannot
          sample while the samples explain                          place, to nobody (``unattributed``);
          less than (1 - tolerance) of the                          the unsampled process is idle
          device's busy time
    processes listed, no sample at all         EQUAL_PROCESSES      equally among owned processes
                                                                    (all processes when none is owned)
    only unowned processes, unit held          SERVER_ONLY          holders by allocation share
    no process listed, unit held               ALLOCATION_SHARE     holders by allocation share
    nothing listed, nobody holds it            NO_HOLDER            nobody's (kept visible)

Why (NVML, ``nvmlDeviceGetProcessUtilization``): "One utilization sample
structure is returned per process running, that had some non-zero utilization
during the last sample period." A process that holds a context but has no
sample in a whole interval ran nothing in it -- it is idle, never the owner of
its neighbours' time. Per-process samples that sum a little above or below the
device figure (jitter, a few lost samples) are normalised among the sampled
processes; a shortfall beyond SAMPLE_TOLERANCE on a unit where an unsampled
context is listed cannot be placed (the sampled processes' lost samples, or a
context whose samples were all lost: nothing says which) and stays visible as
its own rule. Without any unsampled context the sampled processes are the
only candidates and take all of busy.

Idle (``capacity − busy``, or all of it when the unit reports no utilization)
goes to the holders by ``share / max(Σ share, 1)``; what they do not hold is
unallocated. An *owned* process has a pod or a Slurm job; an MPS server or a
host daemon has neither.

Pure numpy over arrays -- one element per unit, or per process / holder row
with its unit's figures gathered to the row -- so that the two places that
show the split call the same code: the ledger's readable reference
(``gpuledger.analytics.ledger.reference``, a chunk of units) and the agent's
``/metrics`` (``gpuledger.agent.metrics.pod_shares``, one node's tick). This
module is the bottom layer: the agent may import it, it imports no stage.
The ledger's compiled kernel (``gpuledger.analytics.ledger.passes``) is this
rule written as loops over sorted rows; tests/analytics/test_ledger_fast.py
holds it to the reference, tests/analytics/test_agent_split.py the agent.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "ALLOCATION_SHARE", "EQUAL_PROCESSES", "NO_HOLDER", "LOST_SAMPLES", "PROCESS_SAMPLES", "SAMPLE_TOLERANCE", "SERVER_ONLY",
    "UNPLACED_REMAINDER", "UnitSplit", "clean_evidence", "held_fraction", "process_weights", "split_units",
]

#: Busy rules, as codes (the ledger's names: ``gpuledger.analytics.kinds.RULE_*``, in this order).
PROCESS_SAMPLES, UNPLACED_REMAINDER, EQUAL_PROCESSES, ALLOCATION_SHARE, SERVER_ONLY, NO_HOLDER = range(6)
#: How far the per-process samples may fall short of the device's busy time and still be scaled up to it
#: (fraction of busy): the sampled processes get at most 1 / (1 - SAMPLE_TOLERANCE) of what their samples
#: explain while an unsampled context is listed; the rest is UNPLACED_REMAINDER. The simulator's noisy
#: scenarios (2 % of samples lost, 5 % noise, per-GPU bias of a few %) fall short by under 5 %.
SAMPLE_TOLERANCE = 0.1
#: ... or, when more, the share of LOST_SAMPLES device samples (at a 10 s tick and NVML's ~1 s sample
#: period, one lost per-process sample is 10 % of an interval); the tolerance never exceeds 1/2.
LOST_SAMPLES = 2.0

_DBL_MAX = float(np.finfo(np.float64).max)


class UnitSplit(NamedTuple):
    """Per unit: how its busy and idle time are split (arrays, one element per unit)."""

    measured: np.ndarray  # bool: the unit reports utilization (else its held time is unmeasured, not idle)
    busy: np.ndarray  # busy time, capacity's unit (util × capacity; 0 when not measured)
    remainder: np.ndarray  # bool: a listed owned process has no sample beside sampled ones (r may be 0)
    r: np.ndarray  # fraction of busy the samples cannot place: UNPLACED_REMAINDER, to nobody (0 unless ``remainder``)
    by_process: np.ndarray  # bool: busy split over the process rows (process_weights)
    by_share: np.ndarray  # bool: busy split over the holders by share (ALLOCATION_SHARE / SERVER_ONLY)
    to_nobody: np.ndarray  # bool: busy held by nobody (NO_HOLDER)
    norm: np.ndarray  # max(Σ share, 1): a holder's idle share is share / norm (overcommitment normalised)


def clean_evidence(sm_util_sum: np.ndarray) -> np.ndarray:
    """A process's SM-sample sum as evidence: missing (NaN) -> 0, +inf -> float max, below 0 -> 0."""
    x = np.asarray(sm_util_sum, np.float64)
    return np.where(x > 0.0, np.minimum(x, _DBL_MAX), 0.0)  # NaN > 0 is false: NaN -> 0


def held_fraction(share_sum: np.ndarray) -> np.ndarray:
    """The share of a unit its holders hold, 0..1 (rounded to 1e-12 first, so 3 × 1/3 holds exactly 1
    whatever the summation order); unallocated = idle × (1 − held)."""
    return np.clip(np.round(share_sum, 12), 0.0, 1.0)


def split_units(util: np.ndarray, capacity: np.ndarray, util_samples: np.ndarray, n_procs: np.ndarray,
                n_owned: np.ndarray, n_sampled: np.ndarray, n_unsampled: np.ndarray, evidence_sum: np.ndarray,
                share_sum: np.ndarray) -> UnitSplit:
    """Which rule splits each unit's busy time, and the figures it needs.

    Per unit: ``util`` (0..1, NaN when not reported), ``capacity`` (any time
    unit; busy comes out in it), ``util_samples`` (device samples behind util;
    0 when util is not a sample mean), ``n_procs`` processes listed,
    ``n_owned`` of them owned, ``n_sampled`` with a sample, ``n_unsampled``
    owned without one, ``evidence_sum`` (Σ clean_evidence), ``share_sum``
    (Σ allocation share of the holders).
    """
    measured = ~np.isnan(util)
    busy = np.where(measured, util * capacity, 0.0)
    # Each per-process sample stands for capacity / util_samples; the samples explain the fraction e of
    # busy. With an unsampled context listed, the sampled processes are scaled up to at most
    # e / (1 - SAMPLE_TOLERANCE) of busy; the rest is unplaced (all of it when they reported only zeros).
    remainder = (n_unsampled > 0) & (n_sampled > 0) & (util_samples > 0) & (busy > 0)
    # Overflow (a hypothesis-sized capacity) makes explained inf: nothing unplaced, as for any e >= 1.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        explained = evidence_sum * capacity / util_samples / busy
        tolerance = np.minimum(np.maximum(SAMPLE_TOLERANCE, LOST_SAMPLES / util_samples), 0.5)
        unplaced = 1.0 - explained / (1.0 - tolerance)
        r = np.where(remainder, np.minimum(np.maximum(unplaced, 0.0), 1.0), 0.0)  # clipped; NaN stays NaN
    server_only = (n_owned == 0) & (share_sum > 0)  # only an MPS server / host daemon listed, unit held
    no_proc = measured & (busy > 0) & ((n_procs == 0) | ((evidence_sum <= 0) & server_only))
    return UnitSplit(
        measured=measured, busy=busy, remainder=remainder, r=r,
        by_process=measured & (n_procs > 0) & ((evidence_sum > 0) | ~server_only),
        by_share=no_proc & (share_sum > 0), to_nobody=no_proc & ~(share_sum > 0),
        norm=np.maximum(share_sum, 1.0),
    )


def process_weights(evidence: np.ndarray, owned: np.ndarray, samples: np.ndarray, remainder: np.ndarray,
                    r: np.ndarray, evidence_sum: np.ndarray, n_owned: np.ndarray,
                    n_procs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per process row of a ``by_process`` unit: (w, busy rule code); busy_p = busy × w.

    Row figures: ``evidence`` (clean_evidence), ``owned``, ``samples``; the
    rest are the row's unit's (split_units' inputs and output, gathered).
    A unit's weights sum to ``1 − r``, by evidence (an unsampled process: 0);
    the unplaced ``r`` of busy is booked to nobody (UNPLACED_REMAINDER, one row
    per unit, not here).
    """
    by_evidence = evidence_sum > 0
    with np.errstate(divide="ignore", invalid="ignore"):  # each branch is computed for every row
        equal = np.where(n_owned > 0, owned / n_owned, 1.0 / n_procs)
        w = np.where(by_evidence, (1.0 - r) * evidence / evidence_sum, np.where(remainder, 0.0, equal))
    rule = np.where(by_evidence | remainder, PROCESS_SAMPLES, EQUAL_PROCESSES)
    return w, rule
