"""gpuledger: GPU telemetry, attribution and chargeback.

The stages of the pipeline are subpackages, in data-flow order:
``gpuledger.agent`` -> ``gpuledger.ingest`` -> ``gpuledger.analytics`` ->
``gpuledger.api``; ``gpuledger.sim`` is the simulated GPU fleet. The bottom
layer (``wire``, ``errors``, ``config``) is imported by every stage; a stage
imports only the bottom layer and stages upstream of it.
"""

__version__ = "0.1.0"
