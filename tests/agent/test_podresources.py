"""Kubelet PodResources v1 over a real gRPC server on a unix socket, pod metadata over real HTTP,
and the NodeWorkloads source that joins them with /proc cgroups."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from fastapi import FastAPI

from gpuledger.agent.cgroup import ProcWorkloads
from gpuledger.agent.holders import NodeWorkloads, device_ids
from gpuledger.agent.kubelet import KubeletPods, parse_pod_list
from gpuledger.agent.podresources import api_pb2, api_pb2_grpc, unary
from gpuledger.agent.podresources.client import DeviceHold, PodResourcesClient, resolve_holds, split_replica
from gpuledger.agent.sampler import Sampler
from gpuledger.errors import BackendError
from gpuledger.sim.fleetsim import FleetSim
from gpuledger.sim.spec import FleetSpec, GpuSpec, NodeSpec
from tests.support.live_server import serving
from tests.support.system import need_binary

H100 = "NVIDIA H100 80GB HBM3"
CID = "a" * 64


class Kubelet(api_pb2_grpc.PodResourcesListerServicer):
    """A kubelet's PodResources service with a settable answer."""

    def __init__(self) -> None:
        self.pods: list[api_pb2.PodResources] = []
        self.allocatable: list[api_pb2.ContainerDevices] | None = []
        self.calls = 0

    def List(self, request, context):  # noqa: N802 - gRPC method name
        self.calls += 1
        return api_pb2.ListPodResourcesResponse(pod_resources=self.pods)

    def GetAllocatableResources(self, request, context):  # noqa: N802
        if self.allocatable is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "feature gate KubeletPodResourcesGetAllocatable disabled")
        return api_pb2.AllocatableResourcesResponse(devices=self.allocatable)


@pytest.fixture
def kubelet(tmp_path: Path) -> Iterator[tuple[Kubelet, str]]:
    service = Kubelet()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    api_pb2_grpc.add_PodResourcesListerServicer_to_server(service, server)
    sock = str(tmp_path / "kubelet.sock")
    server.add_insecure_port(f"unix://{sock}")
    server.start()
    try:
        yield service, sock
    finally:
        server.stop(None)


def pod(ns: str, name: str, container: str, resource: str, *ids: str) -> api_pb2.PodResources:
    dev = api_pb2.ContainerDevices(resource_name=resource, device_ids=list(ids),
                                   topology=api_pb2.TopologyInfo(nodes=[api_pb2.NUMANode(ID=0)]))
    return api_pb2.PodResources(name=name, namespace=ns, containers=[
        api_pb2.ContainerResources(name=container, devices=[dev], cpu_ids=[2, 3])])


def sim_node():
    spec = NodeSpec("n", (GpuSpec(H100), GpuSpec(H100), GpuSpec(H100, mig_profiles=("3g.40gb", "1g.10gb"))))
    return FleetSim(FleetSpec((spec,)), seed=2).nodes[0]


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    """api_pb2.py is generated from api.proto (python -m gpuledger.agent.podresources.generate)."""
    from google.protobuf import descriptor_pb2

    from gpuledger.agent.podresources import generate

    out = tmp_path / "podresources.desc"
    generate.protoc(f"--descriptor_set_out={out}")
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    for message in compiled.message_type:  # protoc's descriptor set adds json names; gencode leaves them out
        for f in message.field:
            f.ClearField("json_name")
    committed = descriptor_pb2.FileDescriptorProto()
    api_pb2.DESCRIPTOR.CopyToProto(committed)
    assert committed == compiled


def test_the_wire_contract_is_kubelets_v1() -> None:
    """Package, service and field numbers are the published API's (what a real kubelet speaks)."""
    d = api_pb2.DESCRIPTOR
    assert d.package == "v1" and d.services_by_name["PodResourcesLister"].methods_by_name["List"]
    numbers = {m: {f.name: f.number for f in d.message_types_by_name[m].fields}
               for m in ("PodResources", "ContainerResources", "ContainerDevices", "ListPodResourcesResponse")}
    assert numbers["ListPodResourcesResponse"] == {"pod_resources": 1}
    assert numbers["PodResources"] == {"name": 1, "namespace": 2, "containers": 3}
    assert numbers["ContainerResources"] == {"name": 1, "devices": 2, "cpu_ids": 3, "memory": 4,
                                             "dynamic_resources": 5}
    assert numbers["ContainerDevices"] == {"resource_name": 1, "device_ids": 2, "topology": 3}


