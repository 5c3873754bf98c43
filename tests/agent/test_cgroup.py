"""PID -> pod/container/Slurm job from /proc/<pid>/cgroup: real path shapes as data, and fuzzing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuledger.agent.cgroup import CgroupIdentity, ProcWorkloads, parse_cgroup

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "cgroup"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


def test_every_fixture_has_an_expectation() -> None:
    assert sorted(EXPECTED) == sorted(p.name for p in FIXTURES.glob("*.txt"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_path_shapes(name: str) -> None:
    assert parse_cgroup((FIXTURES / name).read_text()) == CgroupIdentity(**EXPECTED[name])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_proc_workloads_reads_the_same_from_a_proc_tree(name: str, tmp_path: Path) -> None:
    (tmp_path / "1234").mkdir()
    (tmp_path / "1234" / "cgroup").write_bytes((FIXTURES / name).read_bytes())
    owner = ProcWorkloads(tmp_path).owner_of(1234)
    want = EXPECTED[name]
    assert (owner.pod.uid if owner.pod else None) == want["pod_uid"]
    assert owner.container == want["container_id"] and owner.slurm_job == want["slurm_job"]


def test_a_vanished_process_has_no_owner(tmp_path: Path) -> None:
    assert ProcWorkloads(tmp_path).owner_of(5) == ProcWorkloads(tmp_path).owner_of(6)
    assert ProcWorkloads(tmp_path).identity(5) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    ident = parse_cgroup(data.decode("utf-8", errors="replace"))
    for value in (ident.pod_uid, ident.container_id, ident.slurm_job):
        assert value is None or (isinstance(value, str) and value)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512), st.binary(max_size=512))
def test_a_real_line_survives_garbage_around_it(before: bytes, after: bytes) -> None:
    line = (FIXTURES / "v2-systemd-containerd-burstable.txt").read_bytes()
    # garbage on other lines (a line never continues across a newline)
    text = (before.replace(b"\n", b" ") + b"\n" + line + after.replace(b"\n", b" ")).decode("utf-8", "replace")
    ident = parse_cgroup(text)
    want = EXPECTED["v2-systemd-containerd-burstable.txt"]
    # a garbage line may itself look like a pod/container; the real one is found when garbage has none
    if parse_cgroup(before.decode("utf-8", "replace")) == CgroupIdentity():
        assert ident.pod_uid == want["pod_uid"] and ident.container_id == want["container_id"]


def test_proc_workloads_survives_arbitrary_file_bytes(tmp_path: Path) -> None:
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "cgroup").write_bytes(bytes(range(256)) * 4)
    assert ProcWorkloads(tmp_path).owner_of(7).pod is None
