#!/usr/bin/env bash
# Static checks for the whole repository: yamllint, ansible-lint (production profile), ruff
# (check + format --check) and shellcheck on tests/**/*.sh. Runs every check, then fails if any
# failed. Usage: tests/lint.sh   (make lint)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="${PWD}/.venv/bin:${PATH}"

failed=()
run() {
  local name=$1
  shift
  printf '== lint: %s\n' "${name}"
  if "$@"; then
    printf '== lint: %s ok\n' "${name}"
  else
    printf '== lint: %s FAILED\n' "${name}" >&2
    failed+=("${name}")
  fi
}

run yamllint yamllint --strict .
run ansible-lint ansible-lint --nocolor
run "ruff check" ruff check .
run "ruff format" ruff format --check .
if command -v shellcheck >/dev/null; then
  mapfile -t scripts < <(git ls-files --cached --others --exclude-standard -- 'tests/*.sh' 'tests/**/*.sh' '.ci/run' | sort -u)
  run shellcheck shellcheck -x "${scripts[@]}"
else
  echo "== lint: shellcheck is not installed (make deps): skipped"
fi

# The real cluster's inventory: only --syntax-check and --list-hosts, which never connect.
jakarta_offline() {
  local pb listed node
  for pb in site.yml serve.yml smoketest.yml; do
    ansible-playbook -i inventory/jakarta --syntax-check "${pb}" >/dev/null || return 1
  done
  listed=$(ansible-playbook -i inventory/jakarta --list-hosts site.yml) || return 1
  for node in te1 te2 te3 te4; do
    grep -qw "${node}" <<<"${listed}" ||
      { echo "inventory/jakarta: ${node} missing from site.yml --list-hosts" >&2; return 1; }
  done
}
run "inventory/jakarta (syntax-check, list-hosts; no connection)" jakarta_offline

if ((${#failed[@]})); then
  echo "lint: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "lint: all checks passed"
