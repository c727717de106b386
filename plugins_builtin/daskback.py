"""The ``dask`` backend: every node is a task of a Dask distributed cluster.

The driver submits the whole graph without blocking: each node is one
``client.submit`` of :func:`_run_node` with its parents' futures as
arguments (unique keys named after the node), so Dask moves results between
workers and the driver fetches only the leaves (and, when a plugin listens
to ``ff_after_node``, a small record of each node). ``node[i]`` is resolved
on the worker by the node call's argument template. What runs where:

* driver: ``ff_before_run``, ``ff_prepare_node`` (its local part, in run order),
  ``ff_before_node`` (at submission), ``ff_after_node`` / ``ff_node_error`` /
  ``ff_node_restored`` (as results arrive), ``ff_after_run``;
* worker: the node call (:func:`functionfuse.nodecall.run_node_call`): node
  plugins' callables, the function through ``ff_execute_node``, the save
  through ``ff_storage_save``, retries and the time limit.

Stateful nodes are pinned, not Dask actors: the instance is the result of a
task restricted to one worker (``workers=[address], allow_other_workers=False``)
and stays in that worker's memory; each method call is a task pinned to the
same worker that takes the instance and the previous call's future, so the
calls run in order on the one instance. Actors were not chosen because their
method calls return ``ActorFuture``\\ s, which cannot be arguments of other
tasks: the graph could not be submitted without blocking, and actor calls are
outside the scheduler's graph (no keys, no failure attribution).

>>> wf = DaskWorkflow(node, workflow_name="sums")  # a LocalCluster for the run  # doctest: +SKIP
>>> wf = DaskWorkflow(node, workflow_name="sums", address="tcp://127.0.0.1:8786")  # doctest: +SKIP
>>> wf.query("^train$").set_remote_args({"resources": {"GPU": 1}, "priority": 10})  # doctest: +SKIP
>>> wf.run()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
from typing import Any, Iterator

from functionfuse.base import READ, Run, Workflow
from functionfuse.errors import InvalidOptionError, MissingExtraError, WorkerLostError
from functionfuse.frontend import Node
from functionfuse.markers import hookimpl
from functionfuse.nodecall import NodeCall, node_error_name, run_node_call

__all__ = ["DaskWorkflow", "REMOTE_ARGS", "ensure_distributed", "validate_remote_args"]

#: the ``client.submit`` options ``query(...).set_remote_args`` accepts, and what each must be
REMOTE_ARGS = {
    "resources": "a dict of resource name -> amount > 0 (worker resources, dask worker --resources)",
    "workers": "a worker address, name or host, or a list of them",
    "allow_other_workers": "a bool: workers= is a preference, not a restriction",
    "priority": "an int: higher runs first",
}


#: seconds a stateful node waits for a first worker to pin its instance to, when the cluster has none
PIN_WAIT = 60


def ensure_distributed() -> Any:
    """Import ``distributed``, or name the extra to install."""
    try:
        import distributed
    except ModuleNotFoundError as exc:
        raise MissingExtraError('the dask backend needs dask.distributed: run pip install "functionfuse[dask]"') \
            from exc
    return distributed


def validate_remote_args(remote_args: Any, where: str) -> dict:
    """Check ``remote_args`` against the ``client.submit`` options the backend passes on; raise naming ``where``."""
    if not isinstance(remote_args, dict):
        raise InvalidOptionError(f"{where}: remote args must be a dict of client.submit options, got {remote_args!r:.80}")
    for key, value in remote_args.items():
        if key not in REMOTE_ARGS:
            hint = ""
            if key == "retries":
                hint = "; retries are set with query(...).set_retries(n), on every backend"
            elif key in ("key", "pure", "actor", "actors"):
                hint = "; the dask backend sets it itself"
            raise InvalidOptionError(
                f"{where}: {key!r} is not a dask remote arg; valid ones are {', '.join(sorted(REMOTE_ARGS))}{hint}"
            )
        if key == "resources":
            ok = isinstance(value, dict) and all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                for k, v in value.items()
            )
        elif key == "workers":
            ok = isinstance(value, str) or (
                isinstance(value, (list, tuple, set)) and bool(value) and all(isinstance(w, str) for w in value)
            )
        elif key == "allow_other_workers":
            ok = isinstance(value, bool)
        else:
            ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok:
            raise InvalidOptionError(f"{where}: remote arg {key!r} must be {REMOTE_ARGS[key]}, got {value!r:.80}")
    return remote_args


# ---------------------------------------------------------------------------
# the worker side: every task returns (record or None, value)
# ---------------------------------------------------------------------------


def _where() -> tuple:
    """(Dask worker address, pid, host) of the process running the task."""
    try:
        from distributed import get_worker

        address = get_worker().address
    except (ImportError, ValueError):
        address = None
    return address, os.getpid(), socket.gethostname()


def _run_node(call: NodeCall, record: bool, count: int, *inputs: Any) -> tuple:
    """One node's task: ``inputs`` are ``count`` dependency results, then ordering-only ones."""
    values = tuple(pair[1] for pair in inputs[:count]) if count else ()
    value, start, duration = run_node_call(call, values)
    if not record:
        return None, value
    address, pid, host = _where()
    return (start, duration, address, pid, host, call.attempts), value


