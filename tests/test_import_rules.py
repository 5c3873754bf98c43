"""The import rules of README.md's module map, checked on the source (no imports run).

- The bottom layer (wire, errors, config, timeutil, store, transport, split)
  imports no stage.
- A stage (agent -> ingest -> analytics -> api) imports only the bottom
  layer and stages upstream of it.
- Nothing in production imports ``gpuledger.sim`` or ``gpuledger.cli``
  except the CLI itself; the simulator's own modules import only the agent's
  backend Protocols, the error tree and the simulator (``accuracy``, the
  harness that runs the real pipeline against the truth, is the exception).
- ``duckdb``, ``pynvml`` and ``ray`` are each imported by one module only.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gpuledger"
STAGES = ["agent", "ingest", "analytics", "api"]
BOTTOM = {"wire", "errors", "config", "timeutil", "store", "transport", "split"}
SIM_MAY_IMPORT = {"gpuledger.agent.backend", "gpuledger.errors"}
SIM_HARNESSES = {"accuracy.py", "fakenvml"}  # they drive the real agent/pipeline on the simulator


def imports() -> list[tuple[Path, str]]:
    """(file, imported gpuledger module) for every import in the package."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                out += [(path, a.name) for a in node.names if a.name.startswith("gpuledger.")]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gpuledger."):
                out.append((path, node.module))
    return out


def top(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def test_a_stage_imports_only_the_bottom_layer_and_upstream_stages() -> None:
    bad = []
    for path, module in imports():
        source, target = top(path), module.split(".")[1]
        if source == target:
            continue
        if source in BOTTOM and target not in BOTTOM:
            bad.append(f"{path.relative_to(PACKAGE)} (bottom layer) imports {module}")
        if source in STAGES and target in STAGES and STAGES.index(target) > STAGES.index(source):
            bad.append(f"{path.relative_to(PACKAGE)} imports {module}, a stage downstream of it")
    assert not bad, "\n".join(bad)


def test_only_the_cli_imports_the_simulator_or_the_cli() -> None:
    bad = [f"{path.relative_to(PACKAGE)} imports {module}" for path, module in imports()
           if module.split(".")[1] in ("sim", "cli") and top(path) not in ("cli", module.split(".")[1])]
    assert not bad, "\n".join(bad)


def test_the_simulator_imports_only_the_backend_protocols_and_errors() -> None:
    bad = []
    for path, module in imports():
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] != "sim" or rel.parts[1] in SIM_HARNESSES:
            continue
        if not module.startswith("gpuledger.sim") and module not in SIM_MAY_IMPORT:
            bad.append(f"{rel} imports {module}")
    assert not bad, "\n".join(bad)


def test_each_outside_dependency_has_one_home() -> None:
    homes = {"duckdb": {"store/duck.py"}, "pynvml": {"agent/nvml.py"}, "ray": {"analytics/shard_ray.py"}}
    found: dict[str, set[str]] = {name: set() for name in homes}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            for name in names:
                if name.split(".")[0] in homes:
                    found[name.split(".")[0]].add(str(path.relative_to(PACKAGE)))
    assert found == homes
