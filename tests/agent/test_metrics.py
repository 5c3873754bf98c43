"""/metrics: DCGM names and labels, honest per-pod splits, bounded cardinality, over real HTTP."""

from __future__ import annotations

import math
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpuledger import wire
from gpuledger.agent.metrics import AgentCollector, pod_shares
from gpuledger.agent.run import serve_metrics
from gpuledger.agent.sampler import Sampler
from gpuledger.sim.fleetsim import FleetSim
from gpuledger.sim.spec import FleetSpec, GpuSpec, Holding, NodeSpec, PodSpec, ProcSpec
from tests.support.system import free_port

H100 = "NVIDIA H100 80GB HBM3"


def node_spec() -> NodeSpec:
    """GPU 0 exclusive, GPU 1 time-sliced by three pods (two busy, one idle holder), GPU 2 MIG."""
    pods = [
        PodSpec("u-excl", "team-a", "train", holds=(Holding(0),), procs=(ProcSpec(0, series=3, floor=0.3),)),
        PodSpec("u-idle", "team-c", "notebook", holds=(Holding(1, share=1 / 3, replica=2),)),
        PodSpec("u-mig", "team-d", "infer", container="srv",
                holds=(Holding(2, mig=0, resource="nvidia.com/mig-3g.40gb"),), procs=(ProcSpec(2, mig=0, series=5),)),
    ]
    for k, ns in enumerate(("team-b", "team-e")):
        pods.append(PodSpec(f"u-ts{k}", ns, f"svc{k}", holds=(Holding(1, share=1 / 3, replica=k),),
                            procs=(ProcSpec(1, series=k + 1, floor=0.1 * (k + 1), scale=0.5),)))
    gpus = (GpuSpec(H100), GpuSpec(H100), GpuSpec(H100, mig_profiles=("3g.40gb", "1g.10gb")))
    return NodeSpec("node-m", gpus, tuple(pods))


def sampled(n_ticks: int = 3) -> tuple[Sampler, wire.Message]:
    sim = FleetSim(FleetSpec((node_spec(),)), seed=3)
    node = sim.nodes[0]
    sampler = Sampler(node, node, node="node-m")
    sampler.tick()
    msg = None
    for _ in range(n_ticks):
        sim.advance(10.0)
        msg = sampler.tick()
    assert msg is not None
    return sampler, msg


def families(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


@pytest.fixture(scope="module")
def scraped() -> Iterator[tuple[wire.Message, str]]:
    sampler, msg = sampled()
    collector = AgentCollector("node-m")
    collector.update(msg, sampler.device_info)
    server = serve_metrics(collector, "127.0.0.1", 0)
    try:
        resp = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10)
        assert resp.status_code == 200
        yield msg, resp.text
    finally:
        server.shutdown()


def test_dcgm_device_series_carry_dcgm_names_units_and_labels(scraped) -> None:
    msg, text = scraped
    fam = families(text)
    util = {s.labels["gpu"]: s for s in fam["DCGM_FI_DEV_GPU_UTIL"]}
    whole = msg.devices[msg.devices["mig_index"] == -1]
    assert set(util) == {"0", "1"}  # GPU 2 is in MIG mode: no device utilization, so no sample (not 0)
    for row in whole[:2]:
        s = util[str(row["gpu_index"])]
        assert s.value == pytest.approx(100 * row["gpu_util"])
        assert s.labels["UUID"] == msg.string(int(row["uuid"]))
        assert s.labels["modelName"] == H100 and s.labels["Hostname"] == "node-m"
        assert s.labels["device"] == f"nvidia{row['gpu_index']}" and s.labels["pci_bus_id"].endswith(":00.0")
    fb = {s.labels["gpu"]: s.value for s in fam["DCGM_FI_DEV_FB_USED"] if s.labels["GPU_I_ID"] == ""}
    assert fb["0"] == pytest.approx(whole[0]["fb_used_bytes"] / 2**20)
    # Counters keep dcgm-exporter's exact names (no _total suffix added).
    assert "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION untyped" in text
    assert "# TYPE gpuledger_pod_gpu_busy_seconds_total counter" in text
    energy = {s.labels["gpu"]: s.value for s in fam["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"]}
    assert energy["0"] == whole[0]["energy_total_mj"]
    for name in ("DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_MEMORY_TEMP", "DCGM_FI_DEV_SM_CLOCK",
                 "DCGM_FI_DEV_MEM_CLOCK", "DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "DCGM_FI_DEV_XID_ERRORS",
                 "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
                 "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_FB_RESERVED"):
        assert {s.labels["gpu"] for s in fam[name]} >= {"0", "1", "2"}, name


