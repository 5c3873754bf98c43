"""Every setting, declared once: name, type, default, help.

Read at start-up (:func:`load_settings`), from ``GPULEDGER_*`` environment
variables, overridden by command-line flags (:func:`with_changes`; the CLI
generates those flags from these declarations); never at import time. A value
that does not validate is a ``ConfigError`` naming the setting, not a
traceback. ``docs/configuration.md`` documents each one, and a test checks
that it does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from gpuledger.errors import ConfigError

#: The producer codecs the agent can use (kafka-python's ``compression_type``; "none": uncompressed).
Compression = Literal["zstd", "gzip", "lz4", "snappy", "none"]
#: Kafka's security protocols (kafka-python's ``security_protocol``).
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
#: Rows of the chargeback file per billing month or per UTC day.
ChargePeriod = Literal["month", "day"]
FocusVersion = Literal["1.4", "1.2"]
IdlePolicy = Literal["holder", "share_unallocated", "platform"]


class Settings(BaseSettings):
    """Validated on construction; frozen, so what start-up read is what every stage sees."""

    model_config = SettingsConfigDict(env_prefix="GPULEDGER_", extra="ignore", frozen=True)

    db_path: str = Field("gpuledger.duckdb", description="DuckDB file that ingest writes and the API reads.")
    duckdb_memory_limit: str = Field(
        "1GB", pattern=r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$",
        description="Most memory DuckDB may use per process (e.g. 512MB, 2GB); past it, it spills to disk "
        "next to the database file.")
    kafka_bootstrap: str | None = Field(
        None,
        description="Kafka bootstrap servers (host:port[,host:port]) the agent publishes to and ingest reads; "
        "unset: the agent prints instead (ingest needs it).",
    )
    kafka_topic: str = Field("gpuledger.samples.v1", description="Topic the agents publish to and ingest reads.")
    kafka_group: str = Field("gpuledger-ingest", description="Consumer group of the ingest workers.")
    kafka_security_protocol: SecurityProtocol | None = Field(
        None, description="Passed to the Kafka client: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_mechanism: str | None = Field(None, description="Passed to the Kafka client, e.g. SCRAM-SHA-512.")
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (never logged).")
    kafka_ssl_cafile: str | None = Field(None, description="CA bundle for broker TLS.")
    kafka_compression: Compression = Field(
        "zstd", description="Agent's producer codec: zstd, gzip, lz4, snappy or none (gzip for brokers older than Kafka 2.1)."
    )
    interval_s: float = Field(10.0, description="Agent tick in seconds: one message per node per tick.")
    node_name: str | None = Field(
        None,
        description="Node name stamped on messages; unset: the host name (DaemonSet: NODE_NAME from the downward API).",
    )
    metrics_port: int = Field(9400, description="Port of the agent's Prometheus /metrics (0: off).")
    metrics_host: str = Field("0.0.0.0", description="Address the agent's /metrics binds (127.0.0.1: this host only).")
    spool_dir: str | None = Field(
        None, description="Agent store-and-forward spool directory; unset: <temp dir>/gpuledger-spool-<node>."
    )
    spool_max_bytes: int = Field(
        256 * 2**20, gt=0, description="Spool bound in bytes; when full the oldest records are dropped (and counted)."
    )
    pod_resources_socket: str = Field(
        "/var/lib/kubelet/pod-resources/kubelet.sock",
        description="Kubelet PodResources v1 gRPC socket: which container holds which GPU.",
    )
    kubelet_insecure_tls: bool = Field(
        False, description="Skip verifying the kubelet's serving certificate (self-signed without serverTLSBootstrap)."
    )
    dcgm_exporter_url: str | None = Field(
        None, description="A local dcgm-exporter's /metrics to read MIG GR_ENGINE_ACTIVE from (optional)."
    )
    proc_root: str = Field("/proc", description="Host /proc as the agent sees it (DaemonSet: /host/proc, mounted read-only).")
    kubelet_pods_url: str | None = Field(
        None, description="Kubelet pods endpoint for pod labels and container ids (e.g. https://$NODE_IP:10250/pods)."
    )
    ingest_batch_max: int = Field(
        5000, description="Ingest: most records per flush (one DuckDB transaction, then one offset commit)."
    )
    ingest_linger_s: float = Field(1.0, description="Ingest: seconds to keep polling after a flush's first record to fill it.")
    ingest_max_future_s: float = Field(
        300.0, description="Ingest: an interval ending more than this many seconds after now is quarantined (clock skew bound)."
    )
    ingest_max_age_s: float = Field(
        7 * 86400.0,
        description="Ingest: an interval starting more than this many seconds ago is quarantined "
        "(above the agent spool's reach).",
    )
    raw_retention_months: int = Field(
        2, description="Billing months of raw samples `gpuledger retention` keeps (2: the current and the previous month)."
    )
    ledger_retention_months: int = Field(
        13, description="Months of the interval-grain ledger `gpuledger retention` keeps, the current one included "
        "(13: a year of invoices can be drilled down; only closed, rolled-up months go; 0: forever)."
    )
    rollup_retention_months: int = Field(
        36, description="Months of hourly rollups (ledger_hourly) `gpuledger retention` keeps (0: forever)."
    )
    ledger_window_days: float = Field(
        7.0, ge=0,
        description="Days of interval-grain ledger rows `gpuledger attribute` keeps, counted back from the newest "
        "stored message; older hours are kept as hourly rollups only (the bill is made from them) and `explain` "
        "recomputes their interval rows from the raw samples while those are kept. 0: keep every interval.")
    attribute_workers: int = Field(
        0, ge=0, description="Processes that run the attribution kernel beside the one reading and writing "
        "the database (0: one per core).")
    api_host: str = Field("127.0.0.1", description="Address the API binds (`gpuledger serve`, and the demo's).")
    api_port: int = Field(8080, description="Port the API binds (`gpuledger serve`, and the demo's).")
    api_tls_certfile: str | None = Field(
        None, description="`serve` over HTTPS: PEM certificate (chain) file; with api_tls_keyfile. Unset: plain HTTP."
    )
    api_tls_keyfile: str | None = Field(None, description="`serve` over HTTPS: PEM private key of api_tls_certfile.")
    api_audit_dir: str | None = Field(
        None, description="`serve`: directory of the audit log of token use (one JSON-lines file per UTC day); "
        "unset: no audit log."
    )
    api_audit_retention_days: int = Field(
        90, description="`serve`: days of audit log files kept, today included (0: forever)."
    )
    prices_path: str | None = Field(None, description="Price book TOML; unset: the shipped default book.")
    tenancy_path: str | None = Field(None, description="Tenancy rules TOML; unset: label `team`, else namespace.")
    cloud_rates_path: str | None = Field(
        None, description="On-demand cloud rates TOML for fleet economics; unset: the shipped, dated example."
    )
    budgets_path: str | None = Field(
        None, description="Per-tenant monthly budgets TOML (`/v1/budgets`, `/metrics`, `report budgets`); unset: none."
    )
    work_units_path: str | None = Field(
        None, description="Work units TOML (PromQL per unit, imported hourly); unset: the shipped vLLM token counters."
    )
    queues_path: str | None = Field(
        None, description="Kueue TOML (resource, ClusterQueue -> tenant); unset: nvidia.com/gpu, tenant = queue name."
    )
    prometheus_url: str | None = Field(
        None, description="Prometheus base URL work units are imported from; unset: the work units file's."
    )
    node_pools_path: str | None = Field(
        None, description="Node pools TOML (node name globs -> pool) for fleet economics; unset: `unassigned`."
    )
    billing_account_id: str = Field("gpuledger", description="FOCUS BillingAccountId of the chargeback file.")
    billing_account_name: str = Field("gpuledger GPU fleet", description="FOCUS BillingAccountName.")
    provider_name: str = Field("gpuledger", description="FOCUS ProviderName, PublisherName and InvoiceIssuerName.")
    region_id: str | None = Field(None, description="FOCUS RegionId/RegionName of the fleet; unset: null.")
    charge_period: ChargePeriod = Field("month", description="Chargeback rows per `month` or per UTC `day`.")
    idle_policy: IdlePolicy = Field(
        "holder", description="Who pays for idle GPU time in the chargeback file: `holder` (allocated idle stays "
        "with the holder, unallocated on platform), `share_unallocated` (unallocated spread over the tenants by "
        "their GPU-hours, like OpenCost's shareIdle) or `platform` (tenants pay only for busy and unmeasured time)."
    )
    focus_version: FocusVersion = Field(
        "1.4", description="FOCUS version of the chargeback file: `1.4` (split cost allocation columns) or `1.2`."
    )
    close_grace_hours: float = Field(
        6.0, description="`serve --close-months`: close a month this many hours after it ends."
    )

    def kafka_client_settings(self) -> dict[str, str]:
        """TLS/SASL options passed straight through to the Kafka client (the password as plain text:
        the client needs it; nothing else sees it unmasked, ``repr`` and logs show ``**********``)."""
        password = self.kafka_sasl_password
        pairs = {
            "security_protocol": self.kafka_security_protocol,
            "sasl_mechanism": self.kafka_sasl_mechanism,
            "sasl_plain_username": self.kafka_sasl_username,
            "sasl_plain_password": password.get_secret_value() if password is not None else None,
            "ssl_cafile": self.kafka_ssl_cafile,
        }
        return {k: v for k, v in pairs.items() if v is not None}


def load_settings() -> Settings:
    """``Settings`` from the environment; a value that does not validate is a :class:`ConfigError`."""
    try:
        return Settings()
    except ValidationError as exc:
        raise _invalid(exc) from None


def with_changes(settings: Settings, changes: Mapping[str, Any]) -> Settings:
    """A copy of ``settings`` with ``changes`` (command-line flags), validated like the environment's values."""
    if not changes:
        return settings
    try:
        return Settings.model_validate({**settings.model_dump(), **changes})
    except ValidationError as exc:
        raise _invalid(exc) from None


def _invalid(exc: ValidationError) -> ConfigError:
    """Names each setting that failed, what it accepts, and where it came from."""
    errors = exc.errors()
    names = [str(e["loc"][0]) for e in errors if e["loc"]]
    problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
    where = ", ".join(f"GPULEDGER_{n.upper()}" for n in dict.fromkeys(names)) or "the GPULEDGER_* variables"
    return ConfigError(f"invalid setting {problems}",
                       hint=f"fix {where} or its command-line flag (docs/configuration.md: each setting and "
                       "what it accepts)")
