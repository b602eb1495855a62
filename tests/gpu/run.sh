#!/usr/bin/env bash
# The one runner of the GPU checks (device tool, carry .whl; never in CI):
#   bash tests/gpu/run.sh graphs_equal layouts      # the named checks, in this order
#   bash tests/gpu/run.sh                           # the list
# Each check is tests/gpu/<name>.sh; its results land in $OUT/<name>/ (and its own /tmp folder, which
# a warm machine keeps for the next call). Exit status: the number of checks that failed.
set -u
cd "$(dirname "$0")/../.." || exit 1
checks=()
for f in tests/gpu/*.sh; do
  case $(basename "$f" .sh) in run | env | serve_lib) ;; *) checks+=("$(basename "$f" .sh)") ;; esac
done
if [ $# -eq 0 ]; then
  for c in "${checks[@]}"; do printf '%-16s %s\n' "$c" "$(sed -n 2p "tests/gpu/$c.sh" | cut -c3-)"; done
  exit 0
fi
failed=0
base=${OUT:-/tmp/gpu-checks}
for c in "$@"; do
  if [ ! -f "tests/gpu/$c.sh" ]; then echo "run.sh: no check '$c' (have: ${checks[*]})"; failed=$((failed + 1)); continue; fi
  echo "=== $c ($(date -u +%T))"
  mkdir -p "$base/$c"
  OUT="$base/$c" bash "tests/gpu/$c.sh" || failed=$((failed + 1))
done
exit "$failed"
