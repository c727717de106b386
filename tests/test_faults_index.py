"""Fault tests of the fingerprint index and the writer marks of the file storage (``.fffp/``).

The property: never a wrong value. A workflow script runs in real processes
(killed with ``SIGKILL`` by one of its own nodes, failed, blocked beside
another run), then a fresh process runs it again with the same or changed
code and arguments: every stored value must equal a direct computation, and
exactly the nodes whose stored call differs (and what uses them) recompute.
The index (``.fffp/.index``) is also bit-flipped and truncated, and storage in
the FFR1/FFR2 + ``<task>@<fp>`` marker layout of earlier versions is built
byte by byte, as the reader expects it.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import pytest

from plugins_builtin import fsstorage
from plugins_builtin.fsstorage import FileStorage

REPO = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys, time
    import functionfuse
    from functionfuse import workflow

    K, J = int(sys.argv[1]), int(sys.argv[2])

    def mark(what):
        with open(os.environ.get("CALLS", "calls.txt"), "a") as handle:
            handle.write(what + "\\n")
        if os.environ.get("KILL_AT") == what:
            os.kill(os.getpid(), signal.SIGKILL)
        if os.environ.get("FAIL_AT") == what:
            raise RuntimeError("failing on purpose at " + what)
        if os.environ.get("BLOCK_AT") == what:
            open(os.environ["READY"], "w").close()
            while not os.path.exists(os.environ["GO"]):
                time.sleep(0.02)

    @workflow
    def source(x):
        mark("src")
        return x + 1

    @workflow
    def scale(v, k):
        mark("mul")
        return v * k

    @workflow
    def offset(v):
        mark("off")
        return v + {c}

    @workflow
    def side(v, j):
        mark("side")
        return v * 100 * j

    @workflow
    def total(a, b):
        mark("total")
        return [a, b]

    s = source(3).set_name("src")
    top = total(offset(scale(s, K).set_name("mul")).set_name("off"), side(s, J).set_name("side")).set_name("total")
    value = functionfuse.run(top, storage="st", workflow_name="w")
    print(json.dumps(value))
    """
)

NODES = ["mul", "off", "side", "src", "total"]


def expected(k: int = 2, c: int = 7, j: int = 1) -> dict:
    """Each node's value, computed directly."""
    src = 3 + 1
    mul = src * k
    off = mul + c
    side = src * 100 * j
    return {"src": src, "mul": mul, "off": off, "side": side, "total": [off, side]}


def env(**extra: str) -> dict:
    base = {key: value for key, value in os.environ.items()
            if key not in ("KILL_AT", "FAIL_AT", "BLOCK_AT", "CALLS", "COVERAGE_PROCESS_START")}
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**base, "PYTHONPATH": path, "RAY_AUTH_MODE": "disabled", **extra}


def write_script(folder: Path, c: int) -> str:
    name = f"wf_c{c}.py"
    (folder / name).write_text(SCRIPT.replace("{c}", str(c)))
    return name


