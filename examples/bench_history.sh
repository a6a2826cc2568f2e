#!/usr/bin/env bash
# The job figure on an empty database and after a long history, side by side:
# the shared harness's `loadgen throughput` (N jobs, 50 in flight, completion
# pushed over each job's stream, or with `feed` over one multiplexed feed)
# against herald on a fresh SQLite file, then on a copy of a file seeded with
# HISTORY finished jobs (examples/seed_history.rs), in the order
# empty, history, history, empty (machines here are noisy; compare ratios).
#
#   cargo build --release --bins --examples
#   LOADGEN=/tmp/herald-perf/target/release/loadgen examples/bench_history.sh [stream|feed]
#
# Server on CPU 0, load on CPU 1, as the harness pins them. Needs ~1.5 GB of
# disk per million jobs, twice (the seeded file and the copy a run writes to).
set -euo pipefail
MODE="${1:-stream}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HBIN="${HBIN:-$HERE/target/release/herald}"
SEED="${SEED:-$HERE/target/release/examples/seed_history}"
LOADGEN="${LOADGEN:?set LOADGEN to the shared harness loadgen (../shared/perf: ./setup.sh)}"
HISTORY="${HISTORY:-1000000}"
N="${N:-20000}"
WORK="$(mktemp -d /tmp/herald-history.XXXX)"
trap 'rm -rf "$WORK"' EXIT
PORT=8480

echo "seeding $HISTORY finished jobs" >&2
"$SEED" "sqlite://$WORK/seeded.db" --jobs "$HISTORY" >&2

run() {   # run LABEL DBFILE
    local label=$1 db=$2
    (ulimit -n 20000; HERALD_LISTEN=127.0.0.1:$PORT HERALD_DATABASE_URL="sqlite://$db" \
        HERALD_SHUTDOWN_GRACE_SECS=1 HERALD_PROGRESS_MIN_INTERVAL_MS=0 \
        HERALD_SUBMIT_RATE_PER_SEC=1000000 HERALD_MAX_STREAMS_PER_TENANT=1000000 RUST_LOG=warn \
        taskset -c 0 "$HBIN" serve >"$WORK/log" 2>&1 & echo $! >"$WORK/pid")
    local pid; pid=$(cat "$WORK/pid")
    for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
    local extra=""; [ "$MODE" = feed ] && extra="--wait-feed"
    (ulimit -n 20000; taskset -c 1 "$LOADGEN" throughput --url "http://127.0.0.1:$PORT" --jobs "$N" \
        --concurrency 50 $extra --server-pid "$pid" --label "$label" --quiet) |
        python3 -c "import json,sys; d=json.load(sys.stdin); print(f\"{sys.argv[1]:<22} {d['jobs_per_s']:>8.0f} jobs/s  p50 {d['e2e_p50_ms']:.1f} ms  p99 {d['e2e_p99_ms']:.1f} ms  server {d.get('server_us_per_job')} us/job  failed {d['jobs_failed']}  gaps/dups {d['jobs_with_gaps_or_dups']}\")" "$label"
    kill "$pid"; for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

fresh() { rm -f "$WORK"/run.db*; }
# The copy is written out before the run: otherwise the run's first
# checkpoint, whose fsync flushes the file, pays for writing the whole copy.
with_history() { fresh; cp "$WORK/seeded.db" "$WORK/run.db"; sync "$WORK/run.db"; }

fresh; run "empty ($MODE)" "$WORK/run.db"
with_history; run "$HISTORY stored ($MODE)" "$WORK/run.db"
with_history; run "$HISTORY stored ($MODE)" "$WORK/run.db"
fresh; run "empty ($MODE)" "$WORK/run.db"