def _snapshot(obj: tuple, *after: Any) -> tuple:
    """A stateful node's instance as a value, after the calls it depends on: a copy, so later calls do not show."""
    import cloudpickle

    return None, cloudpickle.loads(cloudpickle.dumps(obj[1]))


def _record_of(pair: tuple) -> Any:
    return pair[0]


# ---------------------------------------------------------------------------
# the driver side
# ---------------------------------------------------------------------------


class DaskWorkflow(Workflow):
    """Run the workflow on a Dask distributed cluster: nodes as tasks, stateful nodes pinned to one worker.

    :param nodes: one or more leaf nodes.
    :param workflow_name: the name results are stored under.
    :param client: a ``distributed.Client`` to use (not closed by the run).
    :param address: a scheduler address (``"tcp://host:8786"``) to join for each run.
    :param cluster: a cluster object (``LocalCluster``, dask-jobqueue's ``SLURMCluster``, ...) to connect to.
    :param cluster_args: with none of the three: ``LocalCluster`` arguments for the cluster each run
        starts and closes (default: worker processes sized to the machine, on 127.0.0.1, no dashboard).
    :param kwargs: the :class:`functionfuse.base.Workflow` options (``plugins``, ``disable``, ...).

    >>> wf = DaskWorkflow(n3, workflow_name="ops")  # doctest: +SKIP
    >>> wf.query("^node1$").set_remote_args({"resources": {"GPU": 1}})  # doctest: +SKIP
    >>> wf.run()  # doctest: +SKIP
    """

    backend_name = "dask"
    query_keys = frozenset({"plugins", "remote_args"})

    def __init__(self, *nodes: Node, workflow_name: str = "workflow", client: Any = None, address: str | None = None,
                 cluster: Any = None, cluster_args: dict | None = None, **kwargs: Any):
        super().__init__(*nodes, workflow_name=workflow_name, **kwargs)
        where = f"DaskWorkflow({workflow_name!r})"
        given = [name for name, value in (("client", client), ("address", address), ("cluster", cluster))
                 if value is not None]
        if len(given) > 1:
            raise InvalidOptionError(f"{where}: give at most one of client, address and cluster, got {given}")
        if address is not None and not isinstance(address, str):
            raise InvalidOptionError(f"{where}: address must be a scheduler address string, got {address!r:.60}")
        if cluster_args is not None and (given or not isinstance(cluster_args, dict)):
            raise InvalidOptionError(
                f"{where}: cluster_args must be a dict of LocalCluster arguments, and only without client, "
                "address or cluster"
            )
        self.client = client
        self.address = address
        self.cluster = cluster
        self.cluster_args = dict(cluster_args or {})
        self._active: Any = None  # the client of the run in progress

    # -- the cluster ------------------------------------------------------------------
    @contextlib.contextmanager
    def connect(self) -> Iterator[Any]:
        """The client of one run: the given one, one joined to ``address``/``cluster``, or a new LocalCluster's."""
        distributed = ensure_distributed()
        if self.client is not None:
            yield self.client
            return
        if self.address is not None or self.cluster is not None:
            with distributed.Client(self.address or self.cluster, set_as_default=False) as client:
                yield client
            return
        options = {"processes": True, "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0", **self.cluster_args}
        with distributed.LocalCluster(**options) as cluster, \
                distributed.Client(cluster, set_as_default=False) as client:
            yield client

    # -- running ------------------------------------------------------------------------
    def run(self) -> Any:
        """Submit every node not already stored, wait for them, and return the leaf's value (a list for several)."""
        with self.connect() as client:
            self._active = client
            try:
                return super().run()
            finally:
                self._active = None

    def _check_run_options(self, options: dict) -> None:
        super()._check_run_options(options)
        requests = []
        for node, attrs in self.node_attrs.items():
            remote_args = attrs.get("remote_args")
            if remote_args and node.kind != "method":
                requests.append((f"node {node.name!r} of workflow {self.workflow_name!r}", remote_args))
        if requests:
            workers = _workers(self._active)
            for what, remote_args in requests:
                if workers and not _eligible(workers, remote_args):
                    raise InvalidOptionError(_refusal(what, remote_args, workers))

    def _submit_and_collect(self, run: Run) -> list:
        client = self._active
        session = _Session(self, run, client)
        try:
            session.submit_all()
            session.release()
            session.collect()
            return session.leaves()
        except BaseException:
            session.cancel()
            raise


