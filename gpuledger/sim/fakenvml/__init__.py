"""A fake ``libnvidia-ml.so.1`` driven by the fleet simulator, for the real nvidia-ml-py.

``fakenvml.c`` (shipped beside this module) is a small C library with the NVML
entry points ``gpuledger/agent/nvml.py`` reaches through pynvml, with nvml.h's
signatures, struct layouts and version words. Loaded where the real driver
would be (``LD_LIBRARY_PATH``, or pynvml's library handle in-process), it makes
the real pynvml code run: its ctypes structs, size-query retries, version
fields and error mapping -- what a Python-level shim of pynvml never exercises.

It answers from a *scenario*: a text snapshot of one simulated node
(``render``/``write``) that the library re-reads whenever the file changes, so
the simulator can drive a running agent in another process, one snapshot per
tick. Faults are lines too (``fail <function> <code>``, ``lost``, ``xid``), and
``build(omit=...)`` links a library without some symbols to play an older driver.

    lib = build(tmp_path)                               # tmp_path/libnvidia-ml.so.1
    write(tmp_path / "node.txt", sim.nodes[0])          # after each sim.advance()
    env = {"LD_LIBRARY_PATH": str(tmp_path), SCENARIO_ENV: str(tmp_path / "node.txt")}
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path

from gpuledger.errors import FieldError, GpuLost
from gpuledger.sim.fleetsim import SimNode

__all__ = ["CALLS_ENV", "LIBRARY_NAME", "SCENARIO_ENV", "build", "render", "write"]

SCENARIO_ENV = "GPULEDGER_FAKE_NVML_SCENARIO"  # the scenario file the library reads at nvmlInit
CALLS_ENV = "GPULEDGER_FAKE_NVML_CALLS"  # if set: "function count" lines written there at exit
LIBRARY_NAME = "libnvidia-ml.so.1"  # what pynvml dlopens on Linux

# nvmlReturn_t codes (nvml.h) for the project's FieldError reasons
_CODES = {"NotSupported": 3, "NoPermission": 4, "NotFound": 6, "GpuLost": 15}
_NVML_FI_DEV_MEMORY_TEMP = 82  # nvml.h field id
_VALUE_TYPE_UNSIGNED_INT = 1


def source() -> str:
    """The C source of the fake library."""
    return resources.files(__package__).joinpath("fakenvml.c").read_text()


def build(out_dir: Path | str, *, omit: Iterable[str] = (), compiler: str | None = None) -> Path:
    """Compile the fake into ``out_dir/libnvidia-ml.so.1``; ``omit`` names NVML symbols to leave
    unexported (an older driver without them). Raises RuntimeError when no C compiler works."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cc = compiler or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (cc) on PATH: the fake libnvidia-ml cannot be built")
    src = out / "fakenvml.c"
    src.write_text(source())
    # -Bsymbolic: calls inside the library bind to its own symbols (tests load several builds)
    cmd = [cc, "-shared", "-fPIC", "-O1", "-Wall", "-Wl,-Bsymbolic", "-o", str(out / LIBRARY_NAME), str(src),
           "-lpthread"]
    omit = sorted(set(omit))
    if omit:  # exact names beat the wildcard in a GNU ld version script: these become local
        script = out / "omit.map"
        script.write_text("{ global: *; local: " + " ".join(f"{name};" for name in omit) + " };\n")
        cmd.insert(-1, f"-Wl,--version-script={script}")
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"building the fake libnvidia-ml failed:\n{done.stderr}")
    return out / LIBRARY_NAME


def _fail(name: str, exc: Exception) -> str:
    reason = exc.reason if isinstance(exc, FieldError) else "Error"
    return f"fail {name} {_CODES.get(reason, 999)}"  # 999: NVML_ERROR_UNKNOWN


def render(node: SimNode, extra: Mapping[int, Sequence[str]] | None = None) -> str:
    """One node's NVML state now, as scenario lines. Samples are the driver's whole buffer (the
    library filters by lastSeenTimeStamp); percentages are rounded to the driver's integers.
    ``extra[i]``: lines appended to GPU ``i``'s block (faults, XIDs, overrides)."""
    extra = extra or {}
    lines = [f"driver {node.driver_version()}", f"now {node.now_us()}"]
    for i in range(node.device_count()):
        lines.append(f"gpu {i}")
        lines.append(f"uuid {node.uuids[i]}")
        try:
            lines += _gpu_lines(node, i)
        except GpuLost:
            lines.append("lost")
        lines += extra.get(i, ())
    return "\n".join(lines) + "\n"


