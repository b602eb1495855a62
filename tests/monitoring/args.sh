# shellcheck shell=bash
# The extra-vars that turn monitoring on in the tests (sourced by tests/monitoring/run.sh and
# tests/integration.sh, which serves the replicas layout with them so the monitoring stage needs no
# serve.yml runs of its own). Scrape every 5 s so rates have samples within seconds (the role's
# default is 15 s).
# shellcheck disable=SC2034  # used by the scripts that source this file
MONITORING_ARGS=(-e tpserve_monitoring_enabled=true -e monitoring_scrape_interval=5s -e monitoring_scrape_timeout=5s)
