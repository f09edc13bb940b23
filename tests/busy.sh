#!/usr/bin/env bash
# The whole suite RUNS times in a row while a busy loop holds core 0: the timing margins must
# hold on a machine that is not idle. Prints each run's closing line and its wall time.
#   bash tests/busy.sh [RUNS] [PYTEST]      (make test-busy; PYTHON=... VENV=... for another Python)
set -u
runs=${1:-3}
pytest=${2:-.venv/bin/pytest}
taskset -c 0 sh -c 'while :; do :; done' &
spin=$!
trap 'kill $spin 2>/dev/null' EXIT
failed=0
for i in $(seq "$runs"); do
  start=$(date +%s)
  "$pytest" -q -p no:cacheprovider > "/tmp/tacore-busy-$(basename "$(dirname "$(dirname "$pytest")")")-$i.log" 2>&1 || failed=1
  echo "run $i: $(tail -n 1 "/tmp/tacore-busy-$(basename "$(dirname "$(dirname "$pytest")")")-$i.log") ($(( $(date +%s) - start )) s)"
done
exit $failed
