#!/usr/bin/env bash
# The live system benchmark of docs/results.md ("The two-datacenter testbed"): the paper's three
# deployments on equal hardware (12 emulated 8-GPU instances each) in `prfaas testbed`, and the
# scenarios (70% / 90% load, saturation, link drop with and without the controller, a burst of
# long prompts, the Mooncake conversation trace). Needs root, `ip` and `tc`; about 35 minutes.
#
#   sudo scripts/testbed_results.sh OUT_DIR [SCENARIO ...]
#
# SCENARIO: capacity, linkdrop, burst, mooncake (default: all). Every run writes
# OUT_DIR/NAME.json (the `prfaas bench system` result), OUT_DIR/NAME.txt (its table) and
# OUT_DIR/NAME/ (its plots). `scripts/testbed_report.py OUT_DIR` summarizes them.
set -euo pipefail

OUT=${1:?usage: testbed_results.sh OUT_DIR [SCENARIO ...]}
shift
SCENARIOS=${*:-capacity linkdrop burst mooncake}
PRFAAS=${PRFAAS:-.venv/bin/prfaas}
NAME=prfaas-results
# time and payload scale: the paper's timing in real time, payloads at 1/500 (wire 0.2 Gbps)
SCALE=(--time-scale 1 --payload-scale 0.002)
OUTPUT_TOKENS=128
mkdir -p "$OUT"

up() {  # up DEPLOYMENT-FLAGS...
    "$PRFAAS" testbed down --name "$NAME" >/dev/null 2>&1 || true
    "$PRFAAS" testbed up --name "$NAME" "${SCALE[@]}" "$@"
}

down() {
    "$PRFAAS" testbed down --name "$NAME"
}

bench() {  # bench RUN-NAME BENCH-FLAGS...
    local run=$1
    shift
    mkdir -p "$OUT/$run"
    "$PRFAAS" bench system --testbed "$NAME" --seed 1 --warmup-rounds 1 \
        --output "$OUT/$run.json" --plot "$OUT/$run" "$@" | tee "$OUT/$run.txt"
}

trap down EXIT

for scenario in $SCENARIOS; do
    case $scenario in
    capacity)
        # each deployment at 70% and 90% of its planned capacity, then offered 1.4x it
        # (saturated: its steady throughput is its capacity); no SLO stops the list
        LOAD=(--num-requests 200 --output-tokens "$OUTPUT_TOKENS" --ttft-slo-s 3600)
        up --deployment prfaas --prfaas 4 --pd-prefill 4 --pd-decode 4
        bench prfaas "${LOAD[@]}" --rates 2.1,2.7,4.2
        up --deployment homogeneous --prfaas 0 --pd-prefill 10 --pd-decode 2
        bench homogeneous "${LOAD[@]}" --rates 0.9,1.15,1.8
        up --deployment naive --prfaas 4 --pd-prefill 0 --pd-decode 8
        bench naive "${LOAD[@]}" --rates 3.6
        ;;
    linkdrop)
        # 90% load; the WAN drops from 100 to 10 Gbps nominal from 40 s to 130 s
        DROP=(--rate 2.7 --num-requests 400 --output-tokens "$OUTPUT_TOKENS" --link-drop 40:90:10)
        up --deployment prfaas --prfaas 4 --pd-prefill 4 --pd-decode 4
        bench linkdrop-static "${DROP[@]}"
        up --deployment prfaas --prfaas 4 --pd-prefill 4 --pd-decode 4 --controller
        bench linkdrop-controller "${DROP[@]}"
        ;;
    burst)
        # 50% load plus 64K-token prompts at 1 req/s for 20 s from 30 s
        up --deployment prfaas --prfaas 4 --pd-prefill 4 --pd-decode 4
        bench burst --rate 1.5 --num-requests 150 --output-tokens "$OUTPUT_TOKENS" \
            --burst 30:20:1:65536
        ;;
    mooncake)
        # the conversation trace's first 300 requests at its own timing (prefix reuse)
        up --deployment prfaas --prfaas 4 --pd-prefill 4 --pd-decode 4
        bench mooncake --trace "${TRACES:-../shared/data/traces}/mooncake_conversation_trace.jsonl" \
            --num-requests 300
        ;;
    *)
        echo "unknown scenario $scenario (capacity, linkdrop, burst, mooncake)" >&2
        exit 2
        ;;
    esac
done