class _Session:
    """One run on one client: the futures by node, and what is watched."""

    def __init__(self, workflow: DaskWorkflow, run: Run, client: Any):
        self.workflow = workflow
        self.run = run
        self.client = client
        self.record = run.reports_nodes
        self.suffix = run.context.run_id
        self.futures: dict = {}  # node -> future of its (record, value) pair
        self.keys: dict = {}  # task key -> node
        self.watched: list = []  # futures whose completion the driver waits for
        self.watched_nodes: dict = {}  # watched future's key -> node
        self.records: set = set()  # keys of the watched futures that are a node's run record
        self.pinned: dict = {}  # object node -> worker address
        self.last_call: dict = {}  # object node -> future of its last method call submitted
        self.restricted: dict = {}  # node -> (workers, resources) it can only run with
        self._workers: dict | None = None

    # -- submission -------------------------------------------------------------------------
    def key(self, node: Node, group: str | None = None, tail: str = "") -> str:
        """``<function>-0<run id>-<node name>``: Dask groups tasks by the part before the run id (its
        scheduling heuristics learn durations per group, as for plain ``client.submit`` keys), the
        dashboard shows the node's name, and keys are unique per run."""
        key = f"{group or node.qualname}-0{self.suffix}-{node.name}{tail}"
        self.keys[key] = node
        return key

    def submit_all(self) -> None:
        run, client = self.run, self.client
        attrs = self.workflow.node_attrs
        record = self.record
        to_compute = None
        for node, action in run.steps():
            if to_compute is None:
                to_compute = run.plan.to_compute
            if action == READ:
                call, _ = run.node_call(node, READ)
                self.futures[node] = client.submit(_run_node, call, False, 0, key=self.key(node, "ff_read"))
                if node in self.workflow.leaves:
                    self.watch(node, self.futures[node])
                continue
            kind = node.kind
            call, deps = run.node_call(node)
            run.started(node)
            node_attrs = attrs.get(node) if attrs else None
            options = dict(node_attrs.get("remote_args") or {}) if node_attrs else {}
            inputs = []
            for i, dep in enumerate(deps):
                if dep.kind == "object" and not (kind == "method" and i == 0):
                    inputs.append(self.snapshot(dep))
                else:
                    inputs.append(self.futures[dep])
            count = len(inputs)
            if kind == "object":
                address = self.pin(node, options)
                options = {**options, "workers": [address], "allow_other_workers": False}
            elif kind == "method":
                obj = node.obj
                options = dict(attrs.get(obj, {}).get("remote_args") or {}) if attrs else {}
                options.update(workers=[self.pinned[obj]], allow_other_workers=False)
                previous = self.last_call.get(obj)
                if previous is not None:
                    inputs.append(previous)  # the call chain: run after the previous call on the object
            if options.get("resources") or (options.get("workers") and not options.get("allow_other_workers")):
                self.restricted[node] = options
            try:
                future = client.submit(_run_node, call, record, count, *inputs, key=self.key(node), **options)
            except Exception as exc:  # noqa: BLE001 - arguments Dask cannot serialise, ...
                run.fail(node, exc)
            self.futures[node] = future
            if kind == "method":
                self.last_call[node.obj] = future
            if record:
                record_future = client.submit(_record_of, future, key=self.key(node, "ff_record"))
                self.records.add(record_future.key)
                self.watch(node, record_future)
            elif node in self.workflow.leaves or not _has_computed_child(node, to_compute):
                self.watch(node, future)

    def release(self) -> None:
        """Let go of the futures the driver no longer needs once everything is submitted.

        Dask keeps a result while a task that takes it is pending; without the driver's futures it
        frees each one as soon as its last consumer ran, as the local backend does.
        """
        keep = set(self.workflow.leaves) | set(self.restricted) | set(self.pinned)
        self.futures = {node: future for node, future in self.futures.items() if node in keep}

    def watch(self, node: Node, future: Any) -> None:
        self.watched.append(future)
        self.watched_nodes[future.key] = node

    def pin(self, obj: Node, options: dict) -> str:
        """The worker that will hold the stateful node ``obj``: the least loaded one its options allow."""
        workers = self.workers()
        if not workers:  # an adaptive cluster (dask-jobqueue) may have none yet: its first one will do
            with contextlib.suppress(Exception):
                self.client.wait_for_workers(1, timeout=PIN_WAIT)
            workers = self._workers = _workers(self.client)
        eligible = _eligible(workers, options) if workers else []
        if not eligible:
            raise InvalidOptionError(
                _refusal(f"stateful node {obj.name!r} of workflow {self.workflow.workflow_name!r}", options, workers)
                if workers else f"stateful node {obj.name!r} of workflow {self.workflow.workflow_name!r}: the Dask "
                f"cluster has no worker to hold it (none joined within {PIN_WAIT} s)"
            )
        load = {address: 0 for address in eligible}
        for address in self.pinned.values():
            if address in load:
                load[address] += 1
        address = min(eligible, key=lambda a: (load[a], eligible.index(a)))
        self.pinned[obj] = address
        return address

    def snapshot(self, obj: Node) -> Any:
        """A future of ``obj``'s instance as a value, after the calls submitted on it so far."""
        after = [self.last_call[obj]] if obj in self.last_call else []
        future = self.client.submit(_snapshot, self.futures[obj], *after, key=self.key(obj, "ff_snapshot", f"-{len(self.keys)}"),
                                    workers=[self.pinned[obj]], allow_other_workers=False)
        self.last_call[obj] = future  # later calls wait for the copy: it shows the state at this point
        return future

    def workers(self) -> dict:
        if self._workers is None:
            self._workers = _workers(self.client)
        return self._workers

    # -- collection ---------------------------------------------------------------------------
    def collect(self) -> None:
        """Wait for every watched future; report records as they come; raise on the first failure."""
        done: queue.SimpleQueue = queue.SimpleQueue()
        for future in self.watched:
            future.add_done_callback(done.put)
        remaining = len(self.watched)
        while remaining:
            try:
                batch = [done.get(timeout=1.0)]
            except queue.Empty:
                self.check_workers()
                continue
            while True:
                try:
                    batch.append(done.get_nowait())
                except queue.Empty:
                    break
            remaining -= len(batch)
            failed = [future for future in batch if future.status != "finished"]
            if failed:
                failed = self.without_lost_records(failed)
                if failed:
                    self.raise_first_failure(failed)
                batch = [future for future in batch if future.status == "finished"]
            if self.record:
                batch = [future for future in batch if future.key in self.records]
                for future, record in zip(batch, self.client.gather(batch)):
                    self.run.finished(self.watched_nodes[future.key], None, _info(record))

    def without_lost_records(self, failed: list) -> list:
        """``failed`` without the record tasks that died with their worker after their node had finished.

        A record task runs where its node's result is; if that worker dies before it ran, the node
        itself was computed (and saved): it is reported without its record, not as a failure.
        """
        from distributed import KilledWorker

        kept = []
        for future in failed:
            if future.key in self.records and future.status == "error":
                exc = future.exception()
                if isinstance(exc, KilledWorker) and exc.task == future.key:
                    node = self.watched_nodes[future.key]
                    if self.run.reports_nodes:
                        self.run.finished(node, None, {"worker": None, "host": None})
                    continue
            kept.append(future)
        return kept

    def check_workers(self) -> None:
        """Fail, rather than wait forever, when no live worker can run a pending restricted node."""
        if not self.restricted:
            return
        workers = _workers(self.client)
        for node, options in self.restricted.items():
            future = self.futures.get(node)
            if future is None or future.done():
                continue
            if not _eligible(workers, options):
                obj = node if node.kind == "object" else getattr(node, "obj", None)
                holder = self.pinned.get(obj)
                if holder is not None:
                    message = f"the Dask worker {holder} holding the instance of stateful node {obj.name!r} left the cluster"
                else:
                    message = f"no live Dask worker can run it any more: {_refusal('it', options, workers)}"
                self.run.fail(node, WorkerLostError(message, holder), {}, message)

    def raise_first_failure(self, failed: list) -> None:
        from distributed import KilledWorker

        run = self.run
        position = {n: i for i, n in enumerate(self.workflow.nodes)}
        candidates = []
        for future in failed:
            node = self.watched_nodes[future.key]
            if future.status == "cancelled":
                candidates.append((node, WorkerLostError(f"its Dask task {future.key!r} was cancelled"), "cancelled"))
                continue
            exc = future.exception()
            origin = node_error_name(exc)
            if origin is not None:
                node = run.find(origin, node)
            elif isinstance(exc, KilledWorker):
                node = self.keys.get(exc.task, node)
            candidates.append((node, exc, None))
        candidates.sort(key=lambda item: position.get(item[0], 0))
        node, exc, detail = candidates[0]
        info: dict = {}
        if isinstance(exc, KilledWorker):
            address = getattr(exc.last_worker, "address", str(exc.last_worker))
            info["worker"] = address
            detail = (f"the Dask worker {address} running it died (KilledWorker: {exc.allowed_failures + 1} "
                      "worker(s) died running it; distributed.scheduler.allowed-failures); nothing was returned")
        elif detail == "cancelled":
            detail = f"its Dask task was cancelled (the client or cluster went away): {exc}"
        run.fail(node, exc, info, detail or "")

    def leaves(self) -> list:
        leaves = self.workflow.leaves
        futures = []
        for leaf in leaves:
            if leaf.kind == "object":
                futures.append(self.snapshot(leaf))
            else:
                futures.append(self.futures[leaf])
        try:
            pairs = self.client.gather(futures)
        except Exception as exc:  # noqa: BLE001 - name the leaf
            for leaf, future in zip(leaves, futures):
                if future.status == "error":
                    self.run.fail(leaf, future.exception())
            # every leaf computed: one of them cannot be loaded here (e.g. its class is missing in the driver)
            for leaf, future in zip(leaves, futures):
                try:
                    future.result()
                except Exception as own:  # noqa: BLE001 - this leaf's value is the one that fails
                    self.run.fail(leaf, own, None, f"its value could not be loaded in the driver: {own!r:.200}")
            raise exc
        return [pair[1] for pair in pairs]

    def cancel(self) -> None:
        futures = [f for f in list(self.futures.values()) + self.watched if not f.done()]
        if futures:
            with contextlib.suppress(Exception):  # the cluster may be gone already
                self.client.cancel(futures)


