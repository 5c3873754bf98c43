"""Names shared by the ledger, the rollups, the API and the exports.

Every GPU-second of capacity lands in exactly one kind:

- ``busy``            the GPU was executing work; charged to the process's tenant
- ``allocated_idle``  held by an allocation but not busy; charged to the holder
- ``unmeasured``      held, but the device reports no utilization (e.g. a MIG
                      slice without DCGM profiling): charged to the holder, busy
                      share unknown — never reported as zero busy
- ``unallocated``     idle and held by nobody: the platform's line
"""

BUSY = "busy"
ALLOCATED_IDLE = "allocated_idle"
UNMEASURED = "unmeasured"
UNALLOCATED = "unallocated"
KINDS = (BUSY, ALLOCATED_IDLE, UNMEASURED, UNALLOCATED)

#: Tenant of the ``unallocated`` kind (the platform team owns idle capacity).
PLATFORM_TENANT = "platform"
#: Tenant of usage no tenancy rule matched (never dropped).
UNATTRIBUTED_TENANT = "unattributed"

#: How a ledger row was attributed (ledger.rule).
RULE_PROCESS_SAMPLES = "process_samples"  # direct per-process evidence
#: Busy the per-process samples cannot place: they fall short of the device's busy time by more than
#: split.SAMPLE_TOLERANCE while a listed context has no sample (idle, per NVML) -> ``unattributed``, visible.
RULE_UNPLACED_REMAINDER = "unplaced_remainder"
RULE_EQUAL_PROCESSES = "equal_split_processes"  # no usable samples: split among processes present
RULE_ALLOCATION_SHARE = "allocation_share"  # no processes: split among allocation holders
RULE_SERVER_ONLY = "allocation_share_server_only"  # only pod-less processes (MPS server): holders by share
RULE_NO_HOLDER = "no_holder"  # busy with neither process nor holder
RULE_IDLE_SHARE = "idle_allocation_share"
RULE_UNALLOCATED = "unallocated_remainder"
RULE_MIG_UNMEASURED = "mig_allocation_only"
#: Idle held by nobody *the agent could see*: it could not read the allocations (kubelet PodResources
#: unreachable; the message's ``allocations_unavailable``) and no pod ran a process on the GPU. Booked
#: as ``unallocated`` like RULE_UNALLOCATED, but it may have had holders: unknown, not nobody.
RULE_HOLDERS_UNKNOWN = "allocations_unavailable"
#: ... and the GPU ran processes of pods: those pods held it (a pod runs on a GPU only through an
#: allocation), so its idle goes to them, equally (the replica shares of a time-sliced GPU are equal).
#: Kind ``allocated_idle``; pods holding the GPU without a process in the interval are not seen.
RULE_IDLE_PROCESS_HOLDERS = "idle_process_holders"
DIRECT_RULES = (RULE_PROCESS_SAMPLES,)