def _gpu_lines(node: SimNode, i: int) -> list[str]:
    g = node.gpus[i]
    mem = node.memory_info(i)
    out = [
        f"name {node.name(i)}", f"pci {node.pci_bus_id(i)}",
        f"mem {mem.total} {mem.reserved or 0} {mem.free} {mem.used}",
        f"energy {node.total_energy_mj(i)}", f"power {node.power_mw(i)}", f"temp {node.temperature_c(i)}",
        f"clocks {node.sm_clock_mhz(i)} {node.mem_clock_mhz(i)}", f"max_slices {g.model.mig_slices}",
    ]
    for p in node.compute_processes(i):
        out.append(f"proc {p.pid} {-1 if p.used_memory_bytes is None else p.used_memory_bytes}")
        if p.kind == 2:
            out.append(f"mps {p.pid} {p.used_memory_bytes or 0}")
    migs = node.mig_devices(i)
    if migs:  # MIG mode: no device or per-process utilization on the parent (nvml.h notes)
        out += ["mig_mode 1 1", f"max_mig {g.model.mig_slices}", "fail nvmlDeviceGetSamples 3",
                "fail nvmlDeviceGetProcessUtilization 3", "fail nvmlDeviceGetProcessesUtilizationInfo 3"]
    else:
        out.append("mig_mode 0 0")
        util = node.utilization_samples(i, 0)
        out += [f"usamp {t} {round(v)}" for t, v in zip(util.timestamp_us.tolist(), util.value.tolist())]
        ps = node.process_samples(i, 0)
        out += [f"psamp {p} {t} {round(sm)} {round(m)} 0 0" for p, t, sm, m in
                zip(ps.pid.tolist(), ps.timestamp_us.tolist(), ps.sm_util.tolist(), ps.mem_util.tolist())]
    out += _health_lines(node, i)
    name = node.name(i)
    for d in migs:
        slices = round(d.slice_fraction * g.model.mig_slices)
        gb = int(d.profile.split(".")[1].removesuffix("gb"))
        out += [f"mig {d.index}", f"uuid {d.uuid}", f"name {name} MIG {d.profile}", f"gi {d.gpu_instance_id}",
                f"ci {d.compute_instance_id}", f"attrs {slices} {gb * 1024}"]
        out += [f"proc {p.pid} {-1 if p.used_memory_bytes is None else p.used_memory_bytes}"
                for p in node.mig_compute_processes(i, d.index)]
    return out


def _health_lines(node: SimNode, i: int) -> list[str]:
    h = node.health_fields(i)
    out: list[str] = []

    def value(name: str, nvml_name: str) -> float | None:
        v = h.get(name)
        if isinstance(v, Exception):
            out.append(_fail(nvml_name, v))
            return None
        return v

    t = value("mem_temp_c", "nvmlDeviceGetFieldValues")
    if t is not None:
        out.append(f"field {_NVML_FI_DEV_MEMORY_TEMP} {_VALUE_TYPE_UNSIGNED_INT} {int(t)}")
    if (r := value("pcie_replay_total", "nvmlDeviceGetPcieReplayCounter")) is not None:
        out.append(f"pcie_replay {int(r)}")
    c = value("remapped_rows_correctable", "nvmlDeviceGetRemappedRows")
    u = value("remapped_rows_uncorrectable", "nvmlDeviceGetRemappedRows")
    if c is not None and u is not None:
        out.append(f"remapped {int(c)} {int(u)} 0 0")
    if (b := value("throttle_reasons", "nvmlDeviceGetCurrentClocksEventReasons")) is not None:
        out.append(f"clocks_event {int(b)}")
    if isinstance(mem_copy := h.get("mem_copy_util"), Exception):
        out.append(_fail("nvmlDeviceGetSamples:2", mem_copy))  # 2: NVML_MEMORY_UTILIZATION_SAMPLES
    for key, fn, line in (("enc_util", "nvmlDeviceGetEncoderUtilization", "enc"),
                          ("dec_util", "nvmlDeviceGetDecoderUtilization", "dec")):
        if (e := value(key, fn)) is not None:
            out.append(f"{line} {round(e * 100)} 167000")
    if (x := h.get("xid_last")) and not isinstance(x, Exception):
        out.append(f"xid {node.now_us()} {int(x)}")
    return out


def write(path: Path | str, node: SimNode, extra: Mapping[int, Sequence[str]] | None = None) -> None:
    """Write ``render(node, extra)`` to ``path`` atomically (a reader sees the old or the new file)."""
    write_text(path, render(node, extra))


def write_text(path: Path | str, text: str) -> None:
    """Atomically replace the scenario file with ``text`` (a new inode: the library re-reads it)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".scenario-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
