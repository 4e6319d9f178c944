#!/usr/bin/env bash
# Train on a lent GPU machine: PyTorch there, no TensorFlow, no network.
#
# Prepared here with `make gpu-bundle` (the training images, Set5 and init.npz in
# .gpu-data/), then run by the device tool with carry [".gpu-data"]. The trainer needs
# PyTorch, numpy and Pillow, which the machine has, and nothing of the service:
#
#     bash gpu/run.sh gpu/jobs.txt
#
# Each line of the jobs file is a run's name and its supersizeme.toolchain.train options; the runs
# start together and share the GPU (small RDNs leave most of an H100 idle, so one run
# alone would waste it). Each run's checkpoint comes back as $OUT/<name>.npz (see
# supersizeme/toolchain/pack.py) and every log in $OUT/logs.txt; back here,
# `python -m supersizeme.toolchain.pack unpack` and
# `python -m supersizeme.toolchain.export --checkpoint ...` make the served model folder.
set -euo pipefail
PYTHON=${PYTHON:-python3}
RUNS=${RUNS:-/tmp/runs}
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
mkdir -p "$RUNS" "$OUT"
names=() pids=()
while read -r name options; do
    [[ -z $name || $name == \#* ]] && continue
    # $options is split into words on purpose: it is a command line.
    # shellcheck disable=SC2086
    "$PYTHON" -m supersizeme.toolchain.train_torch --data .gpu-data/train --val .gpu-data/set5 \
        --out "$RUNS/$name" $options >"$RUNS/$name.log" 2>&1 &
    names+=("$name") pids+=($!)
done <"$1"
failed=0
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || { echo "${names[$i]} failed"; failed=1; }
done
for name in "${names[@]}"; do
    printf '== %s\n' "$name" >>"$OUT/logs.txt"
    tr '\r' '\n' <"$RUNS/$name.log" >>"$OUT/logs.txt"
    grep -a "validation\|parameters on\|min, last" "$RUNS/$name.log" | tail -n 4 | sed "s/^/$name: /"
    [[ -f $RUNS/$name/ckpt.npz ]] && "$PYTHON" -m supersizeme.toolchain.pack pack "$RUNS/$name/ckpt.npz" "$OUT/$name"
done
exit "$failed"
