#!/usr/bin/env bash
# Mutation score of core modules with mutmut (not in CI: minutes to an hour).
#
#   bash tools/mutation.sh [MODULE.py ...]      default: functionfuse/graph.py functionfuse/frontend.py
#
# Works in a scratch copy of the tree (mutmut writes a mutants/ folder; the shared working tree
# is never touched), runs the local core tests against every mutant, and prints per module:
# killed / total and the surviving mutants (`mutmut show NAME` in the scratch folder shows one).
# Keep the scratch folder with KEEP=1. Needs: pip install mutmut (3.x).
#   REV=COMMIT   measure that commit (git archive) instead of the working tree, which others may be editing
#   JOBS=N       mutants tested at a time (mutmut --max-children; default: the number of cores)
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
modules=("$@")
[ ${#modules[@]} -eq 0 ] && modules=(functionfuse/graph.py functionfuse/frontend.py)

work="$(mktemp -d /tmp/ffmutation-XXXXXX)"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
if [ -n "${REV:-}" ]; then
    git archive "$REV" functionfuse plugins_builtin tests pyproject.toml README.md docs examples | tar -x -C "$work"
    measured="commit $(git rev-parse --short "$REV")"
else
    cp -r functionfuse plugins_builtin tests pyproject.toml "$work/"
    cp -r README.md docs examples "$work/" 2>/dev/null || true
    dirty="$(git status --porcelain -- "${modules[@]}" tests | awk '{print $2}' | tr '\n' ' ')"
    measured="working tree on $(git rev-parse --short HEAD)${dirty:+, differing from it in: $dirty}"
fi
find "$work" -name __pycache__ -prune -exec rm -rf {} +

# mutmut forks every mutant from a process that has imported the tests and run them once (stats,
# clean run): code run at import time (module-level decorations, `_lazy_operators(Node, ...)`) and
# per-process caches (`_ARG_KINDS`, the name counters) are not run again under the mutant. A test
# kills such mutants only by doing the thing inside the test (decorate there, define the class
# there, call the setup function on a fresh class), and must pass when run twice in one process.
#
# The tests that run in this process only: a mutant must be killed by what the core promises,
# and Ray workers or subprocesses would import the unmutated code.
tests=(
    tests/test_core_frontend.py tests/test_core_graph.py tests/test_core_storage.py tests/test_core_hooks.py
    tests/test_core_nodeplugins.py tests/test_runrecord.py tests/test_blindspots.py tests/test_documented.py
    tests/test_properties.py tests/test_inprocess_loops.py tests/test_runrecord_format.py tests/test_coverage_resume.py
)
# Ray, the CLI and S3 run their storage code in other processes (workers, subprocesses): left out.
keyword="not ray and not cli and not s3 and not entry_point"
case " ${modules[*]} " in
*" plugins_builtin/fsstorage.py "*)
    # fsstorage also gets the storage tests whose storage code runs here: faults injected in this
    # process (files truncated, bit-flipped, folders removed) and S3 on a moto server this process
    # starts on 127.0.0.1. Not those that wait for time-outs (seconds each, per mutant) or whose
    # storage code runs in child processes (unmutated there): they cannot kill a mutant.
    tests+=(
        tests/test_read_checks_fingerprint.py tests/test_coverage_storage.py
        tests/test_faults_index.py::test_a_mark_that_cannot_be_created_fails_the_save_and_is_not_left_in_progress
        tests/test_faults_index.py::test_the_fffp_folder_removed_during_a_run_is_made_again_and_no_index_is_trusted
        tests/test_faults_index.py::test_saves_of_a_run_override_what_it_listed_and_a_dead_mark_is_removed
        tests/test_faults_storage.py::test_removing_a_workflow_named_like_a_glob_removes_only_it
        tests/test_faults_storage.py::test_removing_a_task_named_like_a_glob_removes_only_it
        tests/test_faults_storage.py::test_failed_resave_leaves_the_previous_result_readable
        tests/test_faults_storage.py::test_resave_in_progress_does_not_disturb_readers_then_switches
        tests/test_faults_storage.py::test_storage_folder_removed_between_runs_in_one_process
        tests/test_faults_storage.py::test_tampered_zarr_chunks_raise_corrupt_result_naming_the_node
        tests/test_faults_storage.py::test_bad_storage_options_are_refused_with_a_did_you_mean
        tests/test_faults_storage.py::test_result_whose_module_is_gone_names_node_and_class
        tests/test_faults_storage.py::test_workflow_names_colliding_with_internal_files_are_refused
        tests/test_s3_storage.py::test_quickstart_saved_listed_read_resumed_removed
        tests/test_s3_storage.py::test_corrupt_result_on_s3_is_refused
        tests/test_s3_storage.py::test_missing_bucket_is_named_and_not_created
        tests/test_s3_storage.py::test_missing_credentials_are_named
        tests/test_s3_storage.py::test_bad_s3_options
        tests/test_s3_storage.py::test_no_stale_listings_between_storage_objects
        tests/test_s3_storage.py::test_concurrent_saves_from_threads
    )
    # S3 in this process is in; the docs' s3:// URL example runs the CLI in a subprocess. Out too: the
    # slowest scale and resume tests (seconds per mutant of every function they reach), whose storage
    # paths the storage tests above and tests/test_mutation_fsstorage.py reach faster.
    keyword="not ray and not cli and not entry_point and not s3_url_string and not noop_reruns_of_20000_nodes"
    keyword+=" and not resume_every_subset_of_a_stateful_program and not quickstart_saved_listed_read_resumed"
    # and a test that depends on the clock (two runs within one millisecond share a record key's
    # timestamp, and pruning keeps the wrong one): it failed the clean run once; a flaky test kills falsely
    keyword+=" and not only_the_last_keep_runs_records_are_kept"
    ;;
esac
# and every test written against survivors (tests/test_mutation_kills.py, tests/test_mutation_*.py)
for t in "$work"/tests/test_mutation_*.py; do [ -f "$t" ] && tests+=("tests/${t##*/}"); done
present=()
for t in "${tests[@]}"; do [ -f "$work/${t%%::*}" ] && present+=("$t"); done

only=""
for m in "${modules[@]}"; do only+="    $m"$'\n'; done
cat > "$work/setup.cfg" <<CFG
[mutmut]
source_paths =
    functionfuse
    plugins_builtin
only_mutate =
$only
pytest_add_cli_args =
    -p
    no:cacheprovider
    -q
    -x
    --timeout=120
    -o
    tmp_path_retention_policy=none
    -o
    tmp_path_retention_count=1
    -k
    $keyword
pytest_add_cli_args_test_selection =
$(for t in "${present[@]}"; do echo "    $t"; done)
CFG

cd "$work"
export RAY_AUTH_MODE=disabled
export FF_PROPERTY_SCALE="${FF_PROPERTY_SCALE:-0.2}"  # the properties run once per mutant
# Dask's threaded scheduler keeps a process-wide pool whose threads a forked mutant does not have:
# its computes would wait forever, and count as killed (timeout). Dask arrays compute in place here.
export DASK_SCHEDULER=synchronous
# Every mutant is a pytest session of its own (forked): its temporary folders are removed when it
# ends (retention "none" above), and no file may grow past 2 GiB. A mutant that writes without end
# (a broken loop in _write_all) once filled the disk with ~47 GB under /tmp/pytest-of-root, and every
# test after it failed on "no space left", which mutmut counts as kills. A file past the limit kills
# its writer (SIGXFSZ): the mutant is killed, the disk stays usable.
ulimit -f $((2 * 1024 * 1024))
mutmut run ${JOBS:+--max-children "$JOBS"} >"$work/mutmut-run.log" 2>&1 || { tail -30 "$work/mutmut-run.log"; exit 1; }
mutmut results --all true >"$work/results.txt" 2>&1 || true
python - "$work/results.txt" "${modules[@]}" <<'PY'
import sys
from collections import defaultdict

results, modules = sys.argv[1], sys.argv[2:]
by_module = defaultdict(lambda: defaultdict(list))
for line in open(results):
    if ":" not in line:
        continue
    name, _, status = line.strip().rpartition(":")
    name, status = name.strip(), status.strip()
    module = name.split(".x")[0].replace(".", "/") + ".py"  # functionfuse.graph.x_f__mutmut_3 -> functionfuse/graph.py
    by_module[module][status].append(name)
for module in modules:
    statuses = by_module.get(module, {})
    total = sum(len(v) for v in statuses.values())
    killed = len(statuses.get("killed", [])) + len(statuses.get("timeout", []))
    score = 100.0 * killed / total if total else 0.0
    print(f"{module}: {killed}/{total} killed ({score:.1f}%)  " +
          ", ".join(f"{k} {len(v)}" for k, v in sorted(statuses.items())))
    for status in ("survived", "no tests", "suspicious", "skipped"):
        for name in statuses.get(status, []):
            print(f"    {status}: {name}")
PY
echo "measured: $measured"
echo "scratch copy: $work (mutmut show NAME there)"