def _has_computed_child(node: Node, to_compute: Any) -> bool:
    if to_compute is None:
        return bool(node.children)
    return any(child in to_compute for child in node.children)


def _info(record: tuple) -> dict:
    start, duration, address, pid, host, attempts = record
    info = {"start": start, "duration": duration, "worker": f"pid {pid}", "host": host, "dask_worker": address}
    if attempts is not None:
        info["attempts"] = attempts
    return info


# ---------------------------------------------------------------------------
# workers and their resources
# ---------------------------------------------------------------------------


def _workers(client: Any) -> dict:
    """``address -> {"name", "host", "resources"}`` of the cluster's live workers, fresh from the scheduler."""
    found = {}
    for address, info in client.scheduler_info(n_workers=-1).get("workers", {}).items():
        found[address] = {"name": str(info.get("name", address)), "host": info.get("host"),
                          "resources": info.get("resources") or {}}
    return found


def _matches(address: str, info: dict, wanted: Any) -> bool:
    if isinstance(wanted, str):
        wanted = [wanted]
    return any(w in (address, info["name"], info["host"]) for w in wanted)


def _eligible(workers: dict, options: dict) -> list:
    """The addresses of the workers that can run a task with ``options``, in the scheduler's order."""
    resources = options.get("resources") or {}
    wanted = options.get("workers")
    strict = wanted and not options.get("allow_other_workers")
    return [address for address, info in workers.items()
            if all(info["resources"].get(r, 0) >= amount for r, amount in resources.items())
            and (not strict or _matches(address, info, wanted))]