def start(folder: Path, k: int = 2, c: int = 7, j: int = 1, **extra: str) -> subprocess.Popen:
    name = write_script(folder, c)
    return subprocess.Popen([sys.executable, name, str(k), str(j)], cwd=folder, env=env(**extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(folder: Path, k: int = 2, c: int = 7, j: int = 1, ok: bool = True, **extra: str) -> dict:
    """Run the script in a fresh process; returns its exit code, value and the nodes that ran (sorted)."""
    calls = folder / extra.setdefault("CALLS", "calls.txt")
    calls.unlink(missing_ok=True)
    process = start(folder, k, c, j, **extra)
    out, err = process.communicate(timeout=180)
    if ok:
        assert process.returncode == 0, err
    report = {"rc": process.returncode, "err": err,
              "value": json.loads(out.strip().splitlines()[-1]) if process.returncode == 0 else None,
              "calls": sorted(calls.read_text().split()) if calls.exists() else []}
    return report


def storage_of(folder: Path) -> FileStorage:
    return FileStorage(str(folder / "st"))


def fpdir(folder: Path) -> Path:
    return folder / "st" / "w" / ".fffp"


def marks(folder: Path) -> list[str]:
    return sorted(e for e in os.listdir(fpdir(folder)) if e.startswith((".w-", ".d-")))


def stored_values(folder: Path) -> dict:
    storage = storage_of(folder)
    return {name: storage.read_task("w", name) for name in storage.list_tasks("w")}


def header_fingerprints(folder: Path) -> dict:
    """Each result's fingerprint as its header (or, for FFR1/FFR2, its single old marker) says."""
    storage = storage_of(folder)
    legacy: dict = {}
    for entry in os.listdir(fpdir(folder)):
        name, at, fp = entry.rpartition("@")
        if at and not entry.startswith("."):
            legacy.setdefault(name, []).append(fp)
    return {name: storage._header_fingerprint("w", name, legacy) for name in storage.list_tasks("w")}


def read_index(folder: Path) -> dict | None:
    return storage_of(folder)._read_index("w")


def assert_correct(folder: Path, report: dict, calls: list[str], **args: int) -> None:
    """The run's value and every stored value equal the direct computation; exactly ``calls`` ran."""
    want = expected(**args)
    assert report["value"] == want["total"]
    assert stored_values(folder) == want
    assert report["calls"] == sorted(calls)


def assert_clean(folder: Path) -> None:
    """No writer marks left, and an index that agrees with every result's header."""
    assert marks(folder) == []
    assert read_index(folder) == header_fingerprints(folder)


def baseline(folder: Path) -> bytes:
    """The first run (k=2, c=7, j=1): everything computes, a clean index is written; returns its bytes."""
    first = run(folder)
    assert_correct(folder, first, NODES)
    assert_clean(folder)
    return (fpdir(folder) / ".index").read_bytes()


def in_process_resume_of_a_copy(folder: Path, tmp_path: Path) -> dict:
    """On a copy of the storage, what a run of this process sees (and cleans): list_fingerprints between
    begin_run and end_run. Returns the fingerprints it listed; the copy ends clean."""
    copy = tmp_path / "copy"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(folder / "st", copy / "st")
    storage = storage_of(copy)
    run_ = storage.begin_run("w")
    listed = storage.list_fingerprints("w")
    storage.end_run("w", run_, ok=True)
    assert_clean(copy)
    return listed


# ---------------------------------------------------------------------------
# 1. a run killed with SIGKILL after some saves: its mark stays, the next run reads the headers
# ---------------------------------------------------------------------------

# (change, resume with) -> the nodes that must compute in the resume
KILLED = {
    # k=5 was killed at total: mul and off hold k=5 results, total still k=2's
    ("argument", "original"): (dict(k=2), ["mul", "off"]),
    ("argument", "changed"): (dict(k=5), ["total"]),
    # c=11 was killed at total: off holds c=11's result
    ("code", "original"): (dict(c=7), ["off"]),
    ("code", "changed"): (dict(c=11), ["total"]),
}


@pytest.mark.parametrize("change,resume", list(KILLED))
def test_a_killed_runs_results_are_never_judged_by_the_index_before_them(tmp_path, change, resume):
    index_before = baseline(tmp_path)
    changed = dict(k=5) if change == "argument" else dict(c=11)
    killed = run(tmp_path, ok=False, KILL_AT="total", **changed)
    assert killed["rc"] == -signal.SIGKILL
    assert killed["calls"] == sorted(["mul", "off", "total"] if change == "argument" else ["off", "total"])
    left = marks(tmp_path)
    assert len(left) == 1 and left[0].startswith(".w-"), left  # the dead run's mark
    assert (fpdir(tmp_path) / ".index").read_bytes() == index_before  # now stale: it predates the kill
    assert read_index(tmp_path) != header_fingerprints(tmp_path)

    # this process's view of a copy: the headers, not the stale index; the dead mark is removed
    assert in_process_resume_of_a_copy(tmp_path, tmp_path) == header_fingerprints(tmp_path)

    args, calls = KILLED[(change, resume)]
    again = run(tmp_path, **args)
    assert_correct(tmp_path, again, calls, **args)
    assert_clean(tmp_path)  # the dead writer's mark is gone, the index rewritten
    third = run(tmp_path, **args)
    assert_correct(tmp_path, third, [], **args)


# ---------------------------------------------------------------------------
# 2. a failed run, and a save outside any run, leave a .d- mark: the index written before is not trusted
# ---------------------------------------------------------------------------

OUTSIDE_SAVE = """
import sys
sys.path.insert(0, {repo!r})
from plugins_builtin.fsstorage import FileStorage
FileStorage("st").save("w", "mul", 999)  # no fingerprint: whatever call asks, this is not its result
"""


@pytest.mark.parametrize("how", ["failed run", "save outside a run"])
def test_results_replaced_after_the_index_was_written_are_read_from_their_headers(tmp_path, how):
    index_before = baseline(tmp_path)
    if how == "failed run":
        failed = run(tmp_path, k=5, ok=False, FAIL_AT="total")
        assert failed["rc"] != 0 and "failing on purpose" in failed["err"]
        calls = ["mul", "off"]  # both were saved with k=5 by the failed run
    else:
        (tmp_path / "outside.py").write_text(OUTSIDE_SAVE.format(repo=str(REPO)))
        subprocess.run([sys.executable, "outside.py"], cwd=tmp_path, env=env(), check=True, timeout=120)
        assert storage_of(tmp_path).read_task("w", "mul") == 999
        calls = ["mul"]  # off's call is unchanged: its stored result (k=2) is read back
    left = marks(tmp_path)
    assert len(left) == 1 and left[0].startswith(".d-"), left
    assert (fpdir(tmp_path) / ".index").read_bytes() == index_before

    assert in_process_resume_of_a_copy(tmp_path, tmp_path) == header_fingerprints(tmp_path)

    again = run(tmp_path)
    assert_correct(tmp_path, again, calls)
    assert_clean(tmp_path)


# ---------------------------------------------------------------------------
# 3. a run beside a live writer: the live mark is kept, neither writes the index, the next run cleans up
# ---------------------------------------------------------------------------


def test_a_live_writers_mark_is_kept_and_no_index_is_written_beside_it(tmp_path):
    index_before = baseline(tmp_path)
    ready, go = tmp_path / "ready", tmp_path / "go"
    # A: k=5, saves mul (k=5) and blocks in off, its mark live
    a = start(tmp_path, k=5, BLOCK_AT="off", READY=str(ready), GO=str(go), CALLS="calls-a.txt")
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert a.poll() is None, a.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        mark_a = marks(tmp_path)
        assert len(mark_a) == 1 and mark_a[0].startswith(".w-")
        # B (k=2) beside it: reads the headers (mul is A's, k=5: recompute), keeps A's live mark
        b = run(tmp_path, CALLS="calls-b.txt")
        assert b["value"] == expected()["total"] and b["calls"] == ["mul"]
        after_b = marks(tmp_path)
        assert mark_a[0] in after_b  # a live writer's mark is never removed
        assert any(m.startswith(".d-") for m in after_b)  # B finished beside A: no index from B
        assert (fpdir(tmp_path) / ".index").read_bytes() == index_before
    finally:
        go.touch()
        out, err = a.communicate(timeout=180)
    assert a.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == expected(k=5)["total"]
    assert (fpdir(tmp_path) / ".index").read_bytes() == index_before  # A finished beside B's mark
    assert len(marks(tmp_path)) == 2
    # now: mul is B's (k=2), off and total are A's (k=5)
    again = run(tmp_path)
    assert_correct(tmp_path, again, ["off", "total"])
    assert_clean(tmp_path)


# ---------------------------------------------------------------------------
# 4. a damaged index is ignored: the headers are read, nothing recomputes, a good index is written again
# ---------------------------------------------------------------------------


def _flip_in_a_fingerprint(blob: bytes) -> bytes:
    """Flip the lowest bit of the first character of the fingerprint of ``mul`` (the pickle stays valid)."""
    body = pickle.loads(blob[8:])
    where = blob.index(body["mul"].encode(), 8)
    damaged = bytearray(blob)
    damaged[where] ^= 1
    return bytes(damaged)


TAMPER = {
    "bit flip in a fingerprint": _flip_in_a_fingerprint,
    "truncated to 3 bytes": lambda blob: blob[:3],
    "truncated to its header": lambda blob: blob[:8],
    "truncated to half": lambda blob: blob[: len(blob) // 2],
    "empty": lambda blob: b"",
}


@pytest.mark.parametrize("how", list(TAMPER))
def test_a_damaged_index_is_ignored_and_the_headers_are_read(tmp_path, how):
    blob = baseline(tmp_path)
    (fpdir(tmp_path) / ".index").write_bytes(TAMPER[how](blob))
    assert read_index(tmp_path) is None
    assert storage_of(tmp_path).list_fingerprints("w") == header_fingerprints(tmp_path)
    again = run(tmp_path)
    assert_correct(tmp_path, again, [])
    assert_clean(tmp_path)  # written whole again


@pytest.mark.parametrize("body", [pickle.dumps(["mul", "off"]), b"not a pickle at all"])
def test_an_index_with_a_good_checksum_but_no_mapping_is_ignored(tmp_path, body):
    baseline(tmp_path)
    (fpdir(tmp_path) / ".index").write_bytes(struct.pack("<4sI", b"FFI1", zlib.crc32(body)) + body)
    assert read_index(tmp_path) is None
    again = run(tmp_path)
    assert_correct(tmp_path, again, [])
    assert_clean(tmp_path)


def test_a_damaged_result_header_counts_as_no_fingerprint(tmp_path):
    baseline(tmp_path)
    path = tmp_path / "st" / "w" / "off.ffr"
    damaged = bytearray(path.read_bytes())
    damaged[fsstorage._HEADER.size] ^= 1  # a character of its fingerprint: the header's own CRC fails
    path.write_bytes(bytes(damaged))
    (fpdir(tmp_path) / ".index").unlink()  # so the header is what is read
    assert header_fingerprints(tmp_path)["off"] is None
    again = run(tmp_path)
    assert_correct(tmp_path, again, ["off"])  # recomputed, never read (its read would fail the checksum)
    assert_clean(tmp_path)


# ---------------------------------------------------------------------------
# 5. storage written by earlier versions: FFR2 / FFR1 results and .fffp/<task>@<fp> markers
# ---------------------------------------------------------------------------


def _as_old_layout(folder: Path, magic: bytes) -> dict:
    """Rewrite every result as ``magic`` (no fingerprint in it), with one ``<task>@<fp>`` marker each, and
    no index or writer marks (as an earlier version left it). Returns the fingerprints."""
    fps = header_fingerprints(folder)
    storage = storage_of(folder)
    for name, fp in fps.items():
        path = folder / "st" / "w" / f"{name}.ffr"
        payload = bytes(storage._verify(path.read_bytes(), "w", name)[0])
        if magic == b"FFR2":
            blob = struct.pack("<4sQIH", magic, len(payload), zlib.crc32(payload, zlib.crc32(b"")), 0) + payload
        else:
            blob = struct.pack("<4sQI", magic, len(payload), zlib.crc32(payload)) + payload
        path.write_bytes(blob)
        (fpdir(folder) / f"{name}@{fp}").touch()
    (fpdir(folder) / ".index").unlink()
    assert marks(folder) == []
    return fps


@pytest.mark.parametrize("magic", [b"FFR2", b"FFR1"])
def test_storage_in_the_old_layout_resumes(tmp_path, magic):
    baseline(tmp_path)
    fps = _as_old_layout(tmp_path, magic)
    assert stored_values(tmp_path) == expected()
    assert storage_of(tmp_path).list_fingerprints("w") == fps  # from the markers
    again = run(tmp_path)
    assert_correct(tmp_path, again, [])
    assert read_index(tmp_path) == fps  # the first run of this version writes the index
    changed = run(tmp_path, k=5)
    assert_correct(tmp_path, changed, ["mul", "off", "total"], k=5)
    back = run(tmp_path)  # the old k=2 results were replaced: computed again, never read from a marker
    assert_correct(tmp_path, back, ["mul", "off", "total"])


def test_old_layout_with_two_markers_for_one_node_recomputes_it(tmp_path):
    """Two ``<task>@<fp>`` markers for one node (ambiguous): never guessed, the node recomputes."""
    baseline(tmp_path)
    fps = _as_old_layout(tmp_path, b"FFR2")
    wrong = "0" * len(fps["off"])
    (fpdir(tmp_path) / f"off@{wrong}").touch()
    assert storage_of(tmp_path).list_fingerprints("w")["off"] is None
    again = run(tmp_path)
    assert_correct(tmp_path, again, ["off"])
    assert_clean(tmp_path)


# ---------------------------------------------------------------------------
# 6. the mark/index code of this process, faults injected in-process
# ---------------------------------------------------------------------------


def test_a_mark_that_cannot_be_created_fails_the_save_and_is_not_left_in_progress(tmp_path, monkeypatch):
    storage = FileStorage(str(tmp_path / "st"))
    storage.save("w", "a", 1, fingerprint="f" * 32)

    def refuse(path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage, "_create_empty", refuse)
    before = set(fsstorage._in_progress)
    with pytest.raises(fsstorage.StorageError, match="saving node 'b'.*No space left"):
        storage.save("w", "b", 2, fingerprint="e" * 32)
    assert set(fsstorage._in_progress) == before
    assert not (tmp_path / "st" / "w" / "b.ffr").exists()


def test_the_fffp_folder_removed_during_a_run_is_made_again_and_no_index_is_trusted(tmp_path):
    storage = FileStorage(str(tmp_path / "st"))
    storage.save("w", "a", 1, fingerprint="a" * 32)
    first = storage.begin_run("w")
    assert storage.list_fingerprints("w") == {"a": "a" * 32}
    storage.end_run("w", first, ok=True)
    run_ = storage.begin_run("w")
    shutil.rmtree(fpdir(tmp_path))  # behind the run's back: its mark and the index go
    # a save outside the run, through another object: its mark's folder is made again
    FileStorage(str(tmp_path / "st")).save("w", "b", 2, fingerprint="b" * 32)
    storage.save("w", "c", 3, fingerprint="c" * 32)
    storage.end_run("w", run_, ok=True)  # its mark is gone: it finishes without an index
    assert not (fpdir(tmp_path) / ".index").exists()
    again = storage.begin_run("w")
    assert storage.list_fingerprints("w") == {"a": "a" * 32, "b": "b" * 32, "c": "c" * 32}
    storage.end_run("w", again, ok=True)
    assert_clean(tmp_path)


def test_saves_of_a_run_override_what_it_listed_and_a_dead_mark_is_removed(tmp_path):
    storage = FileStorage(str(tmp_path / "st"))
    storage.save("w", "a", 1, fingerprint="a" * 32)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_tag = f"{dead.stdout.strip()}~{fsstorage._HOST}-0123456789000000"
    (fpdir(tmp_path) / f".w-{dead_tag}").touch()
    other_host = "1~elsewhere.example-0123456789000000"
    (fpdir(tmp_path) / f".w-{other_host}").touch()  # another host's writer: counted as alive
    run_ = storage.begin_run("w")
    assert storage.list_fingerprints("w") == {"a": "a" * 32}
    assert marks(tmp_path) == sorted([f".w-{other_host}", f".w-{fsstorage._marker_name(run_.tag)}"])
    storage.save("w", "a", 10, fingerprint="b" * 32)
    assert storage.list_fingerprints("w") == {"a": "b" * 32}  # what it saved since it looked
    storage.end_run("w", run_, ok=True)
    assert not (fpdir(tmp_path) / ".index").exists()  # the other host's mark stays: no index
    (fpdir(tmp_path) / f".w-{other_host}").unlink()
    again = storage.begin_run("w")
    assert storage.list_fingerprints("w") == {"a": "b" * 32}
    storage.end_run("w", again, ok=True)
    assert_clean(tmp_path)
    assert storage.read_task("w", "a") == 10
