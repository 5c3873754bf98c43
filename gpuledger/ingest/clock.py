"""Clock sanity: intervals that cannot be true are quarantined, not stored as truth.

An agent with a broken clock (an RTC reset to 1970, an NTP step of years, a
VM restored from an old snapshot) sends intervals in the future or far in the
past. Stored, they would be billed to a month nobody is looking at, or
reopen a closed one. Ingest instead sends such a message to ``dead_letters``
with its bytes and a reason starting with ``quarantined:`` (so it can be
inspected and replayed once the clock is understood), and commits past it.

Late but plausible data is *not* quarantined: an agent replaying its spool
after an outage of hours or days is exactly what the store must take
(bound: ``ingest_max_age_s``, default 7 days, above the agent spool's ~5 days).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpuledger.ingest.batch import ArrowBatch

__all__ = ["QUARANTINE", "ClockCheck"]

QUARANTINE = "quarantined:"


@dataclass(frozen=True)
class ClockCheck:
    """Bounds, in seconds relative to ingest's wall clock at decode time.

    ``max_future_s``: an interval may end at most this far after now (clock
    skew between node and ingest; default 300 s). ``max_age_s``: an interval
    may start at most this long before now (default 7 days). None disables
    a bound.
    """

    max_future_s: float | None = 300.0
    max_age_s: float | None = 7 * 86400.0

    def reason(self, start_ns: int, end_ns: int, now_ns: int) -> str | None:
        """Why this interval is quarantined, or None when it is plausible."""
        if self.max_future_s is not None and end_ns > now_ns + self.max_future_s * 1e9:
            return (f"{QUARANTINE} interval ends {(end_ns - now_ns) / 1e9:.0f} s in the future "
                    f"(bound ingest_max_future_s={self.max_future_s:g}); check the agent's clock (NTP)")
        if self.max_age_s is not None and start_ns < now_ns - self.max_age_s * 1e9:
            return (f"{QUARANTINE} interval starts {(now_ns - start_ns) / 86400e9:.2f} days ago "
                    f"(bound ingest_max_age_s={self.max_age_s:g}); check the agent's clock, or raise the bound "
                    "to accept an old spool replay")
        return None

    def apply(self, batch: ArrowBatch, now_ns: int) -> tuple[ArrowBatch, list[tuple[int, str]]]:
        """Split ``batch`` into the plausible part and ``(input position, reason)`` of the rest."""
        msgs = batch.tables["messages"]
        if msgs.num_rows == 0 or (self.max_future_s is None and self.max_age_s is None):
            return batch, []
        start = msgs["interval_start_ns"].to_numpy()
        end = msgs["interval_end_ns"].to_numpy()
        bad = np.zeros(len(start), dtype=bool)
        if self.max_future_s is not None:
            bad |= end > now_ns + int(self.max_future_s * 1e9)
        if self.max_age_s is not None:
            bad |= start < now_ns - int(self.max_age_s * 1e9)
        if not bad.any():
            return batch, []
        out = [(batch.index[j], self.reason(int(start[j]), int(end[j]), now_ns) or QUARANTINE)
               for j in np.flatnonzero(bad)]
        rows = np.flatnonzero(~bad)
        keep = pa.array(rows.astype(np.int32))
        # A quarantined message reaches no table but dead_letters: not its rows,
        # and not its pods (their labels, with a last_seen beyond the clock bound,
        # would win "latest seen" and re-label the pod's real usage).
        tables = {name: (batch.pods_of(rows.tolist()) if name == "pods" else t.filter(pc.is_in(t["_m"], value_set=keep)))
                  for name, t in batch.tables.items()}
        kept = ArrowBatch(tables=tables, index=[batch.index[j] for j in rows], failed=batch.failed,
                          parts=[batch.parts[int(j)] for j in rows])
        return kept, out
