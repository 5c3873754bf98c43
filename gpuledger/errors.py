"""The project's own small error tree. Outside libraries' exceptions are
translated into these at their one home (nvml, transport, store).

    GpuledgerError            anything this project raises on purpose; has .hint
    ├── ConfigError           a setting or file is wrong
    ├── WireError             a message cannot be decoded (goes to dead letters)
    ├── BackendError          the GPU backend failed as a whole
    │   └── BackendUnavailable  no NVIDIA driver / library on this machine
    ├── FieldError            one NVML field failed; .reason is the short code
    │   ├── NotSupported
    │   ├── NotFound
    │   ├── NoPermission
    │   └── GpuLost           the GPU fell off the bus
    ├── TransportError        the broker failed (unreachable, timed out)
    └── StoreError            the database failed
        ├── StoreLocked       another process holds the file (DuckDB: one writer process, no reader beside it)
        ├── StoreCorrupt      the file is not a DuckDB database, or is damaged
        ├── StoreMissingTable a table the statement needs is absent (an older file opened read-only)
        └── StoreTooNew       the file's schema is newer than this gpuledger (a migration it does not know)

Only ``gpuledger.store.duck`` tells these apart (DuckDB reports them as
``IOException``/``CatalogException`` with a message); callers catch the type.
"""

from __future__ import annotations


class GpuledgerError(Exception):
    """Base class. ``hint`` says what the user can do about it."""

    hint: str = ""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class ConfigError(GpuledgerError):
    pass


class WireError(GpuledgerError):
    pass


class BackendError(GpuledgerError):
    pass


class BackendUnavailable(BackendError):
    hint = "run on a node with the NVIDIA driver, or use --backend sim for the simulated fleet"


class FieldError(GpuledgerError):
    reason = "Error"


class NotSupported(FieldError):
    reason = "NotSupported"


class NotFound(FieldError):
    reason = "NotFound"


class NoPermission(FieldError):
    reason = "NoPermission"


class GpuLost(FieldError):
    reason = "GpuLost"


class TransportError(GpuledgerError):
    hint = "check --kafka (bootstrap servers) and that the broker is reachable"


class GroupMembershipLost(TransportError):
    """A commit was refused because this consumer is no longer a member of its group's current generation
    (a rebalance, or it left the group after max_poll_interval_ms without a poll). Nothing is lost: the
    offsets are owed and committed after the member rejoins (or the records are redelivered and skipped)."""


class StoreError(GpuledgerError):
    pass


class StoreLocked(StoreError):
    hint = ("another process holds the file for writing (DuckDB allows one): read it with read_only=True "
            "between the writer's flushes, or stop the writer")


class StoreCorrupt(StoreError):
    hint = "check the path: the file exists but is not a gpuledger DuckDB database (or is damaged)"


class StoreMissingTable(StoreError):
    hint = "the file lacks a table: open it for writing once (any gpuledger command that writes) to upgrade it"


class StoreTooNew(StoreError):
    hint = "the file was written by a newer gpuledger: upgrade gpuledger before writing to it"
