"""Connecting to Ray the same way from a laptop, a test and a cluster job."""

from __future__ import annotations

import atexit
import functools
import logging
import math
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from dctdiff import keep_ray_on_loopback  # the package's environment (docs/ARCHITECTURE.md, "Layers")

LOOPBACK = "127.0.0.1"
RAY_PORTS = {"ray": 10001, "": 6379}  # default ports: Ray Client (ray://HOST), the GCS (HOST)
ADDRESS_TIMEOUT_S = 5.0
RAY_HINT = "check `ray status` on the cluster and --address / RAY_ADDRESS, or omit --address for a local Ray"
LOST_HINT = "check the cluster with `ray status --address {gcs}`, then run the job again (train, sweep: add --resume, same --name)"
# Ray 2.60's gcs_rpc_server_reconnect_timeout_s (RAY_gcs_rpc_server_reconnect_timeout_s): a driver whose GCS
# has not answered for that long is ended by Ray's C++ client (exit 1, its own log line, no Python exception)
RAY_RECONNECT_ENV, RAY_RECONNECT_DEFAULT_S = "RAY_gcs_rpc_server_reconnect_timeout_s", 60.0
PROBE_PERIOD_S = 2.0
# Ray 2.60 gives a local dashboard RAY_DASHBOARD_STARTUP_TIMEOUT_S (60 s) to come up; on a fresh 2-core CI
# machine the first one was still running with an empty log after 60 s, and ray.init failed
DASHBOARD_TIMEOUT_ENV, DASHBOARD_TIMEOUT_S = "RAY_DASHBOARD_STARTUP_TIMEOUT_S", 300
LOST_STATUS = 1  # the exit status of a job that lost its cluster

log = logging.getLogger(__name__)


def quiet_ray_data() -> None:
    """Ray Data logs to Ray's log folder, and to the console only from WARNING up (ray_data_logging.yaml);
    the driver's environment reaches the local Ray's workers. A RAY_DATA_LOGGING_CONFIG already set wins.

    Ray Data reads the variable when it is imported; a job that imported it earlier (``ray.tune`` does,
    in the sweep job) gets the configuration applied again here, or its driver prints Ray Data's
    progress lines every few seconds."""
    if "RAY_DATA_LOGGING_CONFIG" in os.environ:
        return
    os.environ["RAY_DATA_LOGGING_CONFIG"] = str(Path(__file__).with_name("ray_data_logging.yaml"))
    if "ray.data" in sys.modules:
        from ray.data._internal.logging import configure_logging  # Ray 2.60: no public way to re-read it

        configure_logging()


