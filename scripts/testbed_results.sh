#!/usr/bin/env bash
# The live system benchmark of docs/results.md ("The two-datacenter testbed"): the paper's three
# deployments on equal hardware (12 emulated 8-GPU instances each) in `prfaas testbed`, and the
# scenarios (70% / 90% load, saturation, link drop with and without the controller and the same
# load without the drop, a burst of long prompts, the Mooncake conversation trace). Needs root,
# `ip` and `tc`; about an hour.
#
#   sudo scripts/testbed_results.sh OUT_DIR [SCENARIO ...]
#
# SCENARIO: capacity, capacity-paper, capacity10g, linkdrop, linkdrop70, burst, mooncake, codec,
# rtt, linkdrops (default: all but capacity10g, codec, rtt and linkdrops). Every run writes
# OUT_DIR/NAME.json (the `prfaas bench system` result), OUT_DIR/NAME.txt (its table) and
# OUT_DIR/NAME/ (its plots). `scripts/testbed_report.py OUT_DIR` summarizes them.
set -euo pipefail

OUT=${1:?usage: testbed_results.sh OUT_DIR [SCENARIO ...]}
shift
SCENARIOS=${*:-capacity capacity-paper linkdrop linkdrop70 burst mooncake}
PRFAAS=${PRFAAS:-.venv/bin/prfaas}
NAME=prfaas-results
# time and payload scale: the paper's timing in real time, payloads at 1/500 (wire 0.2 Gbps)
SCALE=(--time-scale 1 --payload-scale 0.002)
OUTPUT_TOKENS=128
# the link drop: 100 -> 10 Gbps nominal from 40 s for 90 s, at 90% and at 70% load; each load
# also runs without the drop (same seed, so the same requests at the same times): the steady state
# the drop is measured against
LOAD90=(--rate 2.7 --num-requests 400 --output-tokens "$OUTPUT_TOKENS")
LOAD70=(--rate 2.1 --num-requests 300 --output-tokens "$OUTPUT_TOKENS")
DROP=(--link-drop 40:90:10)
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
        # prefill timed by prfaas.perf's cost model, at the planner's splits for it: each
        # deployment at 70% and 90% of its planned capacity, then offered 1.4x it (saturated:
        # its steady throughput is its capacity); no SLO stops the list, and the KV deadline is
        # long enough for the saturated queues (a request waits for its prefill, not the link)
        LOAD=(--num-requests 200 --output-tokens "$OUTPUT_TOKENS" --ttft-slo-s 3600)
        up --deployment prfaas --prfaas 4 --pd-prefill 4 --pd-decode 4 --transfer-deadline 600
        bench prfaas "${LOAD[@]}" --rates 2.1,2.7,4.2
        up --deployment homogeneous --prfaas 0 --pd-prefill 10 --pd-decode 2 \
            --transfer-deadline 600
        bench homogeneous "${LOAD[@]}" --rates 0.9,1.15,1.8
        up --deployment naive --prfaas 4 --pd-prefill 0 --pd-decode 8 --transfer-deadline 600
        bench naive "${LOAD[@]}" --rates 3.6
        ;;
    capacity-paper)
        # prefill timed by the paper's curves (Table 5 for H200, the H20 curve Table 6 implies)
        # at the paper's own splits (Table 6: 4 / 3 / 5, 9 / 3, 4 / - / 8), same protocol
        LOAD=(--num-requests 200 --output-tokens "$OUTPUT_TOKENS" --ttft-slo-s 3600)
        PAPER=(--paper-curves --transfer-deadline 600)
        up --deployment prfaas --prfaas 4 --pd-prefill 3 --pd-decode 5 "${PAPER[@]}"
        bench paper-prfaas "${LOAD[@]}" --rates 2.25,2.9,4.5
        up --deployment homogeneous --prfaas 0 --pd-prefill 9 --pd-decode 3 "${PAPER[@]}"
        bench paper-homogeneous "${LOAD[@]}" --rates 1.5,1.9,3.0
        up --deployment naive --prfaas 4 --pd-prefill 0 --pd-decode 8 "${PAPER[@]}"
        bench paper-naive "${LOAD[@]}" --rates 3.4
        ;;
    linkdrop)
        # 90% load; the WAN drops from 100 to 10 Gbps nominal from 40 s to 130 s
        up --deployment prfaas --prfaas 4 --pd-prefill 4 --pd-decode 4
        bench linkdrop-static "${LOAD90[@]}" "${DROP[@]}"
        up --deployment prfaas --prfaas 4 --pd-prefill 4 --pd-decode 4 --controller
        bench linkdrop-controller "${LOAD90[@]}" "${DROP[@]}"
        up --deployment prfaas --prfaas 4 --pd-prefill 4 --pd-decode 4 --controller
        bench linkdrop-steady "${LOAD90[@]}"
        ;;
    linkdrop70)
        # the same drop at 70% load (2.1 req/s)
        up --deployment prfaas --prfaas 4 --pd-prefill 4 --pd-decode 4
        bench linkdrop70-static "${LOAD70[@]}" "${DROP[@]}"
        up --deployment prfaas --prfaas 4 --pd-prefill 4 --pd-decode 4 --controller
        bench linkdrop70-controller "${LOAD70[@]}" "${DROP[@]}"
        up --deployment prfaas --prfaas 4 --pd-prefill 4 --pd-decode 4 --controller
        bench linkdrop70-steady "${LOAD70[@]}"
        ;;
    codec)
        # KV compression on a 10 Gbps nominal link, where the uncoded deployment is link-bound
        # (cost-model prefill, 4 / 4 / 4, t by Eq. 7 for each codec's S_kv): each codec offered
        # 1.4x its planned capacity (none 2.589, fp8 and int4-rotated 3.159 req/s), then "auto"
        # on the same link and on the 100 Gbps link, where nothing binds and it must cost nothing
        LOAD=(--num-requests 200 --output-tokens "$OUTPUT_TOKENS" --ttft-slo-s 3600)
        CODEC=(--deployment prfaas --prfaas 4 --pd-prefill 4 --pd-decode 4 --transfer-deadline 600)
        up "${CODEC[@]}" --gbps 10 --compression none
        bench codec-10g-none "${LOAD[@]}" --rate 3.6
        up "${CODEC[@]}" --gbps 10 --compression fp8
        bench codec-10g-fp8 "${LOAD[@]}" --rate 4.4
        up "${CODEC[@]}" --gbps 10 --compression int4-rotated
        bench codec-10g-int4 "${LOAD[@]}" --rate 4.4
        up "${CODEC[@]}" --gbps 10 --compression auto
        bench codec-10g-auto "${LOAD[@]}" --rate 4.4
        up "${CODEC[@]}" --gbps 100 --compression auto
        bench codec-100g-auto "${LOAD[@]}" --rate 4.4
        up "${CODEC[@]}" --gbps 100 --compression none
        bench codec-100g-none "${LOAD[@]}" --rate 4.4
        ;;
    capacity10g)
        # the link binds: the paper's deployment (cost-model prefill, 4 / 4 / 4) on a 10 Gbps
        # nominal link, offered 3.6 req/s (above its capacity there); its steady throughput
        # against the simulator's and the planner's, both at the run's measured payload efficiency
        up --deployment prfaas --prfaas 4 --pd-prefill 4 --pd-decode 4 --gbps 10 \
            --transfer-deadline 600
        bench capacity10g --num-requests 200 --output-tokens "$OUTPUT_TOKENS" --ttft-slo-s 3600 \
            --rate 3.6
        ;;
    burst)
        # 50% load plus 64K-token prompts at 1 req/s for 20 s from 30 s
        up --deployment prfaas --prfaas 4 --pd-prefill 4 --pd-decode 4
        bench burst --rate 1.5 --num-requests 150 --output-tokens "$OUTPUT_TOKENS" \
            --burst 30:20:1:65536
        ;;
    rtt)
        # the WAN's distance: round trip 0, 20, 50 and 100 ms (one-way delay half of it, uniform
        # jitter of a fifth of the one-way delay, 0.01% loss per packet) at 70% and 90% load
        for rtt_ms in ${RTTS:-0 20 50 100}; do
            delay_ms=$(awk -v r="$rtt_ms" 'BEGIN { print r / 2 }')
            jitter_ms=$(awk -v r="$rtt_ms" 'BEGIN { print r / 10 }')
            up --deployment prfaas --prfaas 4 --pd-prefill 4 --pd-decode 4 \
                --delay-ms "$delay_ms" --jitter-ms "$jitter_ms" --loss-pct 0.01
            bench "rtt$rtt_ms-70" --rate 2.1 --num-requests "${RTT_REQUESTS70:-200}" \
                --output-tokens "$OUTPUT_TOKENS"
            bench "rtt$rtt_ms-90" --rate 2.7 --num-requests "${RTT_REQUESTS90:-250}" \
                --output-tokens "$OUTPUT_TOKENS"
        done
        ;;
    linkdrops)
        # link drops of several depths and lengths, static threshold and controller on the same
        # requests, at 90% and 70% load: to 10 Gbps nominal (the link binds) and to 25 Gbps
        # (it does not) for 90 s from 40 s, and to 10 Gbps for 30 s
        for load in 90 70; do
            if [ "$load" = 90 ]; then rate=2.7 long=400 short=250; else rate=2.1 long=300 short=200; fi
            for drop in ${DROPS:-10:90 25:90 10:30}; do
                gbps=${drop%%:*}
                seconds=${drop##*:}
                count=$long
                [ "$seconds" -le 30 ] && count=$short
                for how in static controller; do
                    flags=()
                    [ "$how" = controller ] && flags=(--controller)
                    up --deployment prfaas --prfaas 4 --pd-prefill 4 --pd-decode 4 "${flags[@]}"
                    bench "drop$load-${gbps}g${seconds}s-$how" --rate "$rate" --num-requests "$count" \
                        --output-tokens "$OUTPUT_TOKENS" --link-drop "40:$seconds:$gbps"
                done
            done
        done
        ;;
    mooncake)
        # the conversation trace's first 300 requests at its own timing (prefix reuse)
        up --deployment prfaas --prfaas 4 --pd-prefill 4 --pd-decode 4
        bench mooncake --trace "${TRACES:-../shared/data/traces}/mooncake_conversation_trace.jsonl" \
            --num-requests 300
        ;;
    *)
        echo "unknown scenario $scenario (see the header)" >&2
        exit 2
        ;;
    esac
done
