"""Regenerate ``api_pb2.py`` and ``api_pb2_grpc.py`` from ``api.proto`` (grpcio-tools).

    python -m gpuledger.agent.podresources.generate

The generated modules are committed so that the agent's image needs neither
grpcio-tools nor a build step; ``tests/agent/test_podresources.py`` compiles
``api.proto`` again and checks the committed descriptor is the same.
grpcio-tools is a test dependency only.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def protoc(*args: str) -> None:
    """Run grpc_tools' bundled protoc with ``-I`` this directory; raise on failure."""
    try:
        from grpc_tools import protoc as _protoc
    except ImportError:  # pragma: no cover - grpcio-tools is in the test extra
        raise SystemExit("error: grpcio-tools is not installed\nhint: pip install grpcio-tools") from None
    import importlib.resources

    include = str(importlib.resources.files("grpc_tools") / "_proto")
    code = _protoc.main(["grpc_tools.protoc", f"-I{HERE}", f"-I{include}", *args, str(HERE / "api.proto")])
    if code != 0:
        raise RuntimeError(f"protoc failed with exit status {code}")


def main() -> int:
    protoc(f"--python_out={HERE}", f"--grpc_python_out={HERE}")
    grpc_module = HERE / "api_pb2_grpc.py"
    text = grpc_module.read_text()
    # protoc writes a top-level import; the package is gpuledger.agent.podresources
    text = text.replace("import api_pb2 as api__pb2", "from gpuledger.agent.podresources import api_pb2 as api__pb2")
    grpc_module.write_text(text)
    print(f"wrote {HERE / 'api_pb2.py'} and {grpc_module}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