def test_pod_labels_only_where_one_container_holds_the_device(scraped) -> None:
    _, text = scraped
    util = {s.labels["gpu"]: s.labels for s in families(text)["DCGM_FI_DEV_GPU_UTIL"]}
    assert (util["0"]["namespace"], util["0"]["pod"], util["0"]["container"]) == ("team-a", "train", "main")
    assert util["1"]["pod"] == "" and util["1"]["namespace"] == ""  # shared: not copied to every pod


def test_mig_devices_are_labelled_like_dcgm_exporter(scraped) -> None:
    msg, text = scraped
    fam = families(text)
    mig = [s for s in fam["DCGM_FI_PROF_GR_ENGINE_ACTIVE"] if s.labels["GPU_I_PROFILE"] == "3g.40gb"]
    assert len(mig) == 1
    labels = mig[0].labels
    parent = msg.devices[(msg.devices["gpu_index"] == 2) & (msg.devices["mig_index"] == -1)][0]
    assert labels["UUID"] == msg.string(int(parent["uuid"]))  # the parent's UUID, as dcgm-exporter
    assert labels["GPU_I_ID"] == "1" and labels["pod"] == "infer" and labels["container"] == "srv"
    assert 0 <= mig[0].value <= 1


def test_missing_fields_are_absent_and_explained(scraped) -> None:
    _, text = scraped
    fam = families(text)
    assert "DCGM_FI_DEV_MEM_COPY_UTIL" not in {s.name for samples in fam.values() for s in samples}
    errors = {(s.labels["gpu"], s.labels["field"], s.labels["reason"]) for s in fam["gpuledger_field_errors"]}
    assert ("0", "mem_copy_util", "NotSupported") in errors
    assert ("2", "gpu_util", "NotSupported") in errors  # MIG parent


def test_per_pod_series_split_a_time_sliced_gpu_without_double_counting(scraped) -> None:
    msg, text = scraped
    fam = families(text)
    busy = {s.labels["pod"]: s.value for s in fam["gpuledger_pod_gpu_busy_ratio"] if s.labels["gpu"] == "1"}
    device = next(s.value for s in fam["gpuledger_gpu_utilization_ratio"] if s.labels["gpu"] == "1")
    assert set(busy) == {"svc0", "svc1"}  # the idle holder has allocation but no busy evidence series
    assert sum(busy.values()) == pytest.approx(device, rel=1e-9)
    assert busy["svc1"] > busy["svc0"] > 0
    alloc = {s.labels["pod"]: s.value for s in fam["gpuledger_pod_gpu_allocated_ratio"] if s.labels["gpu"] == "1"}
    assert alloc == pytest.approx({"svc0": 1 / 3, "svc1": 1 / 3, "notebook": 1 / 3})
    # energy: busy part by use, idle part by holding; the three holders get all of it (no unallocated idle)
    shares = pod_shares(msg)
    gpu1 = [s for (g, m, *_), s in shares.items() if (g, m) == (1, -1)]
    delta_j = float(msg.devices[msg.devices["gpu_index"] == 1]["energy_delta_mj"][0]) / 1000
    assert sum(s.energy_j for s in gpu1) == pytest.approx(delta_j, rel=1e-9)
    assert not any("pid" in s.labels for samples in fam.values() for s in samples)


