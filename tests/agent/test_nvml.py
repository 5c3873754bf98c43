"""The real NVML backend's parsing and fallbacks, fed pynvml-shaped responses through a replay.

No GPU is involved: ``tests/agent/fixtures/nvml/synthetic.json`` (see its
``make_synthetic.py`` for provenance) stands in for the driver, and the code
under test is NvmlBackend itself plus the Sampler on top of it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gpuledger import wire
from gpuledger.agent.backend import Owner
from gpuledger.agent.nvml import NvmlBackend, mig_profile_name, pynvml
from gpuledger.agent.sampler import Sampler
from gpuledger.errors import FieldError, GpuLost, NotSupported
from tests.support.nvml_replay import ReplayNvml, load


class NoWorkloads:
    def owner_of(self, pid: int) -> Owner:
        return Owner()

    def allocations(self) -> list:
        return []


@pytest.fixture
def replay():
    fx = load("synthetic.json")
    now = [fx["t0_us"]]
    nv = ReplayNvml(fx, lambda: now[0])
    backend = NvmlBackend(clock_ns=lambda: now[0] * 1000, nvml=nv)
    return backend, nv, now


def run_ticks(backend, now, n: int, tick_s: int = 10) -> list[wire.Message]:
    sampler = Sampler(backend, NoWorkloads(), node="gpu-node")
    sampler.tick()
    out = []
    for _ in range(n):
        now[0] += tick_s * 1_000_000
        out.append(sampler.tick())
    return out


def test_process_samples_prefer_processes_utilization_info_then_fall_back(replay) -> None:
    backend, nv, now = replay
    now[0] += 10_000_000
    new = backend.process_samples(0, since_us=0)
    assert set(new.pid.tolist()) == {4101, 4102} and len(new.pid) == 20
    assert "gpu0:process_util_v2" in nv.calls and "gpu0:process_util_v1" not in nv.calls
    old = backend.process_samples(1, since_us=0)  # FUNCTION_NOT_FOUND -> nvmlDeviceGetProcessUtilization
    assert old.pid.tolist() == [5001] * 10 and float(old.sm_util.mean()) == 40.0
    backend.process_samples(1, since_us=0)
    assert nv.calls.count("gpu1:process_util_v2") == 1  # remembered: the new call is not retried per tick


def test_running_processes_fall_back_v3_v2_v1_and_keep_unknown_memory_unknown(replay) -> None:
    backend, nv, _ = replay
    assert [(p.pid, p.used_memory_bytes) for p in backend.compute_processes(0)] == [
        (4101, 16106127360), (4102, 8053063680)]
    procs = backend.compute_processes(1)
    assert [(p.pid, p.used_memory_bytes) for p in procs] == [(5001, None)]
    assert [c for c in nv.calls if c.startswith("gpu1:processes")] == [
        "gpu1:processes_v3", "gpu1:processes_v2", "gpu1:processes_v1"]


def test_memory_falls_back_to_v1_without_a_reserved_figure(replay) -> None:
    backend, _, _ = replay
    assert backend.memory_info(0).reserved == 603734016
    assert backend.memory_info(1).reserved is None and backend.memory_info(1).used == 4294967296


def test_health_fields_per_field_errors_and_fallbacks(replay) -> None:
    backend, _, now = replay
    now[0] += 10_000_000
    h0 = backend.health_fields(0)
    assert h0 == {"mem_copy_util": pytest.approx(0.35), "enc_util": 0.0, "dec_util": 0.03, "mem_temp_c": 70.0,
                  "pcie_replay_total": 2.0, "remapped_rows_correctable": 1.0, "remapped_rows_uncorrectable": 0.0,
                  "throttle_reasons": 0.0, "xid_last": 0.0}
    now[0] += 10_000_000  # the XID 79 event happens at 15 s
    assert backend.health_fields(0)["xid_last"] == 79.0
    assert backend.health_fields(0)["xid_last"] == 0.0  # consumed: none since
    h1 = backend.health_fields(1)
    assert h1["throttle_reasons"] == 4.0  # ClocksEventReasons missing -> ThrottleReasons
    for name in ("mem_copy_util", "enc_util", "dec_util", "mem_temp_c", "remapped_rows_correctable", "xid_last"):
        assert isinstance(h1[name], NotSupported), name
    assert h1["pcie_replay_total"] == 0.0
    with pytest.raises(GpuLost):
        backend.health_fields(2)


def test_a_sampled_node_keeps_every_good_field_and_explains_every_missing_one(replay) -> None:
    backend, _, now = replay
    m = run_ticks(backend, now, 3)[-1]
    dev = {int(r["gpu_index"]): r for r in m.devices}
    errors = {(int(e["gpu_index"]), m.string(int(e["field"])), m.string(int(e["reason"])).split(":")[0])
              for e in m.field_errors}
    # GPU 0: two time-sliced processes, integrated from the sample buffer, duty cycles recovered
    assert dev[0]["util_samples"] == 10 and dev[0]["gpu_util"] == pytest.approx(0.89)
    procs = m.processes[m.processes["gpu_index"] == 0]
    share = {int(p["pid"]): p["sm_util_sum"] / p["samples"] for p in procs}
    assert share == pytest.approx({4101: 0.60, 4102: 0.30})
    assert dev[0]["energy_delta_mj"] == 600_000 * 10 and dev[0]["xid_last"] == 0  # 79 was in tick 2
    assert dev[0]["health"] == wire.HEALTH_OK
    # GPU 1: old driver -- power missing (NaN + NotSupported), the rest kept, memory unknown per process
    assert math.isnan(dev[1]["power_w"]) and (1, "power_w", "NotSupported") in errors
    assert dev[1]["gpu_util"] == pytest.approx(0.40) and dev[1]["gpu_temp_c"] == 44
    assert math.isnan(m.processes[m.processes["gpu_index"] == 1]["used_memory_bytes"][0])
    assert (1, "mem_temp_c", "NotSupported") in errors and dev[1]["throttle_reasons"] == 4
    # GPU 2: lost -- reported as such, nothing invented
    assert dev[2]["health"] == wire.HEALTH_LOST and math.isnan(dev[2]["gpu_util"])
    assert (2, "gpu_util", "GpuLost") in errors
    wire.decode(wire.encode(m))  # and it is a valid message


def test_a_per_process_field_error_names_its_process(replay) -> None:
    backend, nv, now = replay
    nv.devices[0]["processes_v3"][1][1] = None  # NVML: usedGpuMemory not available for PID 4102
    m = wire.decode(wire.encode(run_ticks(backend, now, 2)[-1]))
    per_process = sorted((int(e["gpu_index"]), int(e["pid"]), m.string(int(e["field"])), m.string(int(e["reason"])))
                         for e in m.field_errors if e["pid"] != 0)
    assert per_process == [(0, 4102, "used_memory_bytes", "NotAvailable"),  # was no row at all: NaN unexplained
                           (1, 5001, "used_memory_bytes", "NotAvailable")]
    device_level = {m.string(int(e["field"])) for e in m.field_errors if e["pid"] == 0}
    assert "used_memory_bytes" not in device_level and "power_w" in device_level
    assert m.devices[m.devices["gpu_index"] == 0]["health"][0] == wire.HEALTH_OK  # a missing value, not a fault


def test_an_xid_event_lands_in_the_interval_it_happened_in(replay) -> None:
    backend, _, now = replay
    xids = [float(m.devices[m.devices["gpu_index"] == 0]["xid_last"][0]) for m in run_ticks(backend, now, 3)]
    assert xids == [0.0, 79.0, 0.0]


def test_unknown_nvml_errors_are_field_errors_with_the_code(replay) -> None:
    backend, nv, _ = replay
    nv.devices[0]["temp_c"] = {"error": "NO_PERMISSION"}
    with pytest.raises(FieldError) as err:
        backend.temperature_c(0)
    assert err.value.reason == "NoPermission"
    assert np.isfinite(backend.sm_clock_mhz(0))


def test_mig_devices_are_enumerated_with_profiles_ids_and_slice_fractions(replay) -> None:
    backend, nv, _ = replay
    migs = backend.mig_devices(3)
    assert [(m.index, m.profile, m.gpu_instance_id, m.compute_instance_id) for m in migs] == [
        (0, "3g.20gb", 2, 0), (2, "1g.5gb", 9, 0)]  # slot 1 is empty; the second name comes from its memory
    assert [m.slice_fraction for m in migs] == [pytest.approx(3 / 7), pytest.approx(1 / 7)]
    assert [p.pid for p in backend.mig_compute_processes(3, 2)] == [6002]
    assert backend.mig_devices(0) == [] and backend.mig_devices(1) == []  # MIG off / not supported


def test_a_mig_gpu_is_sampled_without_inventing_utilization(replay) -> None:
    backend, _, now = replay
    m = run_ticks(backend, now, 2)[-1]
    rows = m.devices[m.devices["gpu_index"] == 3]
    assert sorted(rows["mig_index"].tolist()) == [-1, 0, 2]
    assert np.isnan(rows["gpu_util"]).all() and np.isnan(rows["gr_engine_active"]).all()
    reasons = {(int(e["mig_index"]), m.string(int(e["field"]))): m.string(int(e["reason"])) for e in m.field_errors
               if e["gpu_index"] == 3}
    assert reasons[(-1, "gpu_util")].startswith("NotSupported")
    assert "dcgm-exporter-url" in reasons[(0, "gr_engine_active")]
    procs = m.processes[m.processes["gpu_index"] == 3]
    assert sorted(zip(procs["mig_index"].tolist(), procs["pid"].tolist())) == [(0, 6001), (2, 6002)]
    assert np.isnan(procs["sm_util_sum"]).all()  # no per-process evidence on MIG: NaN, not 0


def test_a_mig_device_without_a_name_is_named_by_its_share_of_the_marketed_memory(replay) -> None:
    backend, nv, _ = replay
    nv.devices[3]["mig"]["2"].update(slices=7, memory_mb=40192)  # A100 40GB (40960 MiB) 7g.40gb
    assert [m.profile for m in backend.mig_devices(3)] == ["3g.20gb", "7g.40gb"]  # was "7g.39gb"
    nv.devices[3]["memory_v2"] = {"error": "NOT_SUPPORTED"}
    nv.devices[3]["memory_v1"] = {"error": "NOT_SUPPORTED"}  # no total: the device's own GiB, rounded up
    assert [m.profile for m in backend.mig_devices(3)] == ["3g.20gb", "7g.40gb"]


# NVIDIA's names (MIG user guide). A100 40GB and H100 80GB sizes are those `nvidia-smi mig -lgip` lists
# (GiB: 4.75, 9.75, 19.62, 39.25/39.5, 79.25) and the fixture's; for the other GPUs no reported size is
# recorded here, so their names are checked for any reported size between 88 % and 100 % of the share.
@pytest.mark.parametrize(("slices", "memory_mb", "gpu_mib", "name"), [
    (1, 4864, 40960, "1g.5gb"), (2, 9984, 40960, "2g.10gb"), (3, 19968, 40960, "3g.20gb"),
    (4, 20096, 40960, "4g.20gb"), (7, 40192, 40960, "7g.40gb"), (7, 40448, 40960, "7g.40gb"),
    (1, 9984, 81920, "1g.10gb"), (1, 20096, 81920, "1g.20gb"), (3, 40448, 81920, "3g.40gb"),
    (7, 81152, 81920, "7g.80gb"), (7, 81152, None, "7g.80gb"), (7, 40192, None, "7g.40gb"),
])
def test_mig_profile_names_from_slices_and_memory(slices: int, memory_mb: int, gpu_mib: int | None,
                                                  name: str) -> None:
    assert mig_profile_name(slices, memory_mb, gpu_mib) == name


@pytest.mark.parametrize(("marketed_gb", "profiles"), [
    (24, {"1g.6gb": 2, "2g.12gb": 4, "4g.24gb": 8}),  # A30: memory in quarters
    (94, {"1g.12gb": 1, "1g.24gb": 2, "2g.24gb": 2, "3g.47gb": 4, "4g.47gb": 4, "7g.94gb": 8}),  # H100 NVL
    (141, {"1g.18gb": 1, "1g.35gb": 2, "2g.35gb": 2, "3g.71gb": 4, "4g.71gb": 4, "7g.141gb": 8}),  # H200
    (180, {"1g.23gb": 1, "1g.45gb": 2, "2g.45gb": 2, "3g.90gb": 4, "4g.90gb": 4, "7g.180gb": 8}),  # B200
])
def test_mig_profile_names_follow_the_marketed_size(marketed_gb: int, profiles: dict[str, int]) -> None:
    """Each name: (its memory eighths) x the marketed size, half up -- whatever part of the share is usable."""
    gpu_mib = marketed_gb * 1024 - 700  # a total a little under the marketed size, as GPUs report
    for name, eighths in profiles.items():
        slices = int(name.split("g.")[0])
        for usable in (0.88, 0.93, 0.97, 1.0):
            memory_mb = int(gpu_mib * eighths / 8 * usable)
            assert mig_profile_name(slices, memory_mb, gpu_mib) == name, (name, usable)


def test_field_values_are_read_by_their_type_and_an_unknown_type_is_a_field_error(replay) -> None:
    backend, nv, now = replay
    now[0] += 10_000_000
    field = nv.devices[0]["memory_temp_field"]
    field.update(type=pynvml.NVML_VALUE_TYPE_SIGNED_INT, value=-3)
    assert backend.health_fields(0)["mem_temp_c"] == -3.0  # was 4294967293.0: read as unsigned
    field.update(type=pynvml.NVML_VALUE_TYPE_DOUBLE, value=41.5)
    assert backend.health_fields(0)["mem_temp_c"] == 41.5
    field.update(type=99, value=70)  # a type this agent does not know
    err = backend.health_fields(0)["mem_temp_c"]
    assert isinstance(err, FieldError) and "value type 99" in str(err)  # was 70.0: guessed unsigned


DCGM_TEXT = """# HELP DCGM_FI_PROF_GR_ENGINE_ACTIVE Ratio of time the graphics engine is active.
# TYPE DCGM_FI_PROF_GR_ENGINE_ACTIVE gauge
DCGM_FI_PROF_GR_ENGINE_ACTIVE{gpu="3",UUID="GPU-x",device="nvidia3",GPU_I_PROFILE="3g.20gb",GPU_I_ID="2"} 0.625
DCGM_FI_PROF_GR_ENGINE_ACTIVE{gpu="0",UUID="GPU-y",device="nvidia0",modelName="NVIDIA H100",Hostname="n"} 0.9
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{gpu="0"} 90
"""


def test_mig_gr_engine_active_from_a_local_dcgm_exporter_over_http(replay) -> None:
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    from gpuledger.agent.dcgm import DcgmExporterScrape, parse_gr_engine_active
    from tests.support.live_server import serving

    assert parse_gr_engine_active(DCGM_TEXT) == {(3, 2): 0.625, (0, -1): 0.9}
    _, nv, now = replay
    app = FastAPI()
    hits = []

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> str:
        hits.append(1)
        return DCGM_TEXT

    with serving(app) as http:
        scrape = DcgmExporterScrape(str(http.base_url).rstrip("/") + "/metrics", max_age_s=60)
        backend = NvmlBackend(clock_ns=lambda: now[0] * 1000, nvml=nv, dcgm=scrape)
        m = run_ticks(backend, now, 2)[-1]
    rows = {int(r["mig_index"]): r for r in m.devices[m.devices["gpu_index"] == 3]}
    assert rows[0]["gr_engine_active"] == 0.625
    assert np.isnan(rows[2]["gr_engine_active"])  # the exporter has no series for instance 9: NotFound
    assert any(m.string(int(e["reason"])).startswith("NotFound") for e in m.field_errors
               if (e["gpu_index"], e["mig_index"]) == (3, 2))
    assert len(hits) == 1  # one scrape served both MIG devices and both ticks (max_age_s)


def test_an_unreachable_dcgm_exporter_is_not_supported_not_zero() -> None:
    from gpuledger.agent.dcgm import DcgmExporterScrape

    scrape = DcgmExporterScrape("http://127.0.0.1:9/metrics", timeout_s=0.5)
    with pytest.raises(NotSupported):
        scrape.gr_engine_active(0, 1)
