"""``KFPWorkflow``: a workflow as a Kubeflow Pipelines 2 pipeline, one component per node (see the README)."""

from __future__ import annotations

import base64
import contextlib
import functools
import linecache
import os
import re
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

__all__ = ["KFPWorkflow"]

#: kfp.local keeps one global configuration: local runs take turns
_LOCAL_RUN_LOCK = threading.Lock()
#: terminal colour and cursor codes (kfp's local runner colours its messages)
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


def _component_function(inputs: int, has_state: bool) -> Any:
    """A function with the signature KFP reads for ``inputs`` parents; its generated source is in linecache."""
    func, filename, source = _generated_component(inputs, has_state)
    # every time: anyone may have cleared linecache (linecache.clearcache) since
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    return func


@functools.cache
def _generated_component(inputs: int, has_state: bool) -> tuple:
    from kfp.dsl import Artifact, Input, Output

    name = f"functionfuse_node_{inputs}{'_state' if has_state else ''}"
    params = ["payload: str"] + [f"parent_{i}: Input[Artifact]" for i in range(inputs)]
    params += ["value: Output[Artifact]"] + (["state: Output[Artifact]"] if has_state else [])
    paths = ", ".join(f"parent_{i}.path" for i in range(inputs))
    source = (
        f"def {name}({', '.join(params)}):\n"
        f"    ff_run_node(payload, [{paths}], value.path, {'state.path' if has_state else 'None'})\n"
    )
    filename = f"<functionfuse-kfp component {name}>"
    namespace = {"Input": Input, "Output": Output, "Artifact": Artifact, "ff_run_node": ff_run_node}
    # dont_inherit: this module's `from __future__ import annotations` would turn the annotations KFP reads into strings
    exec(compile(source, filename, "exec", dont_inherit=True), namespace)  # noqa: S102 - generated from fixed text
    namespace[name].__module__ = __name__
    return namespace[name], filename, source


class KFPWorkflow(Workflow):
    """Run the workflow as a Kubeflow Pipelines 2 pipeline, locally or on ``kfp_host`` (options: the README)."""

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
        where = f"KFPWorkflow({workflow_name!r})"
        if not isinstance(base_image, str) or not base_image.strip():
            raise InvalidOptionError(f"{where}: base_image must be a container image name, got {base_image!r}")
        packages = packages_to_install or []
        if not isinstance(packages, (list, tuple)) or not all(isinstance(p, str) for p in packages):
            raise InvalidOptionError(f"{where}: packages_to_install must be a list of pip requirement strings, "
                                     f"got {packages_to_install!r}")
        if kfp_host is not None and (not isinstance(kfp_host, str) or not kfp_host.strip()):
            raise InvalidOptionError(f"{where}: kfp_host must be the URL of a KFP server, got {kfp_host!r}")
        self.packages_to_install = list(packages)
        self.base_image = base_image
        self.kfp_host = kfp_host
        #: the id of the last run submitted to ``kfp_host``
        self.run_id: str | None = None

    @property
    def pipeline_name(self) -> str:
        """The workflow name as KFP accepts it for a pipeline (lower case, dashes)."""
        name = re.sub("-+", "-", re.sub("[^-0-9a-z]+", "-", self.workflow_name.lower())).strip("-")
        return name or "functionfuse-workflow"

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
        """``(pipeline, output name of each returned node, task name of each node)`` running ``steps``."""
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
        returned = [n for n, *_ in tasks_spec] if local and run.reports_nodes else self.leaves
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

        outputs_type = typing.NamedTuple("Outputs", [(name, dsl.Artifact) for name, _, _ in outputs.values()])
        functionfuse_pipeline.__annotations__ = {"return": outputs_type}  # what KFP reads the outputs from
        pipeline = dsl.pipeline(
            functionfuse_pipeline,
            name=self.pipeline_name,
            display_name=self.workflow_name,
            description=f"functionfuse workflow {self.workflow_name!r} ({len(self.nodes)} nodes)",
        )
        return pipeline, {node: name for node, (name, _, _) in outputs.items()}, task_names

    def generate_pipeline(self) -> Any:
        """The KFP pipeline of this workflow: every node computes (and saves); it returns the leaves' values."""
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
            raise KFPCompileError(f"workflow {self.workflow_name!r}: cannot write the pipeline to {path!r}: {exc}") from exc
        return path

    def run(self) -> Any:
        """Run the pipeline here and return the leaf value(s), or submit it to ``kfp_host`` and return the run id."""
        if self.kfp_host is None:
            return super().run()
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
                    f"could not be reached or refused the run: {type(exc).__name__}: {_ANSI.sub('', str(exc))}"
                ) from exc
        self.run_id = result.run_id
        return result.run_id

    def _submit_and_collect(self, run: Run) -> list:
        import kfp.local
        from kfp.local import config

        with tempfile.TemporaryDirectory(prefix="ff-kfp-", ignore_cleanup_errors=True) as scratch:
            report_dir = os.path.join(scratch, "reports")
            os.mkdir(report_dir)
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
            if run.reports_nodes:
                for index, (node, action) in enumerate(steps):
                    if action == COMPUTE:
                        run.finished(node, values[node], _report(report_dir, index))
            return [values[leaf] for leaf in self.leaves]

    def _fail(self, run: Run, exc: RuntimeError, steps: list, report_dir: str, task_names: dict) -> None:
        """Raise the error naming the node whose component failed, chained to what the node raised."""
        for index in os.listdir(report_dir):
            report = _report(report_dir, index)
            if isinstance(report, BaseException):  # the node raised, and its component reported it
                run.fail(steps[int(index)][0], report)
        # The component died before it could report (os._exit, a signal, a crash in native code):
        # KFP's message names its task, in quotes and terminal colours.
        message = _ANSI.sub("", str(exc))
        found = re.search(r"Inner task failed: '?([-0-9a-z]+)'?", message)
        failed = {task: node for node, task in task_names.items()}.get(found.group(1) if found else None)
        cause = RuntimeError(message)
        if failed is None:
            raise NodeExecutionError("?", self.workflow_name, cause, f"the KFP local run failed: {message}") from cause
        detail = (f"its KFP component ended without reporting a result (its process was killed, crashed or "
                  f"exited, or could not load the node call): {message}")
        run.fail(failed, cause, {}, detail)


def _report(report_dir: str, index: int | str) -> dict | BaseException:
    """What the component of step ``index`` reported: its info, or the exception it raised."""
    with open(os.path.join(report_dir, str(index)), "rb") as handle:
        return cloudpickle.load(handle)


@contextlib.contextmanager
def _quiet_kfp_warnings():
    """Hide the warnings KFP gives on every call about its own future defaults."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"kfp\.")
        yield