def test_list_maps_every_nvidia_id_form_to_devices(kubelet) -> None:
    service, sock = kubelet
    node = sim_node()
    u0, u1, u2 = node.uuids
    mig0, mig1 = node.mig_uuids[2]
    service.pods = [
        pod("a", "train", "main", "nvidia.com/gpu", u0),
        pod("b", "svc", "srv", "nvidia.com/gpu", f"{u1}::0"),
        pod("c", "nb", "lab", "nvidia.com/gpu.shared", f"{u1}::3"),
        pod("d", "infer", "m", "nvidia.com/mig-3g.40gb", mig0),
        pod("e", "old", "m", "nvidia.com/mig-1g.10gb", f"MIG-{u2}/2/0"),  # R450 naming, gpu instance 2
        pod("f", "cpu", "c", "example.com/fpga", "fpga-0"),  # not ours: ignored
        pod("g", "gone", "c", "nvidia.com/gpu", "GPU-00000000-dead-beef-0000-000000000000"),
    ]
    service.allocatable = [api_pb2.ContainerDevices(resource_name="nvidia.com/gpu",
                                                    device_ids=[u0] + [f"{u1}::{n}" for n in range(4)])]
    client = PodResourcesClient(sock)
    try:
        holds = client.list()
        assert DeviceHold("b", "svc", "srv", "nvidia.com/gpu", f"{u1}::0") in holds
        resolved, unknown = resolve_holds(holds, device_ids(node), client.allocatable())
    finally:
        client.close()
    got = {(h.pod, gpu, mig, replica, share) for h, gpu, mig, replica, share in resolved}
    assert got == {("train", 0, -1, -1, 1.0), ("svc", 1, -1, 0, 0.25), ("nb", 1, -1, 3, 0.25),
                   ("infer", 2, 0, -1, 1.0), ("old", 2, 1, -1, 1.0)}
    assert [h.pod for h in unknown] == ["gone"]
    assert mig1  # the MIG device "old" names by gpu instance (2) is index 1


def test_without_get_allocatable_replicas_fall_back_to_those_seen(kubelet) -> None:
    service, sock = kubelet
    node = sim_node()
    u1 = node.uuids[1]
    service.pods = [pod("b", "svc", "srv", "nvidia.com/gpu", f"{u1}::1")]
    service.allocatable = None
    client = PodResourcesClient(sock)
    try:
        assert client.allocatable() is None
        resolved, _ = resolve_holds(client.list(), device_ids(node), None)
    finally:
        client.close()
    assert resolved[0][4] == 0.5  # replicas 0 and 1 at least: an upper bound on the share


def test_an_absent_socket_is_an_error_with_a_hint(tmp_path: Path) -> None:
    client = PodResourcesClient(str(tmp_path / "nope.sock"), timeout_s=0.5)
    with pytest.raises(BackendError) as err:
        client.list()
    assert "pod-resources" in err.value.hint


def test_split_replica() -> None:
    assert split_replica("GPU-x::12") == ("GPU-x", 12)
    assert split_replica("GPU-x") == ("GPU-x", -1)
    assert split_replica("MIG-y::0") == ("MIG-y", 0)


POD_LIST = {
    "kind": "PodList",
    "items": [
        {"metadata": {"uid": "1d2c3b4a-0000-4000-8000-00000000000a", "namespace": "a", "name": "train",
                      "labels": {"team": "vision"}},
         "status": {"containerStatuses": [{"name": "main", "containerID": f"containerd://{CID}"}]}},
        {"metadata": {"name": "broken"}},  # skipped, not fatal
        "not-a-pod",
    ],
}


def test_pod_list_parsing_is_total() -> None:
    index = parse_pod_list(POD_LIST)
    assert index.by_name[("a", "train")].labels == (("team", "vision"),)
    assert index.container_names[CID] == "main"
    assert parse_pod_list("junk").by_uid == {} and parse_pod_list({"items": 7}).by_uid == {}


def test_pod_metadata_is_cached_with_a_bounded_refresh() -> None:
    app = FastAPI()
    hits = []

    @app.get("/pods")
    def pods() -> dict:
        hits.append(1)
        return POD_LIST

    now = [0.0]
    with serving(app) as http:
        kp = KubeletPods(str(http.base_url).rstrip("/") + "/pods", min_refresh_s=30, token_path=None, ca_path=None,
                         clock=lambda: now[0])
        assert kp.by_name("a", "train").uid.startswith("1d2c")
        for _ in range(50):  # misses inside the window do not hammer the kubelet
            assert kp.by_uid("no-such-uid") is None
        assert len(hits) == 1
        now[0] = 31.0
        assert kp.by_uid("no-such-uid") is None and len(hits) == 2


