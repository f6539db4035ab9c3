#!/bin/bash
# Issue 12's headline on one H200: the Qwen3.5-35B-A3B shape with a 1,010,000-token context and q4_0 KV
# (`narrative models plan` puts q8_0 over 32 GiB at this context), ~1M tokens of lore prefilled through
# the project's engine, then the next turns timed (headline_1m.py). Started by call.sh with
# PIPELINE=pipeline_1m.sh: install wheels -> shaped model in the background -> CUDA build -> llama-bench
# -> plans -> the headline run (its prefill stops at DEADLINE s after the start) -> anchors if time is left.
# Dry run on a CPU: DRY=1 W=/tmp/dry M35=tiny.gguf CTX=8192 bash pipeline_1m.sh (no build, no smi).
W=${W:-/tmp/work}; K=$W/kit; P=${P:-$W/proj}; L=$W/logs; G=$P/benchmarks/gpu
M35=${M35:-$W/models/q35b.gguf}
CTX=${CTX:-1010000}; KV=${KV:-q4_0}
DEADLINE=${DEADLINE:-1320}   # s after the start: the prefill stops there (device budget)
ANCHOR_BY=${ANCHOR_BY:-1150} # s after the start: later than this, the anchors are skipped
export PYTHONPATH=$W/lcpp:$W/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PROJ_ROOT=$P
mkdir -p $L
T0=$(date +%s)
PY=${PY:-python3}
stage() { echo "STAGE $(date +%s.%N | cut -c1-14) $*" | tee -a $L/stages.txt; }
left() { echo $(( T0 + $1 - $(date +%s) )); }
stage start
if [ -z "$DRY" ]; then
  nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 250 > $L/smi.csv 2>&1 &
  nvidia-smi > $L/smi_start.txt 2>&1
  $PY -m pip install -q --no-index --no-deps --no-compile --target $W/site $K/whl/*.whl > $L/pip.log 2>&1
  ( $PY $G/make_shaped.py --preset 35b-a3b --vocab-dir $K/vocab --out $M35 > $L/make35b.log 2>&1; echo "rc=$?" >> $L/make35b.log ) &
  mkdir -p $W/src && tar xzf $K/lcpp_src.tar.gz -C $W/src
  SRC=$W/src/llama_cpp_python-0.3.36; B=$W/build
  stage build_start
  CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF -DGGML_CCACHE=OFF" \
  CMAKE_BUILD_PARALLEL_LEVEL=16 $PY -m pip install --no-build-isolation --no-deps --no-index --no-cache-dir -v \
    --config-settings=build-dir=$B --target $W/lcpp $SRC > $L/build.log 2>&1
  stage build_done rc=$?
  cmake $B -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_UI=OFF > $L/tools_cfg.log 2>&1 \
    && cmake --build $B --target llama-bench -j 16 > $L/tools_build.log 2>&1
  stage tools rc=$?
  LBENCH=$B/bin/llama-bench
  while ! grep -q rc= $L/make35b.log 2>/dev/null; do sleep 2; done
  stage model35_ready $(tail -2 $L/make35b.log | tr '\n' ' ')
else
  echo "rc=0 (dry: $M35)" > $L/make35b.log
fi
# the memory plan the CLI prints for this file and configuration (q4_0 measured; q8_0 for the record)
for kv in q4_0 q8_0; do
  ( cd $P && $PY -m app models plan --preset qwen3.5-35b-a3b-batch --model $M35 --ctx $CTX --kv $kv --batch-preset none --gpu-gib 32 ) > $L/plan_$kv.md 2>&1
done
( cd $P && $PY -m app models plan --preset qwen3.5-35b-a3b-batch --ctx $CTX --kv q8_0 --batch-preset none --gpu-gib 32 ) > $L/plan_q8_0_q4km.md 2>&1
( cd $P && $PY -m app models plan --preset qwen3.5-35b-a3b-batch --ctx $CTX --kv q4_0 --batch-preset none --gpu-gib 32 ) > $L/plan_q4_0_q4km.md 2>&1
stage plans_done
stage headline deadline_in=$(left $DEADLINE)s
$PY $G/headline_1m.py --model $M35 --ctx $CTX --kv $KV --turns 5 --gen 32 --deadline $(( T0 + DEADLINE )) --json $L/headline.json \
  ${HEADLINE_ARGS} > $L/headline.md 2> $L/drv_1m.log
stage headline_done rc=$?
if [ -z "$DRY" ] && [ $(left $ANCHOR_BY) -gt 0 ]; then
  # llama.cpp's own numbers on the same file and KV type at one deep depth (each test prefills 131,072 tokens first)
  timeout $(( $(left $ANCHOR_BY) + 60 )) $LBENCH -m $M35 -ngl 99 -fa 1 -ctk $KV -ctv $KV -b 2048 -ub 512 -r 1 -p 512 -n 32 -d 131072 -o md > $L/lb_d131k.md 2> $L/lb_d131k.err
  stage lb_d131k rc=$?
fi
if [ -z "$DRY" ] && [ $(left $ANCHOR_BY) -gt 0 ]; then
  # measured peak of the q8_0 configuration the plan refuses for 32 GiB (memory only: load + one n_batch decode)
  timeout 120 $PY $G/plan_probe.py --model $M35 --preset qwen3.5-35b-a3b-batch --per-seq $CTX --seqs 1 > $L/probe_q8.log 2>&1
  stage probe_q8 rc=$?
fi
[ -z "$DRY" ] && $PY $G/smi_peaks.py $L > $L/smi_peaks.txt 2>&1
stage ALL_DONE
