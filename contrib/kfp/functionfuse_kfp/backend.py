"""``KFPWorkflow``: a functionfuse workflow as a Kubeflow Pipelines 2 pipeline, one component per node.

>>> wf = KFPWorkflow(node3, workflow_name="operations", packages_to_install=["numpy"])  # doctest: +SKIP
>>> wf.compile("operations.yaml")  # KFP IR YAML, to upload to a KFP server  # doctest: +SKIP
>>> wf.run()  # on this machine, with KFP's local SubprocessRunner: the leaf value(s)  # doctest: +SKIP
>>> KFPWorkflow(node3, workflow_name="operations", kfp_host="http://kfp:8080").run()  # the run id  # doctest: +SKIP

Every node becomes a lightweight Python component named after the node. Its
function, arguments and node plugins' callables travel as a base64
cloudpickle payload (a constant parameter), so node functions, closures
included, need not be self-contained. Each parent's value reaches the node as
an input artifact; the node writes its value to its ``value`` output
artifact (a stateful node's instance to ``state``). The code that runs in
the component is :mod:`functionfuse_kfp.runtime`.
"""

from __future__ import annotations

import base64
import contextlib
import inspect
import json
import linecache
import os
import re
import shutil
import sys
import tempfile
import threading
import typing
from typing import Any

import cloudpickle

from functionfuse.errors import InvalidOptionError, NodeExecutionError
from functionfuse.frontend import Node, resolve_args
from functionfuse.workflow import Workflow

from .errors import KFPCompileError, KFPConnectionError
from .runtime import REPORT_DIR_ENV, ff_run_node, ff_substitute

__all__ = ["KFPWorkflow"]


def _make_slot_class() -> type:
    """The placeholder of a parent's value in the arguments a component receives.

    Made inside a function so cloudpickle ships the class by value: the
    component needs no functionfuse to substitute its parents' values.
    """

    class ParentSlot:
        __slots__ = ("index", "keys")

        def __init__(self, index: int, keys: tuple = ()):
            self.index = index
            self.keys = keys

        def __getitem__(self, key: Any) -> Any:  # node[0] of a parent: keys are applied in the component
            return ParentSlot(self.index, self.keys + (key,))

        def __repr__(self) -> str:
            return f"<parent {self.index}{''.join(f'[{k!r}]' for k in self.keys)}>"

    return ParentSlot


_ParentSlot = _make_slot_class()

#: kfp.local keeps one global configuration: local runs take turns
_LOCAL_RUN_LOCK = threading.Lock()
#: component functions by (number of inputs, has a state output): only their signatures differ
_COMPONENT_FUNCTIONS: dict = {}


def _component_function(inputs: int, has_state: bool) -> Any:
    """A Python function with the signature KFP reads for a node with ``inputs`` parents.

    KFP builds a lightweight component from a function's source text, so the
    source is generated and registered with :mod:`linecache`, where
    :func:`inspect.getsource` finds it.
    """
    key = (inputs, has_state)
    found = _COMPONENT_FUNCTIONS.get(key)
    if found is None:
        name = f"functionfuse_node_{inputs}{'_state' if has_state else ''}"
        params = ["payload: str"] + [f"parent_{i}: Input[Artifact]" for i in range(inputs)]
        params.append("value: Output[Artifact]")
        if has_state:
            params.append("state: Output[Artifact]")
        paths = ", ".join(f"parent_{i}.path" for i in range(inputs))
        source = (
            f"def {name}({', '.join(params)}):\n"
            f"    ff_run_node(payload, [{paths}], value.path, {'state.path' if has_state else 'None'})\n"
        )
        filename = f"<functionfuse-kfp component {name}>"
        from kfp.dsl import Artifact, Input, Output

        namespace = {"Input": Input, "Output": Output, "Artifact": Artifact, "ff_run_node": ff_run_node}
        # dont_inherit: this module's `from __future__ import annotations` would turn the annotations KFP reads into strings
        exec(compile(source, filename, "exec", dont_inherit=True), namespace)  # noqa: S102 - generated from fixed text
        func = namespace[name]
        func.__module__ = __name__
        found = _COMPONENT_FUNCTIONS[key] = (func, filename, source)
    func, filename, source = found
    # every time: anyone may have cleared linecache (linecache.clearcache) since
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    return func


def _k8s_name(name: str) -> str:
    """The name KFP gives a task or pipeline called ``name`` (lower case, dashes)."""
    return re.sub("-+", "-", re.sub("[^-0-9a-z]+", "-", name.lower())).strip("-")


