#!/bin/bash
# Issue 12's last two items on one H200, in one pipeline (started by call.sh with PIPELINE=pipeline_snap.sh):
#  A. the return cost of an NPC evicted to the RAM store (27B shape, 4 sequences, 32k then 8k lore per NPC):
#     snapshot_return.py;
#  B. `narrative batch --parallel 16` on 16 sample quests (35B-A3B shape): benchmarks/batch.py --gpu.
# install wheels -> both shaped models written in the background -> CUDA build -> A -> B if time is left.
# Everything ends by DEADLINE s after the start (device budget): each stage runs under `timeout`.
# Dry run on a CPU: DRY=1 W=/tmp/dry P=. M27=tiny.gguf M35=tinymoe.gguf SNAP_LORE=512,256 SNAP_ARGS="--cpu --threads 1" \
#   QUESTS=2 PAR=2 THREADS=1 PY=.venv/bin/python bash benchmarks/gpu/pipeline_snap.sh
W=${W:-/tmp/work}; K=$W/kit; P=${P:-$W/proj}; L=$W/logs; G=$P/benchmarks/gpu
M27=${M27:-$W/models/q27b.gguf}; M35=${M35:-$W/models/q35b.gguf}
DEADLINE=${DEADLINE:-590}   # s after the start: the pipeline ends here
SNAP_LORE=${SNAP_LORE:-32768,8192}
SNAP_BY=${SNAP_BY:-470}     # s after the start: no new lore scenario of A after this
B_MIN=${B_MIN:-60}          # B starts only with at least this many s left
QUESTS=${QUESTS:-16}; PAR=${PAR:-16}; THREADS=${THREADS:-8}
export PYTHONPATH=$W/lcpp:$W/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PROJ_ROOT=$P
mkdir -p $L
T0=$(date +%s)
PY=${PY:-python3}
stage() { echo "STAGE $(date +%s.%N | cut -c1-14) $*" | tee -a $L/stages.txt; }
left() { echo $(( T0 + $1 - $(date +%s) )); }
stage start
if [ -z "$DRY" ]; then
  nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 250 > $L/smi.csv 2>&1 &
  SMI=$!
  nvidia-smi > $L/smi_start.txt 2>&1
  $PY -m pip install -q --no-index --no-deps --no-compile --target $W/site $K/whl/*.whl > $L/pip.log 2>&1
  ( $PY $G/make_shaped.py --preset 27b --vocab-dir $K/vocab --out $M27 > $L/make27b.log 2>&1; echo "rc=$?" >> $L/make27b.log
    $PY $G/make_shaped.py --preset 35b-a3b --vocab-dir $K/vocab --out $M35 > $L/make35b.log 2>&1; echo "rc=$?" >> $L/make35b.log ) &
  mkdir -p $W/src && tar xzf $K/lcpp_src.tar.gz -C $W/src
  SRC=$W/src/llama_cpp_python-0.3.36; B=$W/build
  stage build_start
  CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF -DGGML_CCACHE=OFF" \
  CMAKE_BUILD_PARALLEL_LEVEL=16 timeout $(left 420) $PY -m pip install --no-build-isolation --no-deps --no-index --no-cache-dir -v \
    --config-settings=build-dir=$B --target $W/lcpp $SRC > $L/build.log 2>&1
  rc=$?
  stage build_done rc=$rc
  if [ $rc -ne 0 ]; then tail -30 $L/build.log; stage ALL_DONE build_failed; exit 1; fi
  while ! grep -q rc= $L/make27b.log 2>/dev/null; do sleep 2; done
  stage model27_ready $(tail -2 $L/make27b.log | tr '\n' ' ')
else
  echo "rc=0 (dry: $M27)" > $L/make27b.log; echo "rc=0 (dry: $M35)" > $L/make35b.log
fi

# A: the snapshot return cost (27B, the dialogue preset's 4 sequences)
stage snapshot left=$(left $DEADLINE)s
timeout $(left $DEADLINE) $PY $G/snapshot_return.py --model $M27 --preset qwen3.5-27b-dialogue --n-seq 4 --lore $SNAP_LORE --gen 32 \
  --ram-mib 32768 --deadline $(( T0 + SNAP_BY )) --json $L/snapshot.json ${SNAP_ARGS} > $L/snapshot.md 2> $L/drv_snap.log
stage snapshot_done rc=$?

# B: quests, --parallel 16 beside the batched decoder at 1 and the one-at-a-time path (rows printed as they end)
if [ -z "$DRY" ]; then
  while ! grep -q rc= $L/make35b.log 2>/dev/null && [ $(left $DEADLINE) -gt 0 ]; do sleep 2; done
  stage model35_ready $(tail -2 $L/make35b.log | tr '\n' ' ')
fi
if [ $(left $DEADLINE) -gt $B_MIN ]; then
  stage batch left=$(left $DEADLINE)s
  ( cd $P && timeout $(left $DEADLINE) $PY benchmarks/batch.py --quests $QUESTS --parallel $PAR --max-chars 60 --model $M35 \
      --gpu qwen3.5-35b-a3b-batch --threads $THREADS ${BATCH_ARGS} ) > $L/parallel.md 2> $L/drv_batch.log
  stage batch_done rc=$?
else
  stage batch_skipped left=$(left $DEADLINE)s
fi
if [ -z "$DRY" ]; then kill $SMI 2>/dev/null; timeout 20 $PY $G/smi_peaks.py $L > $L/smi_peaks.txt 2>&1; fi
stage ALL_DONE