def _refusal(what: str, options: dict, workers: dict) -> str:
    resources = options.get("resources") or {}
    for resource, amount in resources.items():
        best = max((info["resources"].get(resource, 0) for info in workers.values()), default=0)
        if best < amount:
            have = sorted({r for info in workers.values() for r in info["resources"]})
            return (f"{what} asks for {amount} of resource {resource!r}, but no worker of the Dask cluster has "
                    f"{'it' if best == 0 else f'more than {best}'} (start workers with dask worker --resources "
                    f"\"{resource}={amount}\"); the workers have: {', '.join(have) or 'no resources'}")
    wanted = options.get("workers")
    if wanted and not options.get("allow_other_workers") and \
            not any(_matches(a, i, wanted) for a, i in workers.items()):
        return (f"{what} asks for workers {wanted!r}, which are not in the Dask cluster; its workers are: "
                f"{', '.join(sorted(workers))}")
    return f"{what} asks for {options}, which no single worker of the Dask cluster has together"


# ---------------------------------------------------------------------------
# hooks
# ---------------------------------------------------------------------------


@hookimpl
def ff_backends(register: Any) -> None:
    register("dask", "plugins_builtin.daskback:DaskWorkflow", extra="dask")


@hookimpl
def ff_query_assign(nodes: list, key: str, value: Any, backend: Any) -> bool | None:
    if key != "remote_args" or getattr(backend, "backend_name", None) != "dask":
        return None
    validate_remote_args(value, f"query on workflow {getattr(backend, 'workflow_name', '?')!r}")
    return True
