"""Break the code the six ways issue 13 describes, one at a time, in a copy of the tree; the blind-spot tests must go red.

    python tools/blindspot_breaks.py [--keep]

Each breakage is an exact text replacement in one file of a copy of the
working tree under /tmp (the shared tree is never touched); the copy's
tests/test_blindspots.py runs with the copy first on ``sys.path``. A breakage
whose text is no longer in the file is reported as STALE (the code moved:
update the breakage). Exit status 1 when a breakage leaves every test green.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: (what the issue says, file, exact text, replacement, the tests that must fail: a -k expression)
BREAKAGES = [
    (
        "the Ray backend's lookup of the node that really raised is disabled",
        "plugins_builtin/rayback.py",
        "if origin is not None and origin != node.name:",
        "if False:",
        "ray_names",
    ),
    (
        "the rebuild step at the end of plan_resume is removed",
        "functionfuse/graph.py",
        # the objects that functions computed on resume take as a value are no longer rebuilt
        'if parent.kind == "object" and node.kind != "method":',
        "if False:",
        "resume",
    ),
    (
        "the node plugins' callables are dropped from the storage path",
        "functionfuse/base.py",
        "callables = self.prepare(node)\n",
        "callables = self.prepare(node)\n        callables = [] if self.saves(node) else callables\n",
        "node_plugin",
    ),
    (
        "always_read is ignored",
        "functionfuse/nodecall.py",
        "if call.always_read:",
        "if False:",
        "always_read",
    ),
    (
        "the unused-hooks shortcut is turned off",
        "functionfuse/manager.py",
        "        if not impls or (not self.tracing and all(_inlinable(impl) for impl in impls)):\n            caller = None\n",
        "        if not impls:\n            caller = None\n",
        "plain or default_host",
    ),
    (
        "the temporary-file clean-up of a failed atomic save is removed",
        "plugins_builtin/fsstorage.py",
        "                try:\n                    os.unlink(tmp)\n                except OSError:\n                    pass\n",
        "                pass\n",
        "save_failing",
    ),
]


def copy_tree(target: str) -> None:
    for part in ("functionfuse", "plugins_builtin", "tests", "pyproject.toml"):
        source = os.path.join(ROOT, part)
        if os.path.isdir(source):
            shutil.copytree(source, os.path.join(target, part),
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(source, target)


def main() -> int:
    keep = "--keep" in sys.argv
    work = tempfile.mkdtemp(prefix="ffbreak")
    copy_tree(work)
    env = dict(os.environ, PYTHONPATH=work, RAY_AUTH_MODE="disabled")
    bad = 0
    try:
        baseline = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                   "tests/test_blindspots.py"], cwd=work, env=env, capture_output=True, text=True,
                                  check=False)
        print(f"{'GREEN' if baseline.returncode == 0 else 'RED'}   unbroken: {baseline.stdout.strip().splitlines()[-1]}")
        if baseline.returncode != 0:
            return 1
        for what, path, old, new, tests in BREAKAGES:
            target = os.path.join(work, path)
            with open(target) as handle:
                original = handle.read()
            if original.count(old) != 1:
                print(f"STALE   {what}: the text to break is not (once) in {path}")
                bad += 1
                continue
            with open(target, "w") as handle:
                handle.write(original.replace(old, new))
            try:
                out = subprocess.run(
                    [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                     "tests/test_blindspots.py", "-k", tests],
                    cwd=work, env=env, capture_output=True, text=True, check=False,
                )
            finally:
                with open(target, "w") as handle:
                    handle.write(original)
            last = (out.stdout.strip().splitlines() or ["?"])[-1]
            if out.returncode == 0:
                print(f"GREEN   {what} ({path}): no test failed -- {last}")
                bad += 1
            else:
                print(f"RED     {what} ({path}): {last}")
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
