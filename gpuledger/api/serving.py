"""How ``gpuledger serve`` runs the app: TLS and the audit log, from settings.

The CLI (``serve``) builds the app with ``create_app(..., audit=audit_log(settings))``
and runs it with ``uvicorn.run(app, host=..., port=..., **tls_options(settings))``.

- TLS, for deployments without an ingress in front: ``api_tls_certfile`` and
  ``api_tls_keyfile`` (PEM files, the certificate may hold its chain); both
  or neither. Unset: plain HTTP, as before.
- The audit log of token use (:mod:`~gpuledger.api.audit`): ``api_audit_dir``
  (unset: no log) and ``api_audit_retention_days``.
"""

from __future__ import annotations

from pathlib import Path

from gpuledger.api.audit import AuditLog
from gpuledger.config import Settings
from gpuledger.errors import ConfigError

__all__ = ["audit_log", "tls_options"]


def tls_options(settings: Settings) -> dict[str, str]:
    """uvicorn's ``ssl_certfile``/``ssl_keyfile`` from the settings ({} without TLS); ConfigError when half set."""
    cert, key = settings.api_tls_certfile, settings.api_tls_keyfile
    if cert is None and key is None:
        return {}
    if cert is None or key is None:
        raise ConfigError("TLS needs both a certificate and its key",
                          hint="set both GPULEDGER_API_TLS_CERTFILE and GPULEDGER_API_TLS_KEYFILE, or neither")
    for what, path in (("certificate", cert), ("key", key)):
        if not Path(path).is_file():
            raise ConfigError(f"TLS {what}: no file at {path}", hint="give the path of a PEM file")
    return {"ssl_certfile": cert, "ssl_keyfile": key}


def audit_log(settings: Settings) -> AuditLog | None:
    """The audit log the settings ask for (None: ``api_audit_dir`` unset)."""
    if settings.api_audit_dir is None:
        return None
    try:
        return AuditLog(settings.api_audit_dir, settings.api_audit_retention_days)
    except ValueError as exc:
        raise ConfigError(str(exc), hint="GPULEDGER_API_AUDIT_RETENTION_DAYS=90, or 0 to keep every day") from None
    except OSError as exc:
        raise ConfigError(f"audit log directory {settings.api_audit_dir}: {exc.strerror or exc}",
                          hint="give a directory the server may create and write") from None
