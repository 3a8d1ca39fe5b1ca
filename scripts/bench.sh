#!/usr/bin/env bash
# `make bench [BENCH=<section>]`: the performance benchmarks, one section or all of them.
# Each prints its table and ratio lines and keeps its raw figures (see each script's help).
#   transfer       MB/s per transfer backend against `ssh cat` (scripts/bench_transfer.py)
#   critical-path  the suite's downtime (fused, stepwise) against CRIU chained by hand, and
#                  three pairs at once against one at a time (scripts/bench_critical_path.py)
#   tls            the page server with and without TLS (page_server_tls): the dump by hand
#                  and the suite's fused path (scripts/bench_tls.py)
#   links          each cloud link profile on the lab's link, measured against itself: RTT,
#                  a TCP stream, the transfer's SSH (scripts/bench_links.py; docs/links.md)
#   links-downtime the memory workload's migration time per link profile, strategy and
#                  size, against the 30 s / 120 s notices (~1 h; only when named)
set -euo pipefail
cd "$(dirname "$0")/.."
export ANSIBLE_CONFIG="$PWD/ansible.cfg"
sections=(transfer critical-path tls links)
run_section() {
  case "$1" in
    transfer) .venv/bin/python scripts/bench_transfer.py ;;
    critical-path) .venv/bin/python scripts/bench_critical_path.py ;;
    tls) .venv/bin/python scripts/bench_tls.py ;;
    links) .venv/bin/python scripts/bench_links.py ;;
    links-downtime) .venv/bin/python scripts/bench_links.py --downtime ;;
    *) echo "make bench: unknown section BENCH=$1; sections: ${sections[*]} links-downtime (or all)" >&2; exit 2 ;;
  esac
}
if [ "${1:-all}" = all ]; then
  for section in "${sections[@]}"; do
    echo "== make bench: $section"
    run_section "$section"
  done
else
  run_section "$1"
fi
