#!/usr/bin/env bash
# Runs every parser's cargo-fuzz target for FUZZ_SECONDS each (default 60): the PROXY v2
# parser (holder/fuzz), the metrics push and Prometheus line readers, and the postgres
# ready check's readers of a server's answer and of postmaster.pid (core/fuzz).
# `make fuzz` calls it. cargo-fuzz is installed into .tools/ on first use.
#
# cargo-fuzz passes nightly-only flags to rustc (the sanitizer, coverage instrumentation);
# this machine has one stable toolchain and can fetch no other, and RUSTC_BOOTSTRAP=1 is
# how a stable rustc accepts them. Nothing else is built with it.
set -euo pipefail
cd "$(dirname "$0")/.."
each=${FUZZ_SECONDS:-60}
tools="$PWD/.tools"
if [ ! -x "$tools/bin/cargo-fuzz" ]; then
  echo "fuzz: installing cargo-fuzz into .tools/"
  cargo install --locked --quiet cargo-fuzz --root "$tools"
fi
export PATH="$tools/bin:$PATH" RUSTC_BOOTSTRAP=1
for spec in holder/fuzz:proxy_header core/fuzz:metrics_push core/fuzz:prometheus_text core/fuzz:postgres_answer core/fuzz:postmaster_pid_file; do
  dir=${spec%%:*}
  target=${spec##*:}
  echo "fuzz: $dir $target for ${each}s"
  (cd "$dir" && cargo fuzz run "$target" -- -max_total_time="$each" -print_final_stats=1)
done
