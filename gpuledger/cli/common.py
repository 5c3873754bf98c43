"""What every command module shares: how a command is added, flags generated from settings, progress bars.

A flag that mirrors a setting is not written by hand: :func:`setting_flags`
adds it from :class:`~gpuledger.config.Settings` (its ``dest`` is the
setting's name, its help the setting's description, its default the value
start-up read, its type and choices the setting's annotation). So one
sentence describes a setting in ``--help``, in docs/configuration.md and in
the code, and ``gpuledger.cli.main`` turns the parsed flags back into one
validated ``Settings`` (:func:`flag_values`) that the stages receive.
"""

from __future__ import annotations

import argparse
import logging
import socket
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from gpuledger.config import Settings
from gpuledger.errors import GpuledgerError

if TYPE_CHECKING:
    from gpuledger.analytics.prices import PriceBook
    from gpuledger.store.lake import LakeConfig
    from gpuledger.store.lake.meta import SqlMetadata

EPILOG = "Settings also come from GPULEDGER_* environment variables; see docs/configuration.md."

#: Flag name -> (setting, metavar). A flag name means the same setting on every command that has it
#: (except the few flags listed in :data:`NOT_SETTINGS`); metavars keep the usage lines they always had.
SETTING_FLAGS: dict[str, tuple[str, str | None]] = {
    "--db": ("db_path", "DB"),
    "--memory-limit": ("duckdb_memory_limit", "SIZE"),
    "--ledger-window-days": ("ledger_window_days", "DAYS"),
    "--workers": ("attribute_workers", "N"),
    "--node-groups": ("attribute_node_groups", "N"),
    "--ray": ("attribute_ray_address", "ADDRESS"),
    "--kafka": ("kafka_bootstrap", "BOOTSTRAP"),
    "--topic": ("kafka_topic", "TOPIC"),
    "--group": ("kafka_group", "GROUP"),
    "--interval": ("interval_s", "SECONDS"),
    "--node": ("node_name", "NODE"),
    "--cluster": ("cluster", "CLUSTER"),
    "--default-cluster": ("default_cluster", "CLUSTER"),
    "--metrics-port": ("metrics_port", "PORT"),
    "--metrics-host": ("metrics_host", "METRICS_HOST"),
    "--spool-dir": ("spool_dir", "DIR"),
    "--spool-max-bytes": ("spool_max_bytes", "BYTES"),
    "--pod-resources-socket": ("pod_resources_socket", "PATH"),
    "--kubelet-pods-url": ("kubelet_pods_url", "URL"),
    "--dcgm-exporter-url": ("dcgm_exporter_url", "URL"),
    "--batch-max": ("ingest_batch_max", "N"),
    "--linger": ("ingest_linger_s", "SECONDS"),
    "--lake": ("lake_catalog_uri", "CATALOG_URI"),
    "--warehouse": ("lake_warehouse", "PATH_OR_S3"),
    "--s3-endpoint": ("lake_s3_endpoint", "URL"),
    "--cache-dir": ("lake_cache_dir", "DIR"),
    "--lake-refresh": ("lake_refresh_s", "SECONDS"),
    "--lake-raw-days": ("lake_raw_days", "DAYS"),
    "--lake-metadata": ("lake_metadata_uri", "SQL_URI"),
    "--commit-interval": ("lake_commit_interval_s", "SECONDS"),
    "--older-than-hours": ("lake_compact_after_hours", "HOURS"),
    "--expire-days": ("lake_snapshot_expire_days", "DAYS"),
    "--keep-snapshots": ("lake_snapshots_kept", "N"),
    "--max-future": ("ingest_max_future_s", "SECONDS"),
    "--max-age": ("ingest_max_age_s", "SECONDS"),
    "--months": ("raw_retention_months", "MONTHS"),
    "--ledger-months": ("ledger_retention_months", "MONTHS"),
    "--rollup-months": ("rollup_retention_months", "MONTHS"),
    "--tenancy": ("tenancy_path", "TOML"),
    "--host": ("api_host", "HOST"),
    "--port": ("api_port", "PORT"),
    "--prices": ("prices_path", "TOML"),
    "--cloud-rates": ("cloud_rates_path", "TOML"),
    "--node-pools": ("node_pools_path", "TOML"),
    "--budgets": ("budgets_path", "TOML"),
    "--work-units": ("work_units_path", "TOML"),
    "--prometheus-url": ("prometheus_url", "URL"),
    "--queues": ("queues_path", "TOML"),
    "--idle-policy": ("idle_policy", None),
    "--close-grace-hours": ("close_grace_hours", "HOURS"),
    "--tls-certfile": ("api_tls_certfile", "PEM"),
    "--tls-keyfile": ("api_tls_keyfile", "PEM"),
    "--audit-dir": ("api_audit_dir", "DIR"),
    "--audit-retention-days": ("api_audit_retention_days", "DAYS"),
    "--charge-period": ("charge_period", None),  # choices show as {month,day}
    "--focus-version": ("focus_version", None),  # choices show as {1.4,1.2}
}

