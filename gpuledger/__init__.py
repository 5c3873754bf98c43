"""gpuledger: GPU telemetry, attribution and chargeback.

Stages (one import namespace, one top-level folder each):
``gpuledger.agent`` (agent/), ``gpuledger.ingest`` (ingest/),
``gpuledger.analytics`` (analytics/), ``gpuledger.api`` (api/).
"""

__version__ = "0.1.0"
