"""``KFPWorkflow``: a functionfuse workflow as a Kubeflow Pipelines 2 pipeline, one component per node.

>>> wf = KFPWorkflow(node3, workflow_name="operations", packages_to_install=["numpy"])  # doctest: +SKIP
>>> wf.compile("operations.yaml")  # KFP IR YAML, to upload to a KFP server  # doctest: +SKIP
>>> wf.run()  # on this machine, with KFP's local SubprocessRunner: the leaf value(s)  # doctest: +SKIP
>>> KFPWorkflow(node3, workflow_name="operations", kfp_host="http://kfp:8080").run()  # the run id  # doctest: +SKIP

Every node becomes a lightweight Python component named after the node. Its
:class:`functionfuse.nodecall.NodeCall` (function, argument template, node
plugins' callables, storage, worker hooks) travels as a base64 cloudpickle
payload, a constant parameter. Each parent's value reaches the node as an
input artifact; the component (:mod:`functionfuse_kfp.runtime`) runs the call
through :func:`functionfuse.nodecall.run_node_call` and writes the value to
its ``value`` output artifact (a method call's instance to ``state``).
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

from functionfuse.base import COMPUTE, ResumePlan, Run, Workflow
from functionfuse.errors import InvalidOptionError, NodeExecutionError
from functionfuse.frontend import Node
from functionfuse.nodecall import METHOD, OBJECT

from .errors import KFPCompileError, KFPConnectionError
from .runtime import REPORT_DIR_ENV, ff_run_node

__all__ = ["KFPWorkflow", "strip_ansi"]

#: kfp.local keeps one global configuration: local runs take turns
_LOCAL_RUN_LOCK = threading.Lock()
#: component functions by (number of inputs, has a state output): only their signatures differ
_COMPONENT_FUNCTIONS: dict = {}
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


def strip_ansi(text: str) -> str:
    """``text`` without terminal colour and cursor codes (kfp's local runner colours its messages)."""
    return _ANSI.sub("", text)


def _component_function(inputs: int, has_state: bool) -> Any:
    """A Python function with the signature KFP reads for a node with ``inputs`` parents.

    KFP builds a lightweight component from a function's source text, so the
    source is generated and registered with :mod:`linecache`, where
    :func:`inspect.getsource` finds it.
    """
    key = (inputs, has_state)
    if key not in _COMPONENT_FUNCTIONS:
        name = f"functionfuse_node_{inputs}{'_state' if has_state else ''}"
        params = ["payload: str"] + [f"parent_{i}: Input[Artifact]" for i in range(inputs)]
        params += ["value: Output[Artifact]"] + (["state: Output[Artifact]"] if has_state else [])
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
        namespace[name].__module__ = __name__
        _COMPONENT_FUNCTIONS[key] = (namespace[name], filename, source)
    func, filename, source = _COMPONENT_FUNCTIONS[key]
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
    packages = packages_to_install or []
    if not isinstance(packages, (list, tuple)) or not all(isinstance(p, str) for p in packages):
        raise InvalidOptionError(
            f"{where}: packages_to_install must be a list of pip requirement strings, got {packages_to_install!r}"
        )
    if kfp_host is not None and (not isinstance(kfp_host, str) or not kfp_host.strip()):
        raise InvalidOptionError(f"{where}: kfp_host must be the URL of a KFP server, got {kfp_host!r}")
    return list(packages)


class KFPWorkflow(Workflow):
    """Run the workflow as a Kubeflow Pipelines 2 pipeline, one component per node named after the node.

    :param nodes: one or more leaf nodes.
    :param workflow_name: the pipeline's name (lower-cased, dashes for other characters, as KFP wants),
        and the name results are stored under.
    :param base_image: the container image of every component; it must hold ``functionfuse`` (the
        component runs the node call with it) and a Python of this one's minor version (functions
        travel as cloudpickle, which ships bytecode).
    :param packages_to_install: pip requirements every component installs before it runs, besides
        ``cloudpickle`` (pinned to this version) and ``kfp``.
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
    def _make_component(self, node: Node, inputs: int, has_state: bool, local: bool) -> Any:
        from kfp import dsl

        packages = list(self.packages_to_install)
        if not any(re.match(r"cloudpickle\b", p) for p in packages):
            packages.insert(0, f"cloudpickle=={cloudpickle.__version__}")
        with _quiet_kfp_warnings():
            component = dsl.component(
                _component_function(inputs, has_state),
                base_image=self.base_image,
                # Locally the component runs in this Python, which has everything: nothing to pip install.
                packages_to_install=None if local else packages,
                install_kfp_package=not local,
                additional_funcs=[ff_run_node],
            )
        component.component_spec.name = component.name = node.name
        return component

    def _payload(self, index: int, call: Any) -> str:
        try:
            return base64.b64encode(cloudpickle.dumps((index, call))).decode("ascii")
        except Exception as exc:
            raise KFPCompileError(
                f"node {call.name!r} of workflow {self.workflow_name!r} cannot be shipped to its KFP component: "
                f"its function, arguments, node plugins or storage do not pickle: {type(exc).__name__}: {exc}"
            ) from exc

    def _build(self, run: Run, steps: list, local: bool, report_dir: str | None = None) -> tuple:
        """The pipeline (a KFP graph component) running ``steps`` (``(node, action)`` of :meth:`Run.steps`).

        :returns: ``(pipeline, outputs, task_names)``: the pipeline output name of each node whose
            value the pipeline returns, and the task name KFP gave each node.
        """
        from kfp import dsl

        tasks_spec: list = []  # (node, component, payload, [(source node, output name)])
        state: dict = {}  # stateful object node -> (node whose output holds its current instance, output name)
        for index, (node, action) in enumerate(steps):
            call, deps = run.node_call(node, action)
            sources = [state.get(dep, (dep, "value")) for dep in deps]
            if call.mode == OBJECT:
                state[node] = (node, "value")
            elif call.mode == METHOD:
                state[node.obj] = (node, "state")
            component = self._make_component(node, len(sources), call.mode == METHOD, local)
            tasks_spec.append((node, component, self._payload(index, call), sources))
            if local and action == COMPUTE:
                run.started(node)

        # every node's value when ff_after_node wants them, else the leaves'; an object's as its last call left it
        returned = [n for n, *_ in tasks_spec] if local and run.after_node is not None else self.leaves
        outputs = {node: (f"node_{i}", *state.get(node, (node, "value"))) for i, node in enumerate(returned)}
        task_names: dict = {}
        # Locally, nodes pickled by reference (helpers of a test module, a script's package) import in the component.
        env = {REPORT_DIR_ENV: report_dir, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)} if local else {}

        def functionfuse_pipeline():
            tasks: dict = {}
            for node, component, payload, sources in tasks_spec:
                arguments = {f"parent_{i}": tasks[src].outputs[out] for i, (src, out) in enumerate(sources)}
                task = tasks[node] = component(payload=payload, **arguments)
                if not local:  # the exact node name in the KFP UI; the local runner warns that it ignores it
                    task.set_display_name(node.name)
                task.set_caching_options(False)  # storage, not KFP's cache, decides what is reused
                for key, value in env.items():
                    task.set_env_variable(key, value)
                task_names[node] = task.name
            return outputs_type(**{name: tasks[src].outputs[out] for name, src, out in outputs.values()})

        # a workflow has at least one leaf, so the pipeline always returns something
        outputs_type = typing.NamedTuple("Outputs", [(name, dsl.Artifact) for name, _, _ in outputs.values()])
        functionfuse_pipeline.__signature__ = inspect.Signature([], return_annotation=outputs_type)  # type: ignore[attr-defined]
        functionfuse_pipeline.__annotations__ = {"return": outputs_type}
        pipeline = dsl.pipeline(
            functionfuse_pipeline,
            name=self.pipeline_name,
            display_name=self.workflow_name,
            description=f"functionfuse workflow {self.workflow_name!r} ({len(self.nodes)} nodes)",
        )
        return pipeline, {node: name for node, (name, _, _) in outputs.items()}, task_names

    def generate_pipeline(self) -> Any:
        """The KFP pipeline (a graph component) of this workflow, as :meth:`compile` writes it.

        Every node computes (and, with storage, saves its result); the pipeline returns the leaves'
        values as output artifacts ``node_0``, ``node_1``, ...
        """
        run = self.new_run()
        # The cluster's storage is not this machine's to list: plan a full run, every node computed and saved.
        run.plan = ResumePlan(set(), None, set(), bool(getattr(self.storage, "always_read", False)))
        return self._build(run, list(run.steps()), local=False)[0]

    def compile(self, path: str | os.PathLike) -> str:
        """Write the pipeline as KFP IR YAML to ``path`` (for a KFP server or ``kfp.Client``); return the path."""
        from kfp import compiler

        pipeline = self.generate_pipeline()
        path = os.fspath(path)
        try:
            compiler.Compiler().compile(pipeline, package_path=path)
        except OSError as exc:
            raise KFPCompileError(
                f"workflow {self.workflow_name!r}: cannot write the pipeline to {path!r}: {exc}"
            ) from exc
        return path

    # -- running -------------------------------------------------------------------------
    def run(self) -> Any:
        """Run the pipeline here and return the leaf's value (a list for several leaves),
        or, with ``kfp_host``, submit it to that KFP server and return the run id."""
        if self.kfp_host is not None:
            return self._submit()
        return super().run()

    def _submit_and_collect(self, run: Run) -> list:
        import kfp.local
        from kfp.local import config

        scratch = tempfile.mkdtemp(prefix="ff-kfp-")
        report_dir = os.path.join(scratch, "reports")
        os.mkdir(report_dir)
        try:
            steps = list(run.steps())
            pipeline, outputs, task_names = self._build(run, steps, local=True, report_dir=report_dir)
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
                        self._fail(run, exc, steps, report_dir, task_names)
                finally:
                    config.LocalExecutionConfig.instance = previous
            values = {}
            for node, name in outputs.items():
                with open(task.outputs[name].path, "rb") as handle:
                    values[node] = cloudpickle.load(handle)
            if run.after_node is not None:
                for index, (node, action) in enumerate(steps):
                    if action == COMPUTE:
                        run.finished(node, values[node], _read_info(report_dir, index))
            return [values[leaf] for leaf in self.leaves]
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _fail(self, run: Run, exc: RuntimeError, steps: list, report_dir: str, task_names: dict) -> None:
        """Raise the error naming the node whose component failed, chained to what the node raised."""
        for name in sorted(os.listdir(report_dir)):
            if name.endswith(".error"):  # the node raised, and its component reported it
                index = int(name.split(".")[0])
                with open(os.path.join(report_dir, name), "rb") as handle:
                    cause = cloudpickle.load(handle)
                run.fail(steps[index][0], cause, _read_info(report_dir, index))
        # The component died before it could report (os._exit, a signal, a crash in native code):
        # KFP's message names its task, in quotes and terminal colours.
        message = strip_ansi(str(exc))
        found = re.search(r"Inner task failed: '?([-0-9a-z]+)'?", message)
        failed = {task: node for node, task in task_names.items()}.get(found.group(1) if found else None)
        cause = RuntimeError(message)
        if failed is None:
            raise NodeExecutionError("?", self.workflow_name, cause, f"the KFP local run failed: {message}") from cause
        detail = (f"its KFP component ended without reporting a result (its process was killed, crashed or "
                  f"exited, or could not load the node call): {message}")
        run.fail(failed, cause, {}, detail)

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
                    f"could not be reached or refused the run: {type(exc).__name__}: {strip_ansi(str(exc))}"
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
