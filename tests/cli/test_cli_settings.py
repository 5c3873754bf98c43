"""Flags that mirror a setting are generated from Settings: one description, one default, one validation."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import typing

import pytest

from gpuledger.cli import build_parser, parse
from gpuledger.cli.common import NOT_SETTINGS, SETTING_FLAGS, SettingFlag, subcommands
from gpuledger.config import ChargePeriod, Settings
from gpuledger.errors import ConfigError

PARSER = build_parser(Settings())
COMMANDS = subcommands(PARSER)


def flags() -> list[tuple[str, argparse.Action]]:
    """(command, action) for every option of every subcommand."""
    return [(name, a) for name, p in COMMANDS.items() for a in p._actions if a.option_strings]


def test_every_setting_flag_says_what_its_setting_says() -> None:
    checked = 0
    for command, action in flags():
        if isinstance(action, SettingFlag):
            field = Settings.model_fields[action.setting]
            assert action.help == field.description, f"{command} {action.option_strings[0]}"
            assert action.dest == action.setting
            checked += 1
    assert checked >= len(SETTING_FLAGS)  # every entry is used at least once


def test_every_flag_that_sets_a_setting_is_generated() -> None:
    """By destination, and by name: a flag spelled like a setting's flag is that setting, or says why not."""
    for command, action in flags():
        name = action.option_strings[-1]
        if action.dest in Settings.model_fields:
            assert isinstance(action, SettingFlag), f"`{command} {name}` sets {action.dest}: add it with setting_flags"
        if name in SETTING_FLAGS and not isinstance(action, SettingFlag):
            assert (command, name) in NOT_SETTINGS, f"`{command} {name}` looks like {SETTING_FLAGS[name][0]}"
    used = {(c, a.option_strings[-1]) for c, a in flags()}
    assert set(NOT_SETTINGS) <= used, "NOT_SETTINGS names a flag that no longer exists"


def test_defaults_types_and_choices_come_from_the_settings() -> None:
    custom = Settings(db_path="/data/x.duckdb", metrics_port=9500, charge_period="day")
    args, settings = parse(["export", "chargeback", "--month", "2026-10"], custom)
    assert settings.db_path == "/data/x.duckdb" and settings.charge_period == "day"
    assert parse(["agent", "--backend", "sim"], custom)[1].metrics_port == 9500
    (period,) = [a for a in COMMANDS["export"]._actions if a.dest == "charge_period"]
    assert period.choices == list(typing.get_args(ChargePeriod)) == ["month", "day"]
    _, settings = parse(["agent", "--interval", "2.5", "--metrics-port", "0", "--node", "n1"])
    assert (settings.interval_s, settings.metrics_port, settings.node_name) == (2.5, 0, "n1")
    assert isinstance(settings.interval_s, float)


def test_flags_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPULEDGER_DB_PATH", "/env/db.duckdb")
    monkeypatch.setenv("GPULEDGER_KAFKA_TOPIC", "env-topic")
    _, settings = parse(["ingest", "--kafka", "b:9092", "--db", "/flag/db.duckdb"])
    assert settings.db_path == "/flag/db.duckdb" and settings.kafka_topic == "env-topic"
    assert settings.kafka_bootstrap == "b:9092"


def test_a_flag_value_the_setting_rejects_is_an_error_with_a_hint() -> None:
    with pytest.raises(ConfigError) as info:
        parse(["agent", "--spool-max-bytes", "0"])
    assert "spool_max_bytes" in str(info.value) and "GPULEDGER_SPOOL_MAX_BYTES" in info.value.hint


@pytest.mark.parametrize("args", [["agent", "--cluster", "gpu east"], ["agent", "--cluster", ""],
                                  ["attribute", "--default-cluster=.x"]])
def test_a_cluster_name_must_be_a_plain_name(args: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse(args)
    setting = args[1].split("=")[0].removeprefix("--").replace("-", "_")
    assert setting in str(info.value) and f"GPULEDGER_{setting.upper()}" in info.value.hint


def test_the_cluster_flags_set_the_agent_s_and_attribution_s_settings() -> None:
    assert parse(["agent", "--cluster", "gpu-east.eu_1"])[1].cluster == "gpu-east.eu_1"
    assert parse(["attribute", "--default-cluster", "prod"])[1].default_cluster == "prod"


def test_a_bad_environment_value_is_an_error_with_a_hint_not_a_traceback() -> None:
    out = subprocess.run([sys.executable, "-m", "gpuledger.cli", "export", "chargeback", "--month", "2026-10"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "GPULEDGER_CHARGE_PERIOD": "week"})
    assert out.returncode == 2, out.stderr
    assert "error: invalid setting charge_period" in out.stderr
    assert "hint: fix GPULEDGER_CHARGE_PERIOD" in out.stderr and "Traceback" not in out.stderr


def test_enumerations_are_checked_when_settings_are_read() -> None:
    for name, bad in [("kafka_compression", "brotli"), ("charge_period", "week"), ("kafka_security_protocol", "TLS")]:
        with pytest.raises(ValueError):
            Settings(**{name: bad})
    assert Settings(kafka_compression="none").kafka_compression == "none"


def test_the_sasl_password_is_never_shown_but_reaches_the_kafka_client_in_plain() -> None:
    settings = Settings(kafka_sasl_username="agent", kafka_sasl_password="hunter2",
                        kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512")
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.model_dump())
    client = settings.kafka_client_settings()
    assert client["sasl_plain_password"] == "hunter2" and type(client["sasl_plain_password"]) is str
    assert client == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                      "sasl_plain_username": "agent", "sasl_plain_password": "hunter2"}
    assert "sasl_plain_password" not in Settings().kafka_client_settings()


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError, match="frozen"):
        Settings().db_path = "other"


def test_environment_values_are_parsed_by_the_settings_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPULEDGER_KUBELET_INSECURE_TLS", "yes")
    monkeypatch.setenv("GPULEDGER_METRICS_PORT", " 9500 ")
    monkeypatch.setenv("gpuledger_interval_s", "2.5")  # names are case-insensitive, as before
    monkeypatch.setenv("GPULEDGER_KAFKA_SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("GPULEDGER_NOT_A_SETTING", "ignored")  # unknown variables are ignored
    s = Settings()
    assert (s.kubelet_insecure_tls, s.metrics_port, s.interval_s) == (True, 9500, 2.5)
    assert s.kafka_sasl_password is not None and s.kafka_sasl_password.get_secret_value() == "s3cret"
    assert Settings(kubelet_insecure_tls="off").kubelet_insecure_tls is False
    assert Settings(spool_max_bytes=4096.0).spool_max_bytes == 4096
    for name, bad in [("metrics_port", "94OO"), ("metrics_port", 9.5), ("interval_s", "fast"),
                      ("kubelet_insecure_tls", "maybe"), ("db_path", 3), ("spool_max_bytes", True)]:
        with pytest.raises(ValueError, match=name):
            Settings(**{name: bad})
    with pytest.raises(ValueError, match="db_pth: not a setting"):
        Settings(db_pth="x")


def test_reading_settings_loads_no_pydantic() -> None:
    """The node agent reads settings too: pydantic(-settings) would cost it ~25 MiB (docs/benchmarks.md)."""
    code = ("import sys; from gpuledger.cli import parse; parse(['agent', '--backend', 'sim']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'pydantic_settings')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_help_shows_a_setting_flags_description_and_default() -> None:
    text = " ".join(COMMANDS["retention"].format_help().split())
    description = Settings.model_fields["ledger_retention_months"].description
    assert f"--ledger-months MONTHS {description} (default: 13)" in text
