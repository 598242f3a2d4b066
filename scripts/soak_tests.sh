#!/usr/bin/env bash
# scripts/soak_tests.sh N [pytest args...]: run the whole test suite N times in a row, print each run's
# exit code and wall time, then every test that failed in any run with how many runs it failed in.
# A suite that never flakes prints "no test failed in N runs". Logs and JUnit XML stay in $SOAK_DIR
# (default: a fresh temporary directory). PY picks the interpreter (default .venv/bin/python).
set -u
N=${1:?usage: scripts/soak_tests.sh N [pytest args...]}
shift
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SOAK_DIR=${SOAK_DIR:-$(mktemp -d -t rlhf-soak-XXXX)}
mkdir -p "$SOAK_DIR"
for i in $(seq 1 "$N"); do
    start=$(date +%s)
    "$PY" -m pytest -q -p no:cacheprovider --junitxml="$SOAK_DIR/run$i.xml" "$@" tests >"$SOAK_DIR/run$i.log" 2>&1
    rc=$?
    echo "run $i/$N: exit $rc, $(( $(date +%s) - start )) s  ($(tail -n 1 "$SOAK_DIR/run$i.log"))"
done
"$PY" - "$SOAK_DIR" "$N" <<'PYEOF'
import collections, glob, sys
import xml.etree.ElementTree as ET

soak_dir, runs = sys.argv[1], int(sys.argv[2])
failed = collections.Counter()
for path in sorted(glob.glob(f"{soak_dir}/run*.xml")):
    for case in ET.parse(path).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed[f"{case.get('classname')}::{case.get('name')}"] += 1
if not failed:
    print(f"no test failed in {runs} runs (logs: {soak_dir})")
for test, count in failed.most_common():
    print(f"{count}/{runs} failed: {test}")
sys.exit(1 if failed else 0)
PYEOF
