#!/bin/sh
# The compose file's one-shot job (image twinstream-train): train a twin encoder and export it to
# $TWINSTREAM_MODEL_PATH in the shared volume, where the workers and the API read it.
#
# - A model already there (an earlier run, or one you copied in) is kept: the job exits at once.
#   Delete it, or point TWINSTREAM_MODEL_PATH at a new file name, to train again.
# - A data set mounted at /data (one sub-folder per class) is used; otherwise the job generates
#   the coloured-shapes data set next to the model, so the workers can ingest it as a demo.
set -eu

model="${TWINSTREAM_MODEL_PATH:?TWINSTREAM_MODEL_PATH must name the .onnx file to write}"
artifacts="$(dirname "$model")"
name="$(basename "$model" .onnx)"

if [ -s "$model" ]; then
    echo "model exists: $model (delete it, or set TWINSTREAM_MODEL_PATH to a new file, to retrain)"
    exit 0
fi

if [ -d /data ] && [ -n "$(ls -A /data)" ]; then
    data=/data
else
    data="$artifacts/shapes"
    twinstream datasets shapes --out "$data" --per-class 100
fi

run="$artifacts/runs/$name"
twinstream train --data "$data" --out "$run" --epochs 8
# export stages the file and renames it into place: a worker never sees a half-written model.
twinstream export "$run" --out "$model" --sample "$data"
