"""Response shapes, for the OpenAPI document (answers are built as plain dicts that match them).

Units: ``*_gpu_hours`` GPU-hours (a MIG slice counts its fraction of the
GPU), ``memory_gb_hours`` GB of framebuffer x hours, ``energy_kwh`` kWh,
``cost`` a decimal string in ``currency``, ``coverage`` the share (0..1) of
busy GPU-time attributed from direct per-process samples. Null means not
measured, never zero.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class PeriodOut(BaseModel):
    start: str
    end: str


class Dimensions(_Open):
    """Group keys present when grouped by them (null: the ledger has no value, e.g. unallocated rows)."""

    time: str | None = None
    tenant: str | None = None
    namespace: str | None = None
    node: str | None = None
    model: str | None = None
    sharing: str | None = None
    profile: str | None = None
    pod: str | None = None
    workload: str | None = None
    gpu: str | None = None
    cluster: str | None = None


class Usage(Dimensions):
    gpu_hours: float
    used_gpu_hours: float
    allocated_idle_gpu_hours: float
    unmeasured_gpu_hours: float
    unallocated_gpu_hours: float
    memory_gb_hours: float | None
    energy_kwh: float | None
    coverage: float | None


class ShowbackRow(Usage):
    cost: str
    idle_cost: str  # the cost of the group's allocated-idle lines
    utilization: float | None  # used / (used + allocated idle); null when nothing measured was held
    currency: str
    drilldown: str | None  # null for label:KEY groups (the drill-down filters by ledger dimensions)


class DataSpan(BaseModel):
    """How much of the period holds data (ISO UTC; first/last null when none)."""

    first: str | None
    last: str | None
    hours_with_data: int
    period_hours: float


class Paged(BaseModel):
    total_rows: int
    next_cursor: str | None


class ShowbackOut(Paged):
    period: PeriodOut | None
    group_by: list[str]
    granularity: str | None
    currency: str
    idle_policy: str
    total_cost: str | None
    data: DataSpan | None
    rows: list[ShowbackRow]


class EfficiencyRow(Dimensions):
    allocated_gpu_hours: float
    used_gpu_hours: float
    idle_gpu_hours: float
    unmeasured_gpu_hours: float
    utilization: float | None
    idle_cost: str
    allocated_cost: str
    coverage: float | None


class EfficiencyOut(Paged):
    period: PeriodOut | None
    group_by: list[str]
    currency: str
    rows: list[EfficiencyRow]
    fleet: dict[str, float | str | None] | None


class IdleRun(BaseModel):
    gpu: str
    cluster: str
    node: str
    gpu_index: int
    mig_index: int
    model: str
    profile: str | None
    tenant: str
    namespace: str | None
    pod: str | None
    idle_since: str
    idle_until: str
    idle_hours: float
    idle_gpu_hours: float
    ongoing: bool


class IdleOut(Paged):
    period: PeriodOut | None
    min_hours: float
    rows: list[IdleRun]


class Holder(BaseModel):
    tenant: str | None
    namespace: str | None
    pod: str | None
    mig_index: int
    replica: int
    share: float


class FleetGpu(BaseModel):
    gpu: str | None  # null only if the GPU never reported its UUID
    cluster: str  # the cluster its agent named (none: the default); (cluster, node, gpu_index) is the GPU's key
    node: str
    gpu_index: int
    model: str | None
    sharing: str | None
    mig_profiles: list[str]
    health: str
    last_seen: str
    xid_events: int
    degraded_intervals: int
    field_errors: int
    field_error_reasons: list[str]
    holders: list[Holder]


class FleetOut(Paged):
    period: PeriodOut | None
    rows: list[FleetGpu]


class DrilldownOut(Paged):
    period: PeriodOut | None
    view: str
    rows: list[dict[str, object]]


class WhoAmI(BaseModel):
    token_id: str
    role: str
    tenant: str | None
    auth: bool
