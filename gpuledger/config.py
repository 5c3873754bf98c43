"""Every setting, declared once: name, default, help.

Read at start-up (``Settings()``), from ``GPULEDGER_*`` environment variables,
overridden by command-line flags; never at import time. ``docs/configuration.md``
documents each one, and a test checks that it does.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GPULEDGER_", extra="ignore")

    db_path: str = Field("gpuledger.duckdb", description="DuckDB file that ingest writes and the API reads.")
    kafka_bootstrap: str | None = Field(
        None, description="Kafka bootstrap servers (host:port[,host:port]); unset: the agent does not publish."
    )
    kafka_topic: str = Field("gpuledger.samples.v1", description="Topic the agents publish to and ingest reads.")
    kafka_group: str = Field("gpuledger-ingest", description="Consumer group of the ingest workers.")
    kafka_security_protocol: str | None = Field(
        None, description="Passed to the Kafka client: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_mechanism: str | None = Field(None, description="Passed to the Kafka client, e.g. SCRAM-SHA-512.")
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: str | None = Field(None, description="SASL password (never logged).")
    kafka_ssl_cafile: str | None = Field(None, description="CA bundle for broker TLS.")
    interval_s: float = Field(10.0, description="Agent tick in seconds: one message per node per tick.")
    node_name: str | None = Field(
        None, description="Node name stamped on messages (DaemonSet: NODE_NAME from the downward API)."
    )
    metrics_port: int = Field(9400, description="Port of the agent's Prometheus /metrics (0: off).")
    api_host: str = Field("127.0.0.1", description="Address `gpuledger serve` binds.")
    api_port: int = Field(8080, description="Port `gpuledger serve` binds.")
    prices_path: str | None = Field(None, description="Price book TOML; unset: the shipped default book.")
    tenancy_path: str | None = Field(None, description="Tenancy rules TOML; unset: label `team`, else namespace.")

    def kafka_client_settings(self) -> dict[str, str]:
        """TLS/SASL options passed straight through to the Kafka client."""
        pairs = {
            "security_protocol": self.kafka_security_protocol,
            "sasl_mechanism": self.kafka_sasl_mechanism,
            "sasl_plain_username": self.kafka_sasl_username,
            "sasl_plain_password": self.kafka_sasl_password,
            "ssl_cafile": self.kafka_ssl_cafile,
        }
        return {k: v for k, v in pairs.items() if v is not None}