def _check_options(workflow_name: str, base_image: Any, packages_to_install: Any, kfp_host: Any) -> list[str]:
    where = f"KFPWorkflow({workflow_name!r})"
    if not isinstance(base_image, str) or not base_image.strip():
        raise InvalidOptionError(f"{where}: base_image must be a container image name, got {base_image!r}")
    if packages_to_install is None:
        packages: list[str] = []
    elif isinstance(packages_to_install, (list, tuple)) and all(isinstance(p, str) for p in packages_to_install):
        packages = list(packages_to_install)
    else:
        raise InvalidOptionError(
            f"{where}: packages_to_install must be a list of pip requirement strings, got {packages_to_install!r}"
        )
    if kfp_host is not None and (not isinstance(kfp_host, str) or not kfp_host.strip()):
        raise InvalidOptionError(f"{where}: kfp_host must be the URL of a KFP server, got {kfp_host!r}")
    return packages


class _Plan:
    """What each node's component does in one pipeline: compute, or read a stored result."""

    __slots__ = ("always_read", "compute", "read", "stored")

    def __init__(self, compute: set | None, read: set, stored: set, always_read: bool):
        self.compute = compute  # None: every node
        self.read = read
        self.stored = stored
        self.always_read = always_read

    def mode(self, node: Node) -> str | None:
        if self.compute is None or node in self.compute:
            return "call"
        return "read" if node in self.read else None