def test_counters_accumulate_and_series_are_bounded() -> None:
    sim = FleetSim(FleetSpec((node_spec(),)), seed=3)
    node = sim.nodes[0]
    sampler = Sampler(node, node, node="node-m")
    sampler.tick()
    collector = AgentCollector("node-m", max_pod_series=2, stale_ticks=1)
    busy_sum = 0.0
    for _ in range(3):
        sim.advance(10.0)
        msg = sampler.tick()
        collector.update(msg, sampler.device_info)
        shares = pod_shares(msg)
        busy_sum += 10.0 * shares[(0, -1, "team-a", "train", "main")].busy
    fam = {m.name: m.samples for m in collector.collect()}
    keys = {tuple(sorted(s.labels.items())) for s in fam["gpuledger_pod_gpu_busy_seconds"]}
    assert len(keys) == 2  # bounded
    dropped = fam["gpuledger_pod_series_dropped"][0].value
    assert dropped == 3 * (len(pod_shares(msg)) - 2)  # every refused key, every tick
    # the first two keys in device order (GPU 0 first) won the bound and kept counting
    train = [s.value for s in fam["gpuledger_pod_gpu_busy_seconds"] if s.labels["pod"] == "train"]
    assert train == [pytest.approx(busy_sum)] and busy_sum > 0


def test_stale_pod_series_expire() -> None:
    sampler, msg = sampled(1)
    collector = AgentCollector("node-m", stale_ticks=2)
    collector.update(msg, sampler.device_info)
    empty = wire.Message(**{**msg.__dict__, "processes": wire.empty("processes"),
                            "allocations": wire.empty("allocations"), "seq": msg.seq + 1})
    for _ in range(3):
        collector.update(empty, sampler.device_info)
    fam = {m.name: m.samples for m in collector.collect()}
    assert fam["gpuledger_pod_gpu_busy_seconds"] == []
    assert not math.isnan(fam["gpuledger_agent_interval_seconds"][0].value)


def test_gpuledger_agent_serves_metrics_on_the_flagged_port() -> None:
    """`gpuledger agent --backend sim --metrics-port N`: the CLI's flags reach /metrics."""
    import threading
    import time

    from gpuledger.cli import agent as agent_command
    from gpuledger.cli import parse

    port = free_port()
    args, settings = parse(
        ["agent", "--backend", "sim", "--interval", "0.2", "--ticks", "40", "--node", "cli-node",
         "--metrics-port", str(port), "--metrics-host", "127.0.0.1"])
    assert args.handler is agent_command.run
    stop = threading.Event()
    agent = threading.Thread(target=agent_command.run, args=(args, settings), kwargs={"stop": stop}, daemon=True)
    agent.start()
    try:
        text = ""
        deadline = time.monotonic() + 20
        while "DCGM_FI_DEV_GPU_TEMP" not in text and time.monotonic() < deadline:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        fam = families(text)
        assert {s.labels["Hostname"] for s in fam["DCGM_FI_DEV_GPU_TEMP"]} == {"cli-node"}
        assert len({s.labels["gpu"] for s in fam["DCGM_FI_DEV_GPU_TEMP"]}) == 8
    finally:
        stop.set()
        agent.join(10)


def test_every_exported_series_is_documented(tmp_path) -> None:
    from pathlib import Path

    from gpuledger.agent.spool import Spool, SpoolingPublisher
    from gpuledger.transport import MemoryTransport

    sampler, msg = sampled()
    pub = SpoolingPublisher(MemoryTransport, Spool(tmp_path))
    try:
        collector = AgentCollector("node-m", extra=[pub.collect])
        collector.update(msg, sampler.device_info)
        names = {s.name for fam in collector.collect() for s in fam.samples}
    finally:
        pub.close()
    root = Path(__file__).resolve().parents[2]
    guide = (root / "docs" / "agent.md").read_text()
    assert len(names) > 30
    assert not sorted(n for n in names if f"`{n}`" not in guide), "document these in docs/agent.md"
