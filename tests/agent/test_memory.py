"""What the production agent loads. Its RSS budget (issue 20: <= 60 MiB, measured by
benchmarks/bench_agent.py) leaves no room for modules the node does not use: the agent
runs here as ``gpuledger agent --backend nvml`` over the fake libnvidia-ml (built with
``cc``), and lists the modules it loaded after its ticks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpuledger.sim import fakenvml
from gpuledger.sim.fleetsim import demo_fleet

#: Never on the agent's path: other stages' engines, the API's stack, the simulator, grpcio, protobuf
#: and h2 (the kubelet's PodResources call is its own frames and protobuf reader: agent/podresources/unary.py).
NEVER = ("pydantic", "pydantic_settings", "polars", "duckdb", "pyarrow", "numba", "fastapi", "uvicorn",
         "gpuledger.sim", "gpuledger.analytics", "gpuledger.store", "gpuledger.ingest", "gpuledger.api",
         "grpc", "google.protobuf", "gpuledger.agent.podresources.api_pb2", "h2")
#: Only when used: the HTTP/2 codecs (a kubelet socket), Kafka (--kafka).
WHEN_USED = ("hpack", "hyperframe", "kafka")


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    if not (os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler (cc) to build the fake libnvidia-ml")
    root = tmp_path_factory.mktemp("fakenvml")
    lib = fakenvml.build(root / "lib")
    sim = demo_fleet(n_nodes=1, seed=5)
    sim.advance(30)
    fakenvml.write(root / "scenario.txt", sim.nodes[0])
    return {**os.environ, "LD_LIBRARY_PATH": str(lib.parent), fakenvml.SCENARIO_ENV: str(root / "scenario.txt")}


def agent_modules(env: dict[str, str], *args: str) -> set[str]:
    """Run the agent CLI in a fresh interpreter for 2 ticks; the modules loaded when it returned."""
    code = ("import sys; from gpuledger.cli import main; rc = main(sys.argv[1:]); "
            "print('MODULES', rc, ' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code, "agent", "--backend", "nvml", "--interval", "0.2", "--ticks",
                          "2", "--metrics-port", "0", "--node", "mem-node", *args],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    line = out.stdout.strip().splitlines()[-1]
    tag, rc, *names = line.split()
    assert (tag, rc) == ("MODULES", "0"), line
    return set(names)


def loaded(modules: set[str], package: str) -> bool:
    return any(m == package or m.startswith(package + ".") for m in modules)


@pytest.mark.slow
def test_an_agent_on_a_node_without_a_kubelet_loads_no_http2_and_no_other_stage(driver, tmp_path: Path) -> None:
    mods = agent_modules(driver, "--pod-resources-socket", str(tmp_path / "no-kubelet" / "kubelet.sock"))
    assert loaded(mods, "pynvml") and loaded(mods, "numpy") and loaded(mods, "gpuledger.agent.nvml")  # it ran
    assert not [p for p in NEVER + WHEN_USED if loaded(mods, p)]


@pytest.mark.slow
def test_http2_waits_for_the_kubelet_socket(driver, tmp_path: Path) -> None:
    """A pod-resources directory without its socket (kubelet restarting): each tick reports allocations
    unavailable, and the HTTP/2 codecs are not loaded until there is a socket to talk to."""
    (tmp_path / "pod-resources").mkdir()
    mods = agent_modules(driver, "--pod-resources-socket", str(tmp_path / "pod-resources" / "kubelet.sock"))
    assert loaded(mods, "gpuledger.agent.podresources.client")
    assert not [p for p in NEVER + WHEN_USED if loaded(mods, p)]


@pytest.mark.slow
def test_an_agent_reads_a_real_kubelet_socket_without_grpcio(driver, tmp_path: Path) -> None:
    """A PodResources server (grpcio's, in this process) holding GPU 0: the agent's ticks carry the
    allocation, and the agent loaded the HTTP/2 codecs, not grpcio or protobuf."""
    from concurrent import futures

    import grpc

    from gpuledger.agent.podresources import api_pb2, api_pb2_grpc

    sim = demo_fleet(n_nodes=1, seed=5)
    uuid = sim.nodes[0].uuid(0)

    class Kubelet(api_pb2_grpc.PodResourcesListerServicer):
        calls = 0

        def List(self, request, context):  # noqa: N802 - gRPC method name
            Kubelet.calls += 1
            dev = api_pb2.ContainerDevices(resource_name="nvidia.com/gpu", device_ids=[uuid])
            return api_pb2.ListPodResourcesResponse(pod_resources=[api_pb2.PodResources(
                name="train", namespace="ml", containers=[api_pb2.ContainerResources(name="main", devices=[dev])])])

        def GetAllocatableResources(self, request, context):  # noqa: N802
            return api_pb2.AllocatableResourcesResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    api_pb2_grpc.add_PodResourcesListerServicer_to_server(Kubelet(), server)
    sock = tmp_path / "kubelet.sock"
    server.add_insecure_port(f"unix://{sock}")
    server.start()
    try:
        code = ("import sys; from gpuledger.cli import main; rc = main(sys.argv[1:]); "
                "print('MODULES', rc, ' '.join(sorted(sys.modules)))")
        out = subprocess.run([sys.executable, "-c", code, "agent", "--backend", "nvml", "--interval", "0.2",
                              "--ticks", "2", "--metrics-port", "0", "--node", "mem-node",
                              "--pod-resources-socket", str(sock)],
                             capture_output=True, text=True, timeout=120, env=driver)
    finally:
        server.stop(None)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    mods = set(lines[-1].split()[2:])
    assert Kubelet.calls >= 2 and all(" 1 allocations" in line for line in lines[:-1]), lines
    assert loaded(mods, "hpack") and not [p for p in NEVER if loaded(mods, p)]


ARENAS = """
import ctypes, sys, threading
from gpuledger.agent.run import cap_malloc_arenas
capped = cap_malloc_arenas() if sys.argv[1] == "cap" else None
hold, ready, go = [], threading.Barrier(9), threading.Event()
def work():
    hold.extend(bytearray(4000) for _ in range(200))  # glibc malloc (above pymalloc's 512 bytes)
    ready.wait()
    go.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
ready.wait()
libc = ctypes.CDLL(None)
buf, size = ctypes.c_char_p(), ctypes.c_size_t()
libc.open_memstream.restype = ctypes.c_void_p
f = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
libc.malloc_info(0, ctypes.c_void_p(f))
libc.fclose(ctypes.c_void_p(f))
print(capped, ctypes.string_at(buf, size.value).decode().count("<heap nr="))
go.set()
"""


def test_the_agent_caps_mallocs_arenas_where_glibc_has_them() -> None:
    """Each thread would get its own glibc arena (the agent starts one per /metrics scrape)."""
    def heaps(mode: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", ARENAS, mode], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        capped, n = out.stdout.split()
        return capped, int(n)

    capped, n = heaps("cap")
    if capped != "True":
        pytest.skip("no glibc mallopt here")
    assert n <= 2
    assert heaps("free")[1] > 2  # the check can fail: without the cap, the threads get arenas of their own


def test_the_agent_loop_releases_freed_memory_after_start_up_and_every_upkeep_ticks() -> None:
    from gpuledger.agent.run import run_agent
    from gpuledger.cli.agent import simulated_node
    from gpuledger.config import Settings

    calls: list[int] = []
    settings = Settings(node_name="upkeep-node", interval_s=0.01, metrics_port=0)
    assert run_agent(settings, simulated_node(seed=3), ticks=7, upkeep=lambda: calls.append(1),
                     upkeep_ticks=3) == 0
    assert len(calls) == 3  # after the priming tick, then after ticks 3 and 6


def test_release_freed_memory_collects_cycles_a_tick_leaves() -> None:
    import gc

    from gpuledger.agent.run import release_freed_memory
    from gpuledger.errors import NotSupported

    def read_a_field() -> None:
        try:
            raise NotSupported("a field")
        except NotSupported as exc:
            error = exc  # noqa: F841 - kept, as a sampler keeps the field's error: frame -> error -> frame

    gc.collect()
    gc.disable()  # as if the full collection had not come yet
    try:
        for _ in range(100):
            read_a_field()
        assert release_freed_memory() >= 100
    finally:
        gc.enable()
