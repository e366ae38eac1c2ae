#!/bin/sh
# A/B runs of LiveAvatar's speed options at one generated size on one GPU, in parts that each fit a 10-minute device
# call; every run is a perf/ bench that writes its own JSON into $OUT (bench_e2e_gpu: ~100 s a run at 832x480).
#
#   perf/liveavatar_ab.sh e2e      # baseline (BEFORE=<checkout of an older commit>, if set), then each switch
#   perf/liveavatar_ab.sh tuning   # VAE compile (the GPU profile's settings), then also the VAE's channels-last layout
#   perf/liveavatar_ab.sh kernels  # VAE layouts against float32, flow interpolation cost, the GPU-only tests
#   perf/liveavatar_ab.sh before   # the baseline alone (BEFORE required)
#
# SIZE (default 832x480) picks the generated size, or sizes (832x480,704x384: one process, one engine build);
# RUN_S (default 170) bounds each bench.
set -eu
part=${1:?usage: liveavatar_ab.sh e2e|tuning|kernels|before}
out=${OUT:?set OUT to the folder for the JSON files}
size=${SIZE:-832x480}
limit=${RUN_S:-170}
bench="--engine liveavatar --sizes $size --overlap on --warmup-seconds 3"
run() {  # name, then the command; its log beside its JSON, a failure reported and the next run still made
    name=$1
    shift
    echo "== $name: $*"
    timeout "$limit" "$@" >"$out/$name.log" 2>&1 || echo "== $name failed (exit $?): see $out/$name.log"
    tail -n 1 "$out/$name.log" | cut -c 1-400
}
before() {  # an older bench always resized on the GPU: the "exact" run below keeps that path, so the two compare
    (cd "$BEFORE" && run before python3 perf/bench_e2e_gpu.py $bench --out "$out/e2e_before.json")
}
case $part in
e2e)
    if [ -n "${BEFORE:-}" ]; then
        before
    fi
    run exact python3 perf/bench_e2e_gpu.py $bench --resize gpu --no-release-residual --out "$out/e2e_exact.json"
    run release python3 perf/bench_e2e_gpu.py $bench --out "$out/e2e_release.json"
    ;;
tuning)
    run vae_compile python3 perf/bench_e2e_gpu.py $bench --vae-compile --out "$out/e2e_vae_compile.json"
    run vae_both python3 perf/bench_e2e_gpu.py $bench --vae-compile --vae-memory-format channels_last_3d \
        --out "$out/e2e_vae_both.json"
    ;;
kernels)
    run vae python3 perf/bench_vae_gpu.py --sizes "$size" --parts variants --out "$out/vae_variants.json"
    run interpolation python3 perf/bench_interpolation.py --device cuda --frames 0 --out "$out/interpolation.json"
    run gpu_tests python3 -m pytest -q tests/unit/test_wan_causal_s2v.py tests/unit/test_frame_interpolation.py \
        -k "wait or gpu"
    ;;
before)
    : "${BEFORE:?set BEFORE to a checkout of the older commit}"
    before
    ;;
*)
    echo "unknown part $part: e2e, tuning, kernels or before" >&2
    exit 2
    ;;
esac
