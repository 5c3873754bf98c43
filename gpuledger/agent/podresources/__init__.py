"""Kubelet PodResources v1 over its unix socket: which container holds which device.

``api.proto`` is the v1 wire contract; ``api_pb2``/``api_pb2_grpc`` are
generated from it (``python -m gpuledger.agent.podresources.generate``) and
committed. ``client.py`` is the only caller of them in the agent.
"""

from gpuledger.agent.podresources.client import DeviceHold, PodResourcesClient, resolve_holds

__all__ = ["DeviceHold", "PodResourcesClient", "resolve_holds"]