class KFPWorkflow(Workflow):
    """Run the workflow as a Kubeflow Pipelines 2 pipeline, one component per node named after the node.

    :param nodes: one or more leaf nodes.
    :param workflow_name: the pipeline's name (lower-cased, dashes for other characters, as KFP wants),
        and the name results are stored under.
    :param base_image: the container image of every component; its Python must match this one's
        (functions travel as cloudpickle, which ships bytecode).
    :param packages_to_install: pip requirements every component installs before it runs, besides
        ``cloudpickle`` (pinned to this version) and ``kfp``; add ``functionfuse`` and ``functionfuse-kfp``
        (or use an image holding them) when storage or node plugins are set.
    :param kfp_host: the URL of a KFP server: :meth:`run` submits the pipeline there and returns the run id.
        Without it, :meth:`run` runs the pipeline here with KFP's local ``SubprocessRunner``.
    """

    backend_name = "kfp"

    def __init__(
        self,
        *nodes: Node,
        workflow_name: str = "workflow",
        base_image: str = "python:3.11",
        packages_to_install: list[str] | None = None,
        kfp_host: str | None = None,
        **options: Any,
    ):
        super().__init__(*nodes, workflow_name=workflow_name, **options)
        self.packages_to_install = _check_options(self.workflow_name, base_image, packages_to_install, kfp_host)
        self.base_image = base_image
        self.kfp_host = kfp_host
        #: the id of the last run submitted to ``kfp_host``
        self.run_id: str | None = None

    @property
    def pipeline_name(self) -> str:
        """The workflow name as KFP accepts it for a pipeline."""
        return _k8s_name(self.workflow_name) or "functionfuse-workflow"

    # -- building the pipeline -----------------------------------------------------------
    def _component_packages(self) -> list[str]:
        packages = list(self.packages_to_install)
        if not any(re.match(r"cloudpickle\b", p) for p in packages):
            packages.insert(0, f"cloudpickle=={cloudpickle.__version__}")
        return packages

    def _make_component(self, node: Node, inputs: int, has_state: bool, local: bool) -> Any:
        from kfp import dsl

        func = _component_function(inputs, has_state)
        with _quiet_kfp_warnings():
            component = dsl.component(
                func,
                base_image=self.base_image,
                # Locally the component runs in this Python, which has everything: nothing to pip install.
                packages_to_install=None if local else self._component_packages(),
                install_kfp_package=not local,
                additional_funcs=[ff_substitute, ff_run_node],
            )
        component.component_spec.name = node.name
        component.name = node.name
        return component

    def _payload(self, index: int, node: Node, mode: str, callables: list, plan: _Plan) -> str:
        storage = self.storage
        spec: dict = {
            "index": index,
            "name": node.name,
            "workflow": self.workflow_name,
            "mode": mode,
            "storage": storage if storage is not None and (mode == "read" or node.kind != "object") else None,
            "save": storage is not None and node.kind != "object" and node.name not in plan.stored,
            "always_read": plan.always_read,
        }
        if mode == "call":
            slots = {parent: _ParentSlot(i) for i, parent in enumerate(node.parents)}
            args, kwargs = resolve_args(node, slots)
            spec.update(func=node.func, slot=_ParentSlot, args=list(args), kwargs=dict(kwargs), callables=callables)
        try:
            blob = cloudpickle.dumps(spec)
        except Exception as exc:
            raise KFPCompileError(
                f"node {node.name!r} of workflow {self.workflow_name!r} cannot be shipped to its KFP component: "
                f"its function, arguments, node plugins or storage do not pickle: {type(exc).__name__}: {exc}"
            ) from exc
        return base64.b64encode(blob).decode("ascii")

    def _build(self, hooks: Any, plan: _Plan, local: bool, report_dir: str | None, all_outputs: bool) -> tuple:
        """The pipeline (a KFP graph component) and what the driver needs to read its run.

        :returns: ``(pipeline, outputs, task_names)``: the pipeline output name of each node whose
            value the pipeline returns, and the task name KFP gave each node.
        """
        from kfp import dsl

        attrs = self.node_attrs
        context = hooks.context
        steps: list = []  # (node, component, payload, [(source node, output name)], ...)
        state_source: dict = {}  # stateful node -> (node whose output holds its current instance, output name)
        for index, node in enumerate(self.nodes):
            mode = plan.mode(node)
            if mode is None:
                if hooks.node_restored is not None:
                    hooks.node_restored(node=node, context=context)
                continue
            if mode == "read" and hooks.node_restored is not None:
                hooks.node_restored(node=node, context=context)
            kind = node.kind
            sources: list = []
            callables: list = []
            if mode == "call":
                for parent in node.parents:
                    if parent.kind == "object":  # the instance as the calls before this node left it
                        sources.append(state_source[parent])
                    else:
                        sources.append((parent, "value"))
                node_attrs = attrs.get(node, {})
                if hooks.prepares_every_node or node_attrs:
                    callables = hooks.prepare(node)
            has_state = kind == "method" and mode == "call"
            payload = self._payload(index, node, mode, callables, plan)
            component = self._make_component(node, len(sources), has_state, local)
            if kind == "object":
                state_source[node] = (node, "value")
            elif has_state:
                state_source[node.obj] = (node, "state")
            steps.append((node, component, payload, sources))
            if mode == "call" and hooks.before_node is not None:
                hooks.before_node(node=node, context=context)

        returned = [n for n, *_ in steps] if all_outputs else [leaf for leaf in self.leaves if plan.mode(leaf)]
        outputs = {node: f"node_{i}" for i, node in enumerate(returned)}
        fields = [(name, dsl.Artifact) for name in outputs.values()]
        task_names: dict = {}
        env = {}
        if local:
            # Nodes pickled by reference (helpers of a test module, a script's package) import in the component.
            env = {REPORT_DIR_ENV: report_dir or "", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}

        def functionfuse_pipeline():
            tasks: dict = {}
            for node, component, payload, sources in steps:
                arguments = {"payload": payload}
                for i, (source, output) in enumerate(sources):
                    arguments[f"parent_{i}"] = tasks[source].outputs[output]
                task = component(**arguments)
                if not local:  # the exact node name in the KFP UI; the local runner warns that it ignores it
                    task.set_display_name(node.name)
                task.set_caching_options(False)  # storage, not KFP's cache, decides what is reused
                for key, value in env.items():
                    task.set_env_variable(key, value)
                tasks[node] = task
                task_names[node] = task.name
            if not fields:
                return None
            return outputs_type(**{name: tasks[node].outputs["value"] for node, name in outputs.items()})

        outputs_type = typing.NamedTuple("Outputs", fields) if fields else None
        functionfuse_pipeline.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [], return_annotation=outputs_type if fields else inspect.Signature.empty
        )
        functionfuse_pipeline.__annotations__ = {"return": outputs_type} if fields else {}
        pipeline = dsl.pipeline(
            functionfuse_pipeline,
            name=self.pipeline_name,
            display_name=self.workflow_name,
            description=f"functionfuse workflow {self.workflow_name!r} ({len(self.nodes)} nodes)",
        )
        return pipeline, outputs, task_names

    def _full_plan(self) -> _Plan:
        return _Plan(None, set(), set(), bool(getattr(self.storage, "always_read", False)))

    def _resume_plan(self) -> _Plan:
        if self.storage is None:
            return self._full_plan()
        stored, compute, read, always_read = self.resume_plan()
        return _Plan(compute, read, stored, always_read)

    def generate_pipeline(self) -> Any:
        """The KFP pipeline (a graph component) of this workflow, as :meth:`compile` writes it.

        Every node computes (and, with storage, saves its result); the pipeline returns the leaves'
        values as output artifacts ``node_0``, ``node_1``, ...
        """
        _context, hooks = self.new_run()
        return self._build(hooks, self._full_plan(), local=False, report_dir=None, all_outputs=False)[0]

    def compile(self, path: str | os.PathLike) -> str:
        """Write the pipeline as KFP IR YAML to ``path`` (for a KFP server or ``kfp.Client``); return the path."""
        from kfp import compiler

        pipeline = self.generate_pipeline()
        path = os.fspath(path)
        try:
            compiler.Compiler().compile(pipeline, package_path=path)
        except OSError as exc:
            raise KFPCompileError(f"workflow {self.workflow_name!r}: cannot write the pipeline to {path!r}: {exc}") from exc
        return path

    # -- running -------------------------------------------------------------------------
    def run(self) -> Any:
        """Run the pipeline here and return the leaf's value (a list for several leaves),
        or, with ``kfp_host``, submit it to that KFP server and return the run id."""
        if self.kfp_host is not None:
            return self._submit()
        _context, hooks = self.new_run()
        hooks.before_run()
        error: BaseException | None = None
        try:
            return self._run_local(hooks)
        except BaseException as exc:
            error = exc
            raise
        finally:
            hooks.after_run(error)

    def _run_local(self, hooks: Any) -> Any:
        import kfp.local
        from kfp.local import config

        plan = self._resume_plan()
        scratch = tempfile.mkdtemp(prefix="ff-kfp-")
        report_dir = os.path.join(scratch, "reports")
        os.mkdir(report_dir)
        try:
            pipeline, outputs, task_names = self._build(
                hooks, plan, local=True, report_dir=report_dir, all_outputs=hooks.after_node is not None
            )
            with _LOCAL_RUN_LOCK:
                previous = config.LocalExecutionConfig.instance
                try:
                    kfp.local.init(
                        runner=kfp.local.SubprocessRunner(use_venv=False),
                        pipeline_root=os.path.join(scratch, "outputs"),
                        raise_on_error=True,
                    )
                    try:
                        task = pipeline()
                    except RuntimeError as exc:
                        error, cause = self._node_failure(exc, hooks, report_dir, task_names)
                        raise error from cause
                finally:
                    config.LocalExecutionConfig.instance = previous
            values = {}
            for node, name in outputs.items():
                with open(task.outputs[name].path, "rb") as handle:
                    values[node] = cloudpickle.load(handle)
            if hooks.after_node is not None:
                for index, node in enumerate(self.nodes):
                    if plan.mode(node) == "call":
                        info = _read_info(report_dir, index)
                        hooks.after_node(node=node, result=values[node], context=hooks.context, info=info)
            return self._leaf_result([values[leaf] for leaf in self.leaves])
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _node_failure(self, exc: RuntimeError, hooks: Any, report_dir: str, task_names: dict) -> tuple:
        """The error naming the node whose component failed, chained to what the node raised."""
        failed = None
        for name in os.listdir(report_dir):
            if name.endswith(".error"):
                index = int(name.split(".")[0])
                with open(os.path.join(report_dir, name), "rb") as handle:
                    cause = cloudpickle.load(handle)
                failed = (self.nodes[index], cause, _read_info(report_dir, index))
                break
        if failed is None:  # the component died before the node ran: KFP's message names its task
            message = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
            for node, task_name in task_names.items():
                if re.search(rf"Inner task failed: {re.escape(task_name)}\b", message):
                    failed = (node, exc, {})
                    break
        if failed is None:
            return NodeExecutionError("?", self.workflow_name, exc, detail=f"the KFP local run failed: {exc}"), exc
        node, cause, info = failed
        if hooks.node_error is not None:
            hooks.node_error(node=node, error=cause, context=hooks.context, info=info)
        return NodeExecutionError(node.name, self.workflow_name, cause), cause

    def _submit(self) -> str:
        """Compile the pipeline and start a run of it on ``kfp_host``; return the run id."""
        import kfp

        host = self.kfp_host
        with tempfile.TemporaryDirectory(prefix="ff-kfp-") as scratch:
            path = self.compile(os.path.join(scratch, f"{self.pipeline_name}.yaml"))
            try:
                with _quiet_kfp_warnings():
                    client = kfp.Client(host=host)
                result = client.create_run_from_pipeline_package(path, arguments={}, run_name=self.workflow_name)
            except Exception as exc:
                raise KFPConnectionError(
                    f"workflow {self.workflow_name!r}: the Kubeflow Pipelines server at kfp_host={host!r} "
                    f"could not be reached or refused the run: {type(exc).__name__}: {exc}"
                ) from exc
        self.run_id = result.run_id
        return result.run_id


def _read_info(report_dir: str, index: int) -> dict:
    try:
        with open(os.path.join(report_dir, f"{index}.info")) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def _quiet_kfp_warnings():
    """KFP warns about its own future defaults and client versions on every call; not the user's concern."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"kfp\.")
        yield