def test_node_workloads_join_cgroups_podresources_and_metadata(kubelet, tmp_path: Path) -> None:
    service, sock = kubelet
    node = sim_node()
    service.pods = [pod("a", "train", "main", "nvidia.com/gpu", node.uuids[0])]
    proc = tmp_path / "proc"
    (proc / "4242").mkdir(parents=True)
    (proc / "4242" / "cgroup").write_text(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1d2c3b4a_0000_4000_8000_00000000000a"
        f".slice/cri-containerd-{CID}.scope\n")
    app = FastAPI()
    app.get("/pods")(lambda: POD_LIST)
    with serving(app) as http:
        workloads = NodeWorkloads(ProcWorkloads(proc), PodResourcesClient(sock),
                                  KubeletPods(str(http.base_url).rstrip("/") + "/pods", token_path=None, ca_path=None),
                                  lambda: device_ids(node))
        owner = workloads.owner_of(4242)
        allocs = workloads.allocations()
    assert owner.pod.name == "train" and owner.pod.namespace == "a" and owner.container == "main"
    assert owner.pod.labels == (("team", "vision"),)
    assert len(allocs) == 1 and allocs[0].pod == owner.pod and allocs[0].gpu_index == 0
    assert workloads.owner_of(99999) == owner.__class__()


def test_unreadable_podresources_is_reported_not_zero(tmp_path: Path) -> None:
    node = sim_node()
    workloads = NodeWorkloads(ProcWorkloads(tmp_path), PodResourcesClient(str(tmp_path / "no.sock"), timeout_s=0.3),
                              None, lambda: device_ids(node))

    class Backend:  # the simulated GPUs with the production workload source
        def __getattr__(self, name):
            return getattr(node, name)

    sampler = Sampler(Backend(), workloads, node="n")
    sampler.tick()
    node._clock.now_us += 10_000_000
    msg = sampler.tick()
    assert len(msg.allocations) == 0
    assert "kubelet PodResources List" in msg.extra["allocations_unavailable"]


def test_generator_runs_as_documented(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", "import gpuledger.agent.podresources.generate as g; "
                          f"g.protoc('--python_out={tmp_path}')"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "api_pb2.py").read_text().count("PodResourcesLister") >= 1


def test_owners_are_cached_per_process_and_reread_for_a_reused_pid(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "77").mkdir(parents=True)
    (proc / "77" / "cgroup").write_text("0::/slurm/uid_1/job_1/step_0\n")
    workloads = NodeWorkloads(ProcWorkloads(proc), None, None, dict)
    assert workloads.owner_of(77).slurm_job == "1"
    (proc / "77" / "cgroup").write_text("0::/slurm/uid_1/job_2/step_0\n")
    assert workloads.owner_of(77).slurm_job == "1"  # same process: not read again
    import shutil
    import time

    shutil.rmtree(proc / "77")
    time.sleep(0.01)
    (proc / "77").mkdir()  # the PID is reused by a new process
    (proc / "77" / "cgroup").write_text("0::/slurm/uid_1/job_3/step_0\n")
    assert workloads.owner_of(77).slurm_job == "3"
    shutil.rmtree(proc / "77")
    assert workloads.owner_of(77).slurm_job is None


def test_the_pods_endpoint_is_called_with_the_service_account_token(tmp_path: Path) -> None:
    from fastapi import Header, HTTPException

    app = FastAPI()

    @app.get("/pods")
    def pods(authorization: str | None = Header(default=None)) -> dict:
        if authorization != "Bearer s3cret":
            raise HTTPException(401)
        return POD_LIST

    token = tmp_path / "token"
    token.write_text("s3cret\n")
    with serving(app) as http:
        url = str(http.base_url).rstrip("/") + "/pods"
        assert KubeletPods(url, token_path=token, ca_path=None).by_name("a", "train") is not None
        anonymous = KubeletPods(url, token_path=None, ca_path=None)
        assert anonymous.by_name("a", "train") is None and anonymous.failures == 1  # 401: kept empty, logged


