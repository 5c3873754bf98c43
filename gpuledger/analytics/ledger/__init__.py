"""The ledger: every GPU-second and joule of capacity to exactly one tenant line.

Two implementations of one rule, held to each other by
tests/analytics/test_ledger_fast.py:

- ``reference``: ``attribute``, readable Polars over store-shaped frames, in
  named steps (``units``, ``holders``, ``evidence``, ``unit_rules``,
  ``busy_by_process``, ``by_share``, ``per_unit``, ``unknown_holders``);
  the per-unit rule itself is ``gpuledger.split``, shared with the agent.
- ``kernel``: ``attribute_chunk``, the same rows from an integer-coded
  ``Chunk`` (``coding``) by compiled passes named after those steps
  (``passes``); what the job runs.

``columns`` names the ledger's columns and code tables. IO lives in
``gpuledger/analytics/job.py``.
"""

from gpuledger.analytics.ledger.coding import Chunk, Frames, chunk_from_frames, device_idents, frames_of_chunk
from gpuledger.analytics.ledger.columns import LEDGER_COLUMNS, MSG, UNIT
from gpuledger.analytics.ledger.kernel import Result, attribute_chunk
from gpuledger.analytics.ledger.reference import attribute, conservation_error

__all__ = [
    "LEDGER_COLUMNS", "MSG", "UNIT", "Chunk", "Frames", "Result", "attribute", "attribute_chunk",
    "chunk_from_frames", "conservation_error", "device_idents", "frames_of_chunk",
]
