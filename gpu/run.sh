#!/usr/bin/env bash
# Train on a lent GPU machine: PyTorch there, no TensorFlow, no network.
#
# Prepared here with `make gpu-bundle` (Flask's wheels in .whl/, because importing the
# package imports Flask; the training images and Set5 in .gpu-data/), then run there by
# the device tool with carry [".whl", ".gpu-data"]:
#
#     bash gpu/run.sh --C 3 --D 6 --G 32 --G0 32 --batch 32 --lr 3e-4 --steps 100000 --minutes 7
#
# Any supersizeme.train option may follow. The checkpoint and the log land in $OUT/run and
# $OUT/train.log; `python -m supersizeme.export --checkpoint <that ckpt.npz>` makes the
# served model folder back here, where TensorFlow is.
set -euo pipefail
PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
mkdir -p "$OUT/run"
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
"$PYTHON" -m supersizeme.train_torch --data .gpu-data/train --val .gpu-data/set5 \
    --out "$OUT/run" "$@" 2>&1 | tee "$OUT/train.log"
