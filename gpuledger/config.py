"""Every setting, declared once: name, type, default, help.

Read at start-up (:func:`load_settings`), from ``GPULEDGER_*`` environment
variables (names case-insensitive), overridden by command-line flags
(:func:`with_changes`; the CLI generates those flags from these
declarations); never at import time. A value that does not validate is a
``ConfigError`` naming the setting, not a traceback. ``docs/configuration.md``
documents each one, and a test checks that it does.

Plain Python, no pydantic: every process reads its settings, the node agent
included, and pydantic(-settings) costs the agent ~25 MiB of its ~60 MiB
budget (docs/benchmarks.md, bench agent). The types a setting may have are
the few below (``str``, ``int``, ``float``, ``bool``, a ``Literal`` of
strings, :class:`SecretStr`, each optionally ``| None``); values from the
environment are parsed the way pydantic's lax mode did (``"2.5"`` -> 2.5,
``"true"``/``"0"`` -> bool).
"""

from __future__ import annotations

import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from gpuledger.errors import ConfigError
from gpuledger.wire import DEFAULT_CLUSTER

__all__ = ["ChargePeriod", "parse_toml", "Compression", "SecretStr", "SecurityProtocol", "Setting", "Settings",
           "SettingsError", "load_settings", "with_changes"]

ENV_PREFIX = "GPULEDGER_"

#: The producer codecs the agent can use (kafka-python's ``compression_type``; "none": uncompressed).
Compression = Literal["zstd", "gzip", "lz4", "snappy", "none"]
#: Kafka's security protocols (kafka-python's ``security_protocol``).
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
#: Rows of the chargeback file per billing month or per UTC day.
ChargePeriod = Literal["month", "day"]
FocusVersion = Literal["1.4", "1.2"]
IdlePolicy = Literal["holder", "share_unallocated", "platform"]


class SecretStr:
    """A string that ``repr``/``str`` show as ``**********``; :meth:`get_secret_value` gives it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "SecretStr('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretStr) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class SettingsError(ValueError):
    """Settings that do not validate: ``problems`` is a list of (setting name, what it accepts)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{name}: {msg}" for name, msg in problems))
        self.problems = problems


@dataclass(frozen=True)
class Setting:
    """One declared setting (``Settings.model_fields[name]``)."""

    name: str
    annotation: Any  # the resolved type: str, int | None, Literal[...], ...
    default: Any
    description: str
    gt: float | None = None  # the value must be greater than this
    ge: float | None = None  # ... at least this
    pattern: str | None = None  # a string setting must match this (whole value)


@dataclass(frozen=True)
class _Declaration:
    default: Any
    description: str
    gt: float | None
    ge: float | None = None
    pattern: str | None = None


def setting(default: Any, *, description: str, gt: float | None = None, ge: float | None = None,
            pattern: str | None = None) -> Any:
    """Declare a setting in :class:`Settings`' body: its default, its help text, optional bounds or pattern."""
    return _Declaration(default, description, gt, ge, pattern)


_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})


