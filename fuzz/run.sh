#!/bin/sh
# Fuzzes each of Portvagt's parsers for a while: `fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]`
# (default 300 seconds, every target). Needs cargo-fuzz (installed on first use) and a nightly
# toolchain (libFuzzer's sanitizer flags). The working corpus is fuzz/corpus/<target> (not
# committed), started from fuzz/seeds/<target>; a crash is written to fuzz/artifacts/<target>/:
# copy it to fuzz/regressions/<target>/ and fix it, and `make test` replays it from then on.
set -eu
cd "$(dirname "$0")"
seconds=${1:-300}
[ $# -gt 0 ] && shift
targets=${*:-"classify scope jwt saml response_filter config fhir_xml"}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
report=results.md
printf '# Fuzzing, %s\n\n`fuzz/run.sh %s`, %s s per target.\n\n| target | runs | corpus | crashes |\n|---|---|---|---|\n' \
  "$(date -u +%Y-%m-%d)" "$seconds" "$seconds" > "$report"
for target in $targets; do
  mkdir -p "corpus/$target" "artifacts/$target"
  cp -n seeds/"$target"/* "corpus/$target/" 2>/dev/null || true
  log="artifacts/$target.log"
  status=0
  cargo +nightly fuzz run "$target" "corpus/$target" -- -print_final_stats=1 \
    -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 >"$log" 2>&1 || status=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  corpus=$(ls "corpus/$target" | wc -l)
  crashes=$(ls "artifacts/$target" | grep -c -E '^(crash|leak|timeout|oom)-' || true)
  printf '| %s | %s | %s | %s |\n' "$target" "$runs" "$corpus" "$crashes" >> "$report"
  echo "$target: $runs runs, $corpus in corpus, $crashes crashes (exit $status)"
done
cat "$report"
