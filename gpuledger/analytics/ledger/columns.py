"""The ledger's columns and code tables, shared by the reference and the kernel.

A ledger row books GPU-seconds (and joules, GB-seconds) of one unit -- a GPU,
a MIG device, or a MIG-mode GPU's unconfigured remainder -- in one message
(``MSG``) to one tenant line: kind (kinds.KINDS) and the rule that put it
there. The kernel names kinds, rules and sharing modes by their index in the
tuples below; its compiled passes use those indices as literals
(``passes.R_*``), and tests/analytics/test_ledger_fast.py checks they agree.
"""

from __future__ import annotations

from gpuledger.analytics import kinds as K

__all__ = ["CONTEXT", "KINDS", "LEDGER_COLUMNS", "MSG", "RULES", "SHARING", "UNIT"]

#: A message's key (agent, boot, sequence number): what ingest and the job call one interval of one node.
MSG = ["agent_id", "boot_id", "seq"]
#: A unit's key: the message, the physical GPU's index, the MIG device (-1: the GPU itself).
UNIT = [*MSG, "gpu_index", "mig_index"]
#: What a row says about its unit besides the key.
CONTEXT = ["node", "interval_start_ns", "interval_end_ns", "gpu_uuid", "model", "profile", "sharing"]
LEDGER_COLUMNS = [
    *MSG, "node", "interval_start_ns", "interval_end_ns", "gpu_uuid", "gpu_index", "mig_index",
    "model", "profile", "sharing", "kind", "tenant", "namespace", "pod", "rule",
    "gpu_seconds", "energy_j", "memory_gb_seconds",
]

KINDS = K.KINDS  # BUSY, ALLOCATED_IDLE, UNMEASURED, UNALLOCATED = codes 0..3
#: Rules by code: the busy rules first, in gpuledger.split's order (PROCESS_SAMPLES = 0 .. NO_HOLDER = 5).
RULES = (
    K.RULE_PROCESS_SAMPLES, K.RULE_UNPLACED_REMAINDER, K.RULE_EQUAL_PROCESSES, K.RULE_ALLOCATION_SHARE,
    K.RULE_SERVER_ONLY, K.RULE_NO_HOLDER, K.RULE_IDLE_SHARE, K.RULE_MIG_UNMEASURED, K.RULE_UNALLOCATED,
    K.RULE_HOLDERS_UNKNOWN, K.RULE_IDLE_PROCESS_HOLDERS,
)
#: How a unit is shared, by code (the ``sharing`` column).
SHARING = ("exclusive", "time_sliced", "fractional", "mig", "unallocated")