def _coerce(kind: Any, value: Any) -> Any:
    """``value`` as ``kind``, parsing strings (environment, flags); raises ValueError saying what ``kind`` accepts."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        if value is None:
            return None
        (kind,) = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) is Literal:
        options = typing.get_args(kind)
        if value in options:
            return value
        listed = ", ".join(repr(o) for o in options[:-1]) + f" or {options[-1]!r}"
        raise ValueError(f"Input should be {listed}")
    if kind is SecretStr:
        if isinstance(value, SecretStr):
            return value
        if isinstance(value, str):
            return SecretStr(value)
        raise ValueError("Input should be a valid string")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ValueError("Input should be a valid string")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError("Input should be a valid boolean (true/false, 1/0, yes/no, on/off)")
    if kind is int:
        if isinstance(value, bool):
            raise ValueError("Input should be a valid integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ValueError("Input should be a valid integer")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ValueError("Input should be a valid number")
    raise TypeError(f"a setting cannot have type {kind!r}")  # pragma: no cover - a declaration bug


class _Declared:
    """The machinery behind :class:`Settings`: validated, frozen, read from the environment."""

    model_fields: ClassVar[dict[str, Setting]] = {}

    def __init_subclass__(cls) -> None:
        hints = typing.get_type_hints(cls)
        cls.model_fields = {
            name: Setting(name, hints[name], d.default, d.description, d.gt, d.ge, d.pattern)
            for name, d in vars(cls).items() if isinstance(d, _Declaration)
        }

    def __init__(self, **values: Any) -> None:
        """Each setting from ``values``, else its ``GPULEDGER_<NAME>`` environment variable, else its default."""
        env = {k.upper(): v for k, v in os.environ.items() if k.upper().startswith(ENV_PREFIX)}
        problems = [(name, "not a setting (docs/configuration.md lists them)")
                    for name in values if name not in self.model_fields]
        for name, field in self.model_fields.items():
            if name in values:
                raw = values[name]
            elif (key := ENV_PREFIX + name.upper()) in env:
                raw = env[key]
            else:
                object.__setattr__(self, name, field.default)
                continue
            try:
                value = _coerce(field.annotation, raw)
                if field.gt is not None and value is not None and not value > field.gt:
                    raise ValueError(f"Input should be greater than {field.gt:g}")
                if field.ge is not None and value is not None and not value >= field.ge:
                    raise ValueError(f"Input should be greater than or equal to {field.ge:g}")
                if field.pattern is not None and value is not None and not re.fullmatch(field.pattern, value):
                    raise ValueError(f"String should match pattern '{field.pattern}'")
            except ValueError as exc:
                problems.append((name, str(exc)))
                continue
            object.__setattr__(self, name, value)
        if problems:
            raise SettingsError(problems)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"settings are frozen: {name} cannot change after start-up")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"settings are frozen: {name} cannot change after start-up")

    def model_dump(self) -> dict[str, Any]:
        """Name -> value of every setting (a password stays a masked :class:`SecretStr`)."""
        return {name: getattr(self, name) for name in self.model_fields}

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.model_dump() == other.model_dump()

    def __hash__(self) -> int:
        return hash(tuple(self.model_dump().items()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.model_dump().items())})"


class Settings(_Declared):
    """Validated on construction; frozen, so what start-up read is what every stage sees."""

    db_path: str = setting("gpuledger.duckdb", description="DuckDB file that ingest writes and the API reads.")
    duckdb_memory_limit: str = setting(
        "1GB", pattern=r"\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)",
        description="Most memory DuckDB may use per process (e.g. 512MB, 2GB); past it, it spills to disk "
        "next to the database file.")
    kafka_bootstrap: str | None = setting(
        None,
        description="Kafka bootstrap servers (host:port[,host:port]) the agent publishes to and ingest reads; "
        "unset: the agent prints instead (ingest needs it).",
    )
    kafka_topic: str = setting("gpuledger.samples.v1", description="Topic the agents publish to and ingest reads.")
    kafka_group: str = setting("gpuledger-ingest", description="Consumer group of the ingest workers.")
    kafka_security_protocol: SecurityProtocol | None = setting(
        None, description="Passed to the Kafka client: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_mechanism: str | None = setting(None, description="Passed to the Kafka client, e.g. SCRAM-SHA-512.")
    kafka_sasl_username: str | None = setting(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = setting(None, description="SASL password (never logged).")
    kafka_ssl_cafile: str | None = setting(None, description="CA bundle for broker TLS.")
    kafka_compression: Compression = setting(
        "zstd", description="Agent's producer codec: zstd, gzip, lz4, snappy or none (gzip for brokers older than Kafka 2.1)."
    )
    interval_s: float = setting(10.0, description="Agent tick in seconds: one message per node per tick.")
    node_name: str | None = setting(
        None,
        description="Node name stamped on messages; unset: the host name (DaemonSet: NODE_NAME from the downward API).",
    )
    cluster: str | None = setting(
        None, pattern=r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}",
        description="Agent: the cluster (Kubernetes cluster or Slurm site) stamped on every message, so two "
        "clusters' namespaces and pods never merge; unset: the message names none and belongs to default_cluster.",
    )
    metrics_port: int = setting(9400, description="Port of the agent's Prometheus /metrics (0: off).")
    metrics_host: str = setting("0.0.0.0", description="Address the agent's /metrics binds (127.0.0.1: this host only).")
    spool_dir: str | None = setting(
        None, description="Agent store-and-forward spool directory; unset: <temp dir>/gpuledger-spool-<node>."
    )
    spool_max_bytes: int = setting(
        256 * 2**20, gt=0, description="Spool bound in bytes; when full the oldest records are dropped (and counted)."
    )
    pod_resources_socket: str = setting(
        "/var/lib/kubelet/pod-resources/kubelet.sock",
        description="Kubelet PodResources v1 gRPC socket: which container holds which GPU.",
    )
    kubelet_insecure_tls: bool = setting(
        False, description="Skip verifying the kubelet's serving certificate (self-signed without serverTLSBootstrap)."
    )
    dcgm_exporter_url: str | None = setting(
        None, description="A local dcgm-exporter's /metrics to read MIG GR_ENGINE_ACTIVE from (optional)."
    )
    proc_root: str = setting("/proc", description="Host /proc as the agent sees it (DaemonSet: /host/proc, mounted read-only).")
    kubelet_pods_url: str | None = setting(
        None, description="Kubelet pods endpoint for pod labels and container ids (e.g. https://$NODE_IP:10250/pods)."
    )
    ingest_batch_max: int = setting(
        5000, description="Ingest: most records per flush (one DuckDB transaction, then one offset commit)."
    )
    ingest_linger_s: float = setting(1.0, description="Ingest: seconds to keep polling after a flush's first record to fill it.")
    lake_catalog_uri: str | None = setting(
        None, description="Lake store: the Iceberg catalog ingest appends to instead of the DuckDB file, and "
        "`attribute --lake` reads raw from and books rollups into -- "
        "sqlite:////path/catalog.db, postgresql+psycopg://user:pass@host/db or a REST catalog's http(s):// URL "
        "(docs/lake.md; needs the `lake` extra).")
    lake_warehouse: str | None = setting(
        None, description="Lake store: where the tables' files go: a directory or s3://bucket/prefix (with --lake).")
    lake_s3_endpoint: str | None = setting(
        None, description="Lake store: S3-compatible endpoint (MinIO, Ceph...), e.g. http://minio:9000; unset: AWS. "
        "Credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION.")
    lake_namespace: str = setting(
        "gpuledger", pattern=r"^[A-Za-z0-9_]+$",
        description="Lake store: the Iceberg namespace of gpuledger's tables (a REST catalog may admit only its own, "
        "e.g. lakana's bronze/silver/gold).")
    lake_unavailable_s: float = setting(
        60.0, ge=0, description="Lake store: seconds a worker retries (doubling pauses) a catalog or object store that "
        "does not answer before it stops with an error, committing nothing to Kafka.")
    lake_commit_interval_s: float = setting(
        10.0, gt=0, description="Lake store: seconds an ingest worker gathers records before one Iceberg commit per "
        "table (replaces --linger with --lake): data is visible to readers within about this long plus a commit.")
    lake_cache_dir: str = setting(
        "/tmp/gpuledger-lake-cache", description="Lake serving: the directory where `serve --lake` keeps its local "
        "DuckDB copy of what the API reads (disposable: an emptyDir in Kubernetes; rebuilt from the lake).")
    lake_refresh_s: float = setting(
        30.0, gt=0, description="Lake serving: seconds between a replica's checks of the lake's snapshots (unchanged: "
        "nothing read); new data is served within about this long plus one rebuild of the cache.")
    lake_raw_days: int = setting(
        2, ge=1, description="Lake serving: newest UTC days of raw tables (devices, allocations...) a replica copies "
        "for the fleet view; showback, series and exports read the rollups, all months.")
    lake_metadata_uri: str | None = setting(
        None, description="Lake store: the SQL database (SQLAlchemy URL) for tokens and closed months; unset: the "
        "catalog's own (needed with a REST catalog).")
    lake_compact_after_hours: float = setting(
        6.0, ge=0, description="Lake upkeep: `compact --lake` and `lake-maintain` rewrite a day partition's small files "
        "once the day ended this many hours ago (late data and ingest's appends then rarely race the rewrite).")
    lake_snapshot_expire_days: float = setting(
        7.0, ge=0, description="Lake upkeep: `lake-maintain` expires table snapshots older than this many days (time "
        "travel reaches back this far; the newest --keep-snapshots stay whatever their age).")
    lake_snapshots_kept: int = setting(
        10, ge=1, description="Lake upkeep: `lake-maintain` keeps at least this many newest snapshots of each table.")
    ingest_max_future_s: float = setting(
        300.0, description="Ingest: an interval ending more than this many seconds after now is quarantined (clock skew bound)."
    )
    ingest_max_age_s: float = setting(
        7 * 86400.0,
        description="Ingest: an interval starting more than this many seconds ago is quarantined "
        "(above the agent spool's reach).",
    )
    raw_retention_months: int = setting(
        2, description="Billing months of raw samples `gpuledger retention` keeps (2: the current and the previous month)."
    )
    ledger_retention_months: int = setting(
        13, description="Months of the interval-grain ledger `gpuledger retention` keeps, the current one included "
        "(13: a year of invoices can be drilled down; only closed, rolled-up months go; 0: forever)."
    )
    rollup_retention_months: int = setting(
        36, description="Months of hourly rollups (ledger_hourly) `gpuledger retention` keeps (0: forever)."
    )
    ledger_window_days: float = setting(
        7.0, ge=0.0,
        description="Days of interval-grain ledger rows `gpuledger attribute` keeps, counted back from the newest "
        "stored message; older hours are kept as hourly rollups only (the bill is made from them) and `explain` "
        "recomputes their interval rows from the raw samples while those are kept. 0: keep every interval.")
    attribute_workers: int = setting(
        1, ge=0.0, description="Processes that run the attribution kernel (1: the one reading and writing the "
        "database; 0: one per core). On 2 cores a pool was slower (the kernel is ~7 % of the job; docs/storage.md).")
    attribute_node_groups: int = setting(
        8, ge=1.0, description="`gpuledger attribute --shards`: node groups per hour; a shard is one UTC hour x the "
        "nodes whose name hashes (BLAKE2b) into one group, attributed and booked as a whole (docs/attribution.md).")
    attribute_ray_address: str | None = setting(
        None, description="`gpuledger attribute`: compute the attribution shards on this Ray cluster (ray://HEAD:10001, "
        "HEAD:6379, auto, or local to start one here); implies --shards, needs the `ray` extra. Unset: this machine.")
    api_host: str = setting("127.0.0.1", description="Address the API binds (`gpuledger serve`, and the demo's).")
    api_port: int = setting(8080, description="Port the API binds (`gpuledger serve`, and the demo's).")
    api_tls_certfile: str | None = setting(
        None, description="`serve` over HTTPS: PEM certificate (chain) file; with api_tls_keyfile. Unset: plain HTTP."
    )
    api_tls_keyfile: str | None = setting(None, description="`serve` over HTTPS: PEM private key of api_tls_certfile.")
    api_audit_dir: str | None = setting(
        None, description="`serve`: directory of the audit log of token use (one JSON-lines file per UTC day); "
        "unset: no audit log."
    )
    api_audit_retention_days: int = setting(
        90, description="`serve`: days of audit log files kept, today included (0: forever)."
    )
    default_cluster: str = setting(
        DEFAULT_CLUSTER, pattern=r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}",
        description="Attribution: the cluster of a message that names none (agents without `cluster`, v1 "
        "messages of older agents); rows attributed before clusters existed are in 'default'.",
    )
    prices_path: str | None = setting(None, description="Price book TOML; unset: the shipped default book.")
    tenancy_path: str | None = setting(None, description="Tenancy rules TOML; unset: label `team`, else namespace.")
    cloud_rates_path: str | None = setting(
        None, description="On-demand cloud rates TOML for fleet economics; unset: the shipped, dated example."
    )
    budgets_path: str | None = setting(
        None, description="Per-tenant monthly budgets TOML (`/v1/budgets`, `/metrics`, `report budgets`); unset: none."
    )
    work_units_path: str | None = setting(
        None, description="Work units TOML (PromQL per unit, imported hourly); unset: the shipped vLLM token counters."
    )
    queues_path: str | None = setting(
        None, description="Kueue TOML (resource, ClusterQueue -> tenant, LocalQueue -> ClusterQueue and tenant); "
        "unset: nvidia.com/gpu, tenant = queue name."
    )
    prometheus_url: str | None = setting(
        None, description="Prometheus base URL work units are imported from; unset: the work units file's."
    )
    node_pools_path: str | None = setting(
        None, description="Node pools TOML (node name globs -> pool) for fleet economics; unset: `unassigned`."
    )
    billing_account_id: str = setting("gpuledger", description="FOCUS BillingAccountId of the chargeback file.")
    billing_account_name: str = setting("gpuledger GPU fleet", description="FOCUS BillingAccountName.")
    provider_name: str = setting("gpuledger", description="FOCUS ProviderName, PublisherName and InvoiceIssuerName.")
    region_id: str | None = setting(None, description="FOCUS RegionId/RegionName of the fleet; unset: null.")
    charge_period: ChargePeriod = setting("month", description="Chargeback rows per `month` or per UTC `day`.")
    idle_policy: IdlePolicy = setting(
        "holder", description="Who pays for idle GPU time in the chargeback file: `holder` (allocated idle stays "
        "with the holder, unallocated on platform), `share_unallocated` (unallocated spread over the tenants by "
        "their GPU-hours, like OpenCost's shareIdle) or `platform` (tenants pay only for busy and unmeasured time)."
    )
    focus_version: FocusVersion = setting(
        "1.4", description="FOCUS version of the chargeback file: `1.4` (split cost allocation columns) or `1.2`."
    )
    close_grace_hours: float = setting(
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
    except SettingsError as exc:
        raise _invalid(exc) from None


def with_changes(settings: Settings, changes: Mapping[str, Any]) -> Settings:
    """A copy of ``settings`` with ``changes`` (command-line flags), validated like the environment's values."""
    if not changes:
        return settings
    try:
        return Settings(**{**settings.model_dump(), **changes})
    except SettingsError as exc:
        raise _invalid(exc) from None


def _invalid(exc: SettingsError) -> ConfigError:
    """Names each setting that failed, what it accepts, and where it came from."""
    names = [name for name, _ in exc.problems]
    problems = "; ".join(f"{name}: {msg}" for name, msg in exc.problems)
    where = ", ".join(f"GPULEDGER_{n.upper()}" for n in dict.fromkeys(names)) or "the GPULEDGER_* variables"
    return ConfigError(f"invalid setting {problems}",
                       hint=f"fix {where} or its command-line flag (docs/configuration.md: each setting and "
                       "what it accepts)")


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """The TOML ``text`` of a configuration file (prices, budgets, work units, queues, cloud rates, node pools)
    as a dict; invalid TOML is a :class:`ConfigError` naming ``source``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}", hint="see https://toml.io for the syntax") from None