#: (command, flag) pairs spelled like a setting's flag that deliberately are not that setting, and why.
NOT_SETTINGS: dict[tuple[str, str], str] = {
    ("ingest", "--metrics-port"): "this process's own /metrics, off unless given (metrics_port is the agent's, 9400)",
    ("attribute", "--metrics-port"): "the loop's own /metrics, off unless given (metrics_port is the agent's, 9400)",
    ("serve", "--metrics-port"): "the API's own /metrics, off unless given (metrics_port is the agent's, 9400)",
    ("compact", "--db"): "optional: no --db means no database to compact, not the default database",
    ("demo", "--kafka"): "the demo uses its embedded transport unless told, whatever GPULEDGER_KAFKA_BOOTSTRAP says",
}


class Handler(Protocol):
    """What a command runs: the parsed flags and the validated settings in, the exit code out."""

    def __call__(self, args: argparse.Namespace, settings: Settings, /) -> int: ...


class SettingFlag(argparse.Action):
    """A flag that sets one setting (``self.setting``); added by :func:`setting_flags` only."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, setting: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.setting = setting

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        if option_string:  # which flags were given, not defaulted: see given()
            namespace._given_flags = {*getattr(namespace, "_given_flags", ()), option_string}


def given(args: argparse.Namespace, flag: str) -> bool:
    """Whether setting flag ``flag`` was on the command line (not its default from the environment)."""
    return flag in getattr(args, "_given_flags", ())


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions keep their line breaks; a setting's flag shows its default after the description."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        if text is None or not isinstance(action, SettingFlag):
            return text
        text = text.replace("%", "%%")  # the description is prose, not a format string
        if action.default is not None and not action.required:
            text += " (default: %(default)s)"
        return text


def add_command(sub: Any, name: str, handler: Handler, *, help: str, description: str) -> argparse.ArgumentParser:
    """A subcommand whose ``handler`` ``gpuledger.cli.main`` calls."""
    parser: argparse.ArgumentParser = sub.add_parser(name, formatter_class=HelpFormatter, epilog=EPILOG,
                                                     help=help, description=description)
    parser.set_defaults(handler=handler)
    return parser


def setting_flags(parser: argparse.ArgumentParser, settings: Settings, *flags: str,
                  required: Sequence[str] = ()) -> None:
    """Add ``flags`` (names in :data:`SETTING_FLAGS`) with default, help, type and choices from the settings.

    A flag in ``required`` must be given when the setting has no value (its default is None).
    """
    for flag in flags:
        name, metavar = SETTING_FLAGS[flag]
        kind, choices = _value_type(name)
        default = getattr(settings, name)
        parser.add_argument(flag, action=SettingFlag, setting=name, dest=name, type=kind, choices=choices,
                            default=default, metavar=metavar, required=flag in required and default is None,
                            help=Settings.model_fields[name].description)


def flag_values(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The settings the parsed command's flags carry, by setting name (for ``config.with_changes``)."""
    return {a.setting: getattr(args, a.dest) for a in setting_actions(parser, args)}