@pytest.mark.external
def test_kubelet_https_verifies_against_the_ca_or_is_explicitly_insecure(tmp_path: Path) -> None:
    """A real TLS server with a self-signed certificate for another host name (like a kubelet's)."""
    import http.server
    import json
    import ssl
    import threading

    openssl = need_binary("openssl", hint="needed to make a test certificate; apt-get install openssl")
    cert, key = tmp_path / "kubelet.crt", tmp_path / "kubelet.key"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=gpu-node-7", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = json.dumps(POD_LIST).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}/pods"
    try:
        assert KubeletPods(url, token_path=None, ca_path=cert).by_name("a", "train") is not None
        unverified = KubeletPods(url, token_path=None, ca_path=None)
        assert unverified.by_name("a", "train") is None and unverified.failures == 1
        insecure = KubeletPods(url, token_path=None, ca_path=None, insecure_tls=True)
        assert insecure.by_name("a", "train") is not None
    finally:
        server.shutdown()


def test_a_node_without_a_kubelet_has_no_allocations_and_no_errors(tmp_path: Path) -> None:
    node = sim_node()
    bare = NodeWorkloads.for_node(node, socket_path=str(tmp_path / "no-kubelet" / "kubelet.sock"),
                                  proc_root=str(tmp_path))
    assert bare.podresources is None and bare.allocations() == []
    mounted = NodeWorkloads.for_node(node, socket_path=str(tmp_path / "kubelet.sock"), proc_root=str(tmp_path))
    assert mounted.podresources is not None  # directory there, socket not (yet): errors are reported
    with pytest.raises(BackendError):
        mounted.podresources.timeout_s = 0.3
        mounted.allocations()


# --- the agent's own gRPC call (podresources/unary.py: h2 + a protobuf reader, not grpcio) ----------------

def test_the_reader_gets_what_protobuf_wrote_and_skips_what_it_does_not_need(kubelet) -> None:
    """Every field kind the kubelet sends (strings, packed int64 CPU ids, memory, NUMA topology, DRA
    claims) through grpcio's server: the agent keeps the devices, ids in order, unicode intact."""
    service, sock = kubelet
    many = [f"GPU-{k:08d}-ü::{k % 4}" for k in range(300)]  # > one 16 KiB HTTP/2 frame of ids
    big = pod("ns-ä", "big", "main", "nvidia.com/gpu", *many)
    big.containers[0].cpu_ids.extend([1, 2, 2**40])
    big.containers[0].memory.add(memory_type="memory", size=2**34)
    big.containers[0].dynamic_resources.add(class_name="gpu.nvidia.com", claim_name="c", claim_namespace="ns")
    service.pods = [big, api_pb2.PodResources(name="empty", namespace="ns")]
    holds = PodResourcesClient(sock).list()
    assert [h.device_id for h in holds] == many
    assert {(h.namespace, h.pod, h.container, h.resource) for h in holds} == {("ns-ä", "big", "main", "nvidia.com/gpu")}
    raw = api_pb2.ListPodResourcesResponse(pod_resources=service.pods).SerializeToString()
    assert [n for n, _, _ in unary.fields(raw)] == [1, 1]
    with pytest.raises(ValueError):
        list(unary.fields(raw[:-3]))  # truncated


def test_a_server_error_is_its_grpc_status_and_message(kubelet) -> None:
    service, sock = kubelet
    service.allocatable = None  # context.abort(UNIMPLEMENTED, ...): a trailers-only response
    with pytest.raises(unary.RpcError) as err:
        unary.call(sock, "/v1.PodResourcesLister/GetAllocatableResources")
    assert err.value.code == unary.StatusCode.UNIMPLEMENTED and "feature gate" in err.value.details
    with pytest.raises(unary.RpcError) as err:
        unary.call(sock, "/v1.PodResourcesLister/NoSuchMethod")
    assert err.value.code == unary.StatusCode.UNIMPLEMENTED


def test_a_socket_that_never_answers_times_out_as_deadline_exceeded(tmp_path: Path) -> None:
    import socket

    path = str(tmp_path / "mute.sock")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen(1)  # accepts (the kernel queues the connection) but never speaks HTTP/2
        t0 = time.monotonic()
        with pytest.raises(unary.RpcError) as err:
            unary.call(path, "/v1.PodResourcesLister/List", timeout_s=0.3)
    assert err.value.code == 4 and time.monotonic() - t0 < 5
    with pytest.raises(BackendError, match="kubelet PodResources List .*StatusCode.UNAVAILABLE"):
        PodResourcesClient(str(tmp_path / "absent.sock")).list()
