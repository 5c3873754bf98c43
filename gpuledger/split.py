"""The busy/idle split of one GPU unit in one interval: the rule the ledger books and the agent shows.

A *unit* is a whole GPU or a MIG device for one sample interval. Its busy
time ``util × capacity`` goes to processes by the first rule that applies
(docs/attribution.md tables them; the codes below name them)::

    per-process SM samples, Σ > 0              PROCESS_SAMPLES      w_p = evidence_p / Σ evidence
      ... and a listed owned process has no    UNSAMPLED_REMAINDER  the remainder r the samples leave
          sample while the samples explain                          unexplained, equally to the
          less than the device measured                             unsampled; the sampled keep (1 - r)
    processes listed, no usable sample         EQUAL_PROCESSES      equally among owned processes
                                                                    (all processes when none is owned)
    only unowned processes, unit held          SERVER_ONLY          holders by allocation share
    no process listed, unit held               ALLOCATION_SHARE     holders by allocation share
    nothing listed, nobody holds it            NO_HOLDER            nobody's (kept visible)

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
    "ALLOCATION_SHARE", "EQUAL_PROCESSES", "NO_HOLDER", "PROCESS_SAMPLES", "SERVER_ONLY", "UNSAMPLED_REMAINDER",
    "UnitSplit", "clean_evidence", "held_fraction", "process_weights", "split_units",
]

#: Busy rules, as codes (the ledger's names: ``gpuledger.analytics.kinds.RULE_*``, in this order).
PROCESS_SAMPLES, UNSAMPLED_REMAINDER, EQUAL_PROCESSES, ALLOCATION_SHARE, SERVER_ONLY, NO_HOLDER = range(6)

_DBL_MAX = float(np.finfo(np.float64).max)


class UnitSplit(NamedTuple):
    """Per unit: how its busy and idle time are split (arrays, one element per unit)."""

    measured: np.ndarray  # bool: the unit reports utilization (else its held time is unmeasured, not idle)
    busy: np.ndarray  # busy time, capacity's unit (util × capacity; 0 when not measured)
    remainder: np.ndarray  # bool: UNSAMPLED_REMAINDER applies
    r: np.ndarray  # fraction of busy that goes to the unsampled processes (0 unless ``remainder``)
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
    # Each per-process sample stands for capacity / util_samples; what the samples leave unexplained is
    # the unsampled processes' (all of busy when the sampled ones reported only zeros).
    remainder = (n_unsampled > 0) & (n_sampled > 0) & (util_samples > 0) & (busy > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        unexplained = 1.0 - evidence_sum * capacity / util_samples / busy
        r = np.where(remainder, np.minimum(np.maximum(unexplained, 0.0), 1.0), 0.0)  # clipped; NaN stays NaN
    server_only = (n_owned == 0) & (share_sum > 0)  # only an MPS server / host daemon listed, unit held
    no_proc = measured & (busy > 0) & ((n_procs == 0) | ((evidence_sum <= 0) & server_only))
    return UnitSplit(
        measured=measured, busy=busy, remainder=remainder, r=r,
        by_process=measured & (n_procs > 0) & ((evidence_sum > 0) | ~server_only),
        by_share=no_proc & (share_sum > 0), to_nobody=no_proc & ~(share_sum > 0),
        norm=np.maximum(share_sum, 1.0),
    )


def process_weights(evidence: np.ndarray, owned: np.ndarray, samples: np.ndarray, remainder: np.ndarray,
                    r: np.ndarray, evidence_sum: np.ndarray, n_unsampled: np.ndarray, n_owned: np.ndarray,
                    n_procs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per process row of a ``by_process`` unit: (w, busy rule code); busy_p = busy × w.

    Row figures: ``evidence`` (clean_evidence), ``owned``, ``samples``; the
    rest are the row's unit's (split_units' inputs and output, gathered).
    A unit's weights sum to 1: ``1 − r`` by evidence, ``r`` to the unsampled.
    """
    unsampled = owned & (samples <= 0)
    take_remainder = remainder & unsampled
    by_evidence = evidence_sum > 0
    with np.errstate(divide="ignore", invalid="ignore"):  # each branch is computed for every row
        equal = np.where(n_owned > 0, owned / n_owned, 1.0 / n_procs)
        w = np.where(take_remainder, r / n_unsampled,
                     np.where(by_evidence, (1.0 - r) * evidence / evidence_sum, np.where(remainder, 0.0, equal)))
    rule = np.where(take_remainder, UNSAMPLED_REMAINDER,
                    np.where(by_evidence | remainder, PROCESS_SAMPLES, EQUAL_PROCESSES))
    return w, rule