def setting_actions(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[SettingFlag]:
    """The setting flags of the subcommand ``args`` were parsed for."""
    command = subcommands(parser)[args.command]
    return [a for a in command._actions if isinstance(a, SettingFlag)]


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Name -> parser of each subcommand of ``parser`` (empty when it has none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _value_type(name: str) -> tuple[type, list[str] | None]:
    """(argparse type, choices) from the setting's annotation: int, float, str, or a Literal of strings."""
    annotation = Settings.model_fields[name].annotation
    options = [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # X | None: the flag gives an X
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
    (inner,) = options
    if typing.get_origin(inner) is Literal:
        return str, [str(v) for v in typing.get_args(inner)]
    if inner in (int, float, str):
        return inner, None
    raise TypeError(f"setting {name} ({annotation}) cannot be a flag: give it an int, float, str or Literal type")


@contextmanager
def progress(label: str, unit: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr for long work; yields ``update(done, total)``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(f"{label} ({unit})"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True)) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def price_book(path: str | None) -> PriceBook:
    """The price book at ``path``, or the shipped default book."""
    from gpuledger.analytics.prices import default_price_book, load_price_book

    return load_price_book(path) if path else default_price_book()


def existing_db(path: str) -> str:
    """``path`` if a database file is there; otherwise the error every reading command gives.

    Only ``ingest`` and ``demo`` create a database: a mistyped ``--db`` must not
    leave an empty file behind and read as success (a token created there
    would later fail as "not known").
    """
    if not Path(path).is_file():
        raise GpuledgerError(f"no database at {path}",
                             hint="pass --db (or GPULEDGER_DB_PATH) naming the file `gpuledger ingest` writes, "
                             "or run `gpuledger demo` first")
    return path


def free_to_serve(host: str, port: int) -> None:
    """Fail now, with a hint, if ``host:port`` cannot be bound (taken, or not an address of this host).

    ``serve`` and ``demo`` check before any work: the demo would otherwise run
    its whole pipeline and print a token and URLs before uvicorn's bare
    ``Errno 98``. (Another process can still take the port in between; uvicorn
    then fails as before.)
    """
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((host, port))
    except OSError as exc:
        raise GpuledgerError(f"cannot serve on {host}:{port}: {exc.strerror or exc}",
                             hint="pick a free port with --port (make demo DEMO_ARGS=\"--port 9000\"), "
                             "or stop what listens there") from None


def add_metrics_port(parser: argparse.ArgumentParser, what: str) -> None:
    """``--metrics-port``: this process's own /metrics (off unless given; the agent's is the metrics_port setting)."""
    parser.add_argument("--metrics-port", dest="own_metrics_port", type=int, default=None, metavar="PORT",
                        help=f"serve {what} Prometheus /metrics on this port (binds metrics_host; default: off)")


def metrics_registry(port: int | None, host: str) -> Any:
    """A CollectorRegistry served on ``host:port`` from a daemon thread, or None when ``port`` is None/0."""
    if not port:
        return None
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise GpuledgerError(f"cannot serve /metrics on {host}:{port}: {exc.strerror or exc}",
                             hint="pick a free port with --metrics-port, or leave it out") from None
    logging.getLogger("gpuledger.cli").info("serving /metrics on http://%s:%d/metrics", host, port)
    return registry


def lake_config(settings: Settings) -> LakeConfig | None:
    """The lake of --lake/--warehouse/--s3-endpoint, or None when neither is given."""
    if not (settings.lake_catalog_uri or settings.lake_warehouse):
        return None
    if not (settings.lake_catalog_uri and settings.lake_warehouse):
        raise GpuledgerError("the lake needs both a catalog and a warehouse",
                             hint="pass --lake CATALOG_URI and --warehouse PATH_OR_S3 (docs/lake.md)")
    try:
        from gpuledger.store.lake import LakeConfig
    except ImportError as exc:
        raise GpuledgerError(f"the lake store is not installed ({exc})",
                             hint='pip install "gpuledger[lake]" (pyiceberg, sqlalchemy, psycopg)') from exc
    return LakeConfig(settings.lake_catalog_uri, settings.lake_warehouse, s3_endpoint=settings.lake_s3_endpoint,
                      namespace=settings.lake_namespace, unavailable_s=settings.lake_unavailable_s)


def lake_metadata(settings: Settings, lake: LakeConfig) -> SqlMetadata:
    """The lake's small-metadata store: --lake-metadata, else the catalog's own SQL database."""
    from gpuledger.store.lake.meta import SqlMetadata

    return SqlMetadata(settings.lake_metadata_uri or lake.catalog_uri)
