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


class StoreError(GpuledgerError):
    pass
