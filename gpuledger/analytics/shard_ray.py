"""Attribution shards computed on a Ray cluster: the one module that imports ``ray`` (extra ``gpuledger[ray]``).

:class:`RayExecutor` is an :class:`gpuledger.analytics.shards.Executor`:
each shard's :func:`~gpuledger.analytics.shards.attribute_shard` runs as a
Ray task (one CPU each) on whichever node of the cluster Ray picks; the
shard's rows travel to it through Ray's object store and its rollups come
back. Reading and booking stay in the process that runs ``gpuledger
attribute``: the DuckDB file has a single writer, and Ray's workers never
open it. Results are handed back in shard order, whatever order the tasks
finish in, so the file is the same as with one process.

The address is Ray's own: ``ray://HEAD:10001`` (Ray Client, from outside the
cluster), ``HEAD:6379`` or ``auto`` (from a node of the cluster), or
``local`` (start a one-machine Ray here, mostly for trying it). A process
that already initialised Ray (a test, a notebook) is used as it is. Every
Ray node needs gpuledger and its dependencies installed, the same version
as the writer's (the project's image has them).
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from gpuledger.errors import GpuledgerError

__all__ = ["RayExecutor", "RayUnavailable"]

_I = TypeVar("_I")
_O = TypeVar("_O")


class RayUnavailable(GpuledgerError):
    """Ray is not installed, or its cluster cannot be reached."""


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable("attribution on Ray needs the `ray` package, which is not installed",
                             hint="pip install 'gpuledger[ray]' (or run without --ray: the local process pool, "
                             "--workers N)") from exc
    return ray


class RayExecutor:
    """Runs each item as a Ray task; ``in_flight`` bounds the tasks submitted at once (default: cluster CPUs + 1).

    ``keep``: leave the connection open after :meth:`map` (the attribution loop runs shards every few minutes).
    """

    def __init__(self, address: str | None = None, *, in_flight: int | None = None, keep: bool = False,
                 connect_timeout_s: float = 10.0) -> None:
        self.address, self.in_flight, self.keep, self.connect_timeout_s = address, in_flight, keep, connect_timeout_s

    def _reachable(self) -> None:
        """A TCP connect to the head first: Ray itself retries an unreachable address for minutes."""
        if self.address in (None, "local", "auto"):
            return
        host, sep, port = self.address.removeprefix("ray://").rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise RayUnavailable(f"--ray {self.address!r} is not a Ray address",
                                 hint="ray://HEAD:10001 (Ray Client), HEAD:6379 (on a node of the cluster), auto or "
                                 "local")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=self.connect_timeout_s).close()
        except OSError as exc:
            raise RayUnavailable(f"cannot reach the Ray cluster at {self.address} ({exc})",
                                 hint="is the head running (`ray status` on it) and the port open from here? "
                                 "Or run without --ray (a local pool: --shards --workers N)") from exc

    def _connect(self, ray: Any) -> bool:
        """Initialise Ray unless this process already has; True when this call did (and so shuts it down)."""
        if ray.is_initialized():
            return False
        self._reachable()
        kwargs: dict[str, Any] = {"address": self.address, "log_to_driver": False}
        if self.address in (None, "local"):
            kwargs["include_dashboard"] = False
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RayUnavailable(f"cannot connect to the Ray cluster at {self.address!r}: {exc}",
                                 hint="check the address (ray://HEAD:10001 from outside the cluster, HEAD:6379 or "
                                 "`auto` on one of its nodes; `ray status` there shows it), or run without --ray"
                                 ) from exc
        return True

    def map(self, fn: Callable[[_I], _O], items: Iterable[_I]) -> Iterator[_O]:
        ray = _ray()
        started = self._connect(ray)
        try:
            task = ray.remote(num_cpus=1)(fn)
            limit = self.in_flight or int(ray.cluster_resources().get("CPU", 1)) + 1
            flight: deque[Any] = deque()
            for item in items:
                flight.append(task.remote(item))
                while len(flight) > limit:
                    yield ray.get(flight.popleft())
            while flight:
                yield ray.get(flight.popleft())
        finally:
            if started and not self.keep:  # keep: a loop's runs share one connection
                ray.shutdown()