def patient_dashboard_start() -> None:
    """Give a local Ray's dashboard DASHBOARD_TIMEOUT_S to start, unless RAY_DASHBOARD_STARTUP_TIMEOUT_S is set.

    Ray reads the variable once, when it is imported, and its ``start_api_server`` reads the module
    constant at each start; a dashboard that crashes still fails at once (Ray polls its exit code)."""
    if DASHBOARD_TIMEOUT_ENV in os.environ:
        return
    from ray._private import ray_constants  # Ray 2.60: no public setting after import

    ray_constants.RAY_DASHBOARD_STARTUP_TIMEOUT_S = max(
        ray_constants.RAY_DASHBOARD_STARTUP_TIMEOUT_S, DASHBOARD_TIMEOUT_S
    )


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def local_ray_environment(dashboard_port: int) -> dict[str, str]:
    """The environment a local Ray's processes get (docs/ARCHITECTURE.md, "Ray, MLflow and storage facts"):

    - ``RAY_BACKEND_LOG_LEVEL=fatal``: Ray's C++ core prints harmless ERROR lines to the console
      (``core_worker.cc:... E ...``, e.g. when actors exit at the end of a job); a value already set wins;
    - ``RAY_API_SERVER_ADDRESS``: this Ray's dashboard, so that Ray's state API (Ray Train's
      PlacementGroupCleaner) does not look for "the" Ray on the machine and fail with "Found multiple
      active Ray instances" when several local Rays run at once.
    """
    return {
        "RAY_BACKEND_LOG_LEVEL": os.environ.get("RAY_BACKEND_LOG_LEVEL", "fatal"),
        "RAY_API_SERVER_ADDRESS": f"http://{LOOPBACK}:{dashboard_port}",
    }


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` while the block runs and as before afterwards: the processes started
    in the block inherit them, later subprocesses (another Ray, ``ray job submit``) do not."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def init_ray(address: str | None = None, num_cpus: int | None = None, **kwargs):
    """Connect to a Ray cluster, or start a local one bound to loopback.

    ``address`` (or ``RAY_ADDRESS``, set by ``ray job submit``) connects to a running cluster; without
    it a local Ray starts on 127.0.0.1 with its dashboard on loopback, given 300 s to start (Ray Train V2
    needs the dashboard for clean-up, docs/ARCHITECTURE.md, "Ray, MLflow and storage facts") and the
    environment of :func:`local_ray_environment`. An already initialised Ray is reused.
    """
    import ray

    keep_ray_on_loopback()
    quiet_ray_data()
    if ray.is_initialized():
        return ray.get_runtime_context()
    address = address or os.environ.get("RAY_ADDRESS")
    global _connection
    _connection = None
    if address:
        check_ray_address(address)
        context = _started(f"the Ray cluster at {address}", lambda: ray.init(address=address, **kwargs))
        _connection = _Connection.of(address)
        if _connection.gcs:
            threading.Thread(target=_watch, args=(_connection,), name="dctdiff-cluster-watch", daemon=True).start()
        return context
    patient_dashboard_start()
    dashboard_port = free_loopback_port()
    with environment(local_ray_environment(dashboard_port)):
        return _started("a local Ray", lambda: ray.init(
            address="local",  # never join another cluster recorded on this machine
            num_cpus=num_cpus,
            include_dashboard=True,
            dashboard_host=LOOPBACK,
            dashboard_port=dashboard_port,
            _node_ip_address=LOOPBACK,
            **kwargs,
        ))  # fmt: skip


def _started(where: str, start: Callable[[], Any]) -> Any:
    """``start()`` (a ``ray.init``); any failure becomes one RayStartError line naming ``where`` and what to
    try, with Ray's traceback logged at DEBUG only."""
    try:
        return start()
    except Exception as error:  # Ray raises plain Exception, ConnectionError, RuntimeError, RaySystemError...
        log.debug("ray.init failed for %s", where, exc_info=True)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RayStartError(f"could not start or reach {where}: {reason}; {RAY_HINT}") from None


def check_ray_address(address: str, timeout_s: float = ADDRESS_TIMEOUT_S) -> None:
    """An explicit cluster address (``HOST[:PORT]``, ``ray://HOST[:PORT]``) accepts a TCP connection within
    ``timeout_s``: else RayStartError at once, instead of Ray's minute of retries. ``auto`` and ``local``
    are left to Ray."""
    endpoint = _endpoint(address)
    if endpoint is None:
        return
    try:
        socket.create_connection(endpoint, timeout=timeout_s).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise RayStartError(f"the Ray cluster at {address} does not answer ({reason}); {RAY_HINT}") from None


def _endpoint(address: str) -> tuple[str, int] | None:
    """(host, port) of a cluster address (``HOST[:PORT]``, ``ray://HOST[:PORT]``, default ports of
    RAY_PORTS); None for ``auto``, ``local`` and other schemes, which are left to Ray."""
    scheme, _, rest = address.rpartition("://")
    if address in ("auto", "local") or scheme not in RAY_PORTS:
        return None
    host, colon, port = rest.rstrip("/").rpartition(":")
    if not colon or not port.isdigit():
        host, port = rest.rstrip("/"), str(RAY_PORTS[scheme])
    return host.strip("[]"), int(port)


def _answers(endpoint: tuple[str, int], timeout_s: float = PROBE_PERIOD_S) -> bool:
    """Whether ``endpoint`` accepts a TCP connection within ``timeout_s``."""
    try:
        socket.create_connection(endpoint, timeout=timeout_s).close()
    except OSError:
        return False
    return True


# --- a cluster lost while a job runs -------------------------------------------------------------------


class ClusterLostError(RuntimeError):
    """The Ray cluster a job connected to (``--address``) stopped answering; the message says what to try."""


@dataclass(frozen=True)
class _Connection:
    """The cluster ``init_ray`` connected to: the address as given, and what answers for it."""

    address: str
    endpoint: tuple[str, int] | None  # the GCS (or Ray Client server) a probe connects to
    gcs: str | None  # the GCS address of a driver on a cluster node (None: Ray Client)

    @classmethod
    def of(cls, address: str) -> _Connection:
        """The connection of the driver that has just connected to ``address``."""
        import ray

        if address.startswith("ray://"):
            return cls(address, _endpoint(address), None)
        gcs = ray.get_runtime_context().gcs_address  # "auto" and RAY_ADDRESS resolved; read locally, no RPC
        return cls(address, _endpoint(gcs), gcs)

    def lost_message(self) -> str:
        """The job's one error line."""
        return (
            f"lost the connection to the Ray cluster at {self.address}: it stopped answering while the job ran; "
            + LOST_HINT.format(gcs=self.gcs or self.address)
        )


_connection: _Connection | None = None  # set by init_ray when it connects to an address
_lost_reported = threading.Event()  # the job raised its ClusterLostError: the watchdog only ends the process


def connection_lost(error: BaseException) -> bool:
    """Whether ``error``, raised in a job's driver, means that the connection to its cluster is lost: an error
    Ray raises for a lost raylet, GCS, actor or Ray Client connection (RaySystemError, LocalRayletDiedError,
    RpcError, RayActorError, ConnectionError), while the cluster ``init_ray`` connected to does not answer
    now. Never an exception of a task, actor or training worker (RayTaskError, whose class also derives
    from its cause's, Ray Train's TrainingFailedError), nor a training failure, nor any error of a job
    that started its own local Ray."""
    import ray.exceptions

    if isinstance(error, ClusterLostError):
        return True
    lost_types = (ray.exceptions.RaySystemError, ray.exceptions.LocalRayletDiedError, ray.exceptions.RpcError,
                  ray.exceptions.RayActorError, ConnectionError)  # fmt: skip
    if _connection is None or isinstance(error, ray.exceptions.RayTaskError) or not isinstance(error, lost_types):
        return False
    return _connection.endpoint is not None and not _answers(_connection.endpoint)


Job = TypeVar("Job", bound=Callable[..., Any])


def ends_on_lost_cluster(job: Job) -> Job:
    """``job`` (a job's driver function), whose errors that ``connection_lost`` classifies become one
    ClusterLostError naming the address and what to try; Ray's traceback is logged at DEBUG only. The
    process then ends at exit (``_end_process``), once the job has printed its line."""

    @functools.wraps(job)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return job(*args, **kwargs)
        except Exception as error:
            if _connection is None or not connection_lost(error):
                raise
            log.debug("the job lost its Ray cluster", exc_info=True)
            _lost_reported.set()
            atexit.register(_end_process)  # runs before Ray's own shutdown hook, registered earlier
            raise ClusterLostError(_connection.lost_message()) from None

    return guarded  # type: ignore[return-value]


def _lost_after_s() -> float:
    """How long the GCS may not answer before a job ends itself: before Ray's C++ client would end it
    (RAY_RECONNECT_ENV), leaving Ray a GCS restart of most of that time."""
    try:
        timeout = float(os.environ.get(RAY_RECONNECT_ENV, RAY_RECONNECT_DEFAULT_S))
    except ValueError:
        timeout = RAY_RECONNECT_DEFAULT_S
    return max(timeout - 10.0, timeout / 2)


def _watch(connection: _Connection) -> None:
    """A daemon thread of a driver on a cluster node: when the GCS has not answered for ``_lost_after_s``,
    Ray's driver calls wait on it until Ray's C++ client ends the process with its own line and no Python
    exception, so the job ends here first with its one error line (unless ``ends_on_lost_cluster`` raised
    it already) and LOST_STATUS. Returns once the process is no longer connected to that cluster
    (``ray.shutdown``, another ``init_ray``)."""
    import ray

    assert connection.endpoint is not None
    lost_after_s, last_answer = _lost_after_s(), time.monotonic()
    while _connection is connection and ray.is_initialized():
        if _answers(connection.endpoint):
            last_answer = time.monotonic()
        elif time.monotonic() - last_answer >= lost_after_s:
            if not _lost_reported.is_set():
                log.error("error: %s", connection.lost_message())
            _end_process()  # the main thread waits inside Ray's C++ code, which nothing else ends
        time.sleep(PROBE_PERIOD_S)


def _end_process() -> None:
    """End a job that lost its cluster with LOST_STATUS, its output flushed, skipping Ray's shutdown: that
    waits on the lost GCS until Ray's own limit, and its teardown then crashed the interpreter (exit 139)."""
    for handler in logging.getLogger("dctdiff").handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(LOST_STATUS)


# CPUs left free for Ray Data's read tasks: if workers take every CPU, reading stalls and the job
# waits forever without an error (docs/ARCHITECTURE.md, "Ray, MLflow and storage facts").
DATA_CPUS = 1.0


class ResourceError(RuntimeError):
    """The cluster cannot hold the requested workers."""


class RayStartError(ResourceError):
    """Ray did not start, or the cluster at the address did not answer; the message says what to try."""


def plan_worker_cpus(
    workers: int,
    cluster_cpus: float,
    cluster_gpus: float = 0.0,
    cpus_per_worker: float | None = None,
    gpus_per_worker: float = 0.0,
) -> float:
    """CPUs per worker (training workers or sampling actors) so that they plus Ray Data fit the cluster.

    ``cpus_per_worker=None`` takes up to one CPU each, sharing what is left after ``DATA_CPUS``.
    Raises ResourceError, saying what to change, when the request cannot fit.
    """
    if workers < 1:
        raise ResourceError(f"--workers must be >= 1, got {workers}")
    if gpus_per_worker * workers > cluster_gpus:
        raise ResourceError(
            f"{workers} workers x {gpus_per_worker:g} GPU need {workers * gpus_per_worker:g} GPUs; the cluster has "
            f"{cluster_gpus:g}. Lower --workers or --gpus-per-worker, or add GPU nodes."
        )
    cpus = cpus_per_worker if cpus_per_worker is not None else min(1.0, (cluster_cpus - DATA_CPUS) / workers)
    if cpus <= 0 or workers * cpus + DATA_CPUS > cluster_cpus + 1e-9:
        raise ResourceError(
            f"{workers} workers need {workers} x {cpus:g} CPUs plus {DATA_CPUS:g} CPU for Ray Data, but the cluster "
            f"has {cluster_cpus:g} CPUs; the job would wait forever. Lower --workers or --cpus-per-worker, or add nodes."
        )
    return cpus


def training_threads(cpus_per_worker: float, workers: int) -> int:
    """Torch threads of a training worker: its CPUs plus its share of Ray Data's reserved CPU (idle while the
    workers read the shards themselves), rounded down to whole cores. A fraction of a CPU held elsewhere
    for bookkeeping (a sweep trial's Tune actor takes 0.01, so its worker gets 0.99) does not cost a core:
    before, int(0.99 + 1) gave every 2-core sweep trial 1 thread."""
    return max(1, math.floor(cpus_per_worker + DATA_CPUS / workers + 0.05))


def plan_gpu_actors(workers: int | None, gpus_per_worker: float | None, cluster_gpus: float) -> tuple[int, float]:
    """(actors, GPUs per actor) of a sampling or feature job (docs/ARCHITECTURE.md, "Sampling and evaluation").

    ``gpus_per_worker`` None takes one GPU per actor when the cluster has GPUs, else none; an explicit 0
    runs on CPUs even on a GPU cluster. ``workers`` None takes one actor per GPU share (one on CPUs).
    """
    gpus = (1.0 if cluster_gpus >= 1 else 0.0) if gpus_per_worker is None else float(gpus_per_worker)
    if gpus < 0:
        raise ResourceError(f"--gpus-per-worker must be >= 0, got {gpus:g}")
    if workers is None:
        workers = max(1, int(cluster_gpus // gpus + 1e-9)) if gpus > 0 else 1
    return workers, gpus


def reserved_device():
    """The torch device a Ray actor or task may use: the GPU Ray reserved for it (Ray points
    ``CUDA_VISIBLE_DEVICES`` at it), else the CPU. Ray leaves ``CUDA_VISIBLE_DEVICES`` unset for an
    actor that reserved no GPU, so ``torch.cuda.is_available()`` alone would put it on GPU 0, unreserved."""
    import ray
    import torch

    return torch.device("cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu")


# --- DDP rendezvous on loopback -------------------------------------------------------------------------
# Ray Train's TorchConfig makes rank 0 host torch's TCPStore (the DDP rendezvous store) with env://, and the
# TCPStore server binds every interface (libuv: [::] dual-stack, else 0.0.0.0; MASTER_ADDR only tells the
# clients where to connect, and no torch or Ray setting changes the bind address). Without authentication.
# On a run whose workers all sit on a loopback node (the local Ray of init_ray), rank 0 instead hands the
# store a socket it bound to 127.0.0.1 (TCPStore's master_listen_fd), and gloo/NCCL use the loopback
# interface. Clusters keep Ray's rendezvous: see the README's "Security" section for the firewall rule.

_LOOPBACK_STORE = None  # rank 0's TCPStore server between its start and init_process_group


def _is_loopback(address: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _loopback_interface() -> str | None:
    """The loopback interface's name (``lo`` on Linux, ``lo0`` on macOS), or None."""
    import socket

    names = {name for _, name in socket.if_nameindex()}
    return next((name for name in ("lo", "lo0") if name in names), None)


def _start_loopback_store(world_size: int, timeout_s: int) -> int:
    """On rank 0: start the rendezvous TCPStore listening on 127.0.0.1 only; returns its port."""
    import socket
    from datetime import timedelta

    from torch.distributed import TCPStore

    global _LOOPBACK_STORE
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((LOOPBACK, 0))
        sock.listen(128)
        port = sock.getsockname()[1]
    except BaseException:
        sock.close()
        raise
    _LOOPBACK_STORE = TCPStore(
        LOOPBACK, port, world_size, True, timedelta(seconds=timeout_s),
        wait_for_workers=False, master_listen_fd=sock.detach(),  # the store owns the socket from here
    )  # fmt: skip
    return port


def _setup_loopback_process_group(backend: str, world_rank: int, world_size: int, port: int, timeout_s: int):
    """On every worker: join the process group through the loopback store of ``_start_loopback_store``."""
    from datetime import timedelta

    import torch.distributed as dist

    global _LOOPBACK_STORE
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = LOOPBACK, str(port)  # for code that reads them
    interface = _loopback_interface()
    if interface:  # gloo's and NCCL's own listening sockets on loopback too (a user's setting wins)
        os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", interface)
    if backend == "nccl" and "TORCH_NCCL_BLOCKING_WAIT" not in os.environ:
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")  # as Ray's own set-up does
    timeout = timedelta(seconds=timeout_s)
    if world_rank == 0:
        store, _LOOPBACK_STORE = _LOOPBACK_STORE, None  # the process group keeps it alive from here
    else:
        store = dist.TCPStore(LOOPBACK, port, world_size, False, timeout)
    dist.init_process_group(backend=backend, store=store, rank=world_rank, world_size=world_size, timeout=timeout)


def torch_config(backend: str | None = None, timeout_s: int = 1800):
    """The ``TorchConfig`` to give a ``TorchTrainer``: like Ray's, but when every worker is on a loopback
    node (a local run) the DDP rendezvous store and gloo/NCCL listen on 127.0.0.1 only.

    ``backend`` None picks nccl for GPU workers, else gloo (as Ray does). On a cluster it is Ray's TorchConfig.
    """
    from ray.train._internal.worker_group import WorkerGroup as V1WorkerGroup
    from ray.train.torch import TorchConfig
    from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend

    class _LoopbackTorchBackend(_TorchBackend):
        def on_start(self, worker_group, backend_config):
            import ray

            ips = worker_group.execute(ray.util.get_node_ip_address)
            chosen = backend_config.backend
            if chosen is None:
                resources = worker_group.get_resources_per_worker()
                chosen = "nccl" if resources.get("GPU", 0) > 0 else None if resources.get("TPU", 0) > 0 else "gloo"
            if chosen not in ("gloo", "nccl") or not all(_is_loopback(ip) for ip in ips):
                return super().on_start(worker_group, backend_config)
            size, timeout_s = len(worker_group), backend_config.timeout_s
            port = worker_group.execute_single(0, _start_loopback_store, size, timeout_s)
            if not isinstance(worker_group, V1WorkerGroup):  # V1 sets them in on_training_start
                worker_group.execute(_set_torch_distributed_env_vars)
            setup = _setup_loopback_process_group
            ray.get(
                [worker_group.execute_single_async(r, setup, chosen, r, size, port, timeout_s) for r in range(size)]
            )

    class LoopbackTorchConfig(TorchConfig):
        @property
        def backend_cls(self):
            return _LoopbackTorchBackend

    return LoopbackTorchConfig(backend=backend, timeout_s=timeout_s)
