#!/bin/bash
# Round 2 of the GPU run (issue 12), after the first showed ~10 ms per step of host overhead at 8
# sequences and first-touch costs of new checkpoint buffers: rebuild (a fresh machine), then the same
# anchors and our numbers again in one run. Started by call.sh with PIPELINE=pipeline2.sh.
W=/tmp/work; K=$W/kit; P=$W/proj; L=$W/logs; G=$P/benchmarks/gpu
M27=$W/models/q27b.gguf; M35=$W/models/q35b.gguf
export PYTHONPATH=$W/lcpp:$W/site PYTHONUNBUFFERED=1 PROJ_ROOT=$P
stage() { echo "STAGE $(date +%s.%N | cut -c1-14) $*" | tee -a $L/stages.txt; }
stage start
python3 -m pip install -q --no-index --no-deps --no-compile --target $W/site $K/whl/*.whl > $L/pip.log 2>&1
( python3 $G/make_shaped.py --preset 27b --vocab-dir $K/vocab --out $M27 > $L/make27b.log 2>&1; echo "rc=$?" >> $L/make27b.log
  python3 $G/make_shaped.py --preset 35b-a3b --vocab-dir $K/vocab --out $M35 > $L/make35b.log 2>&1; echo "rc=$?" >> $L/make35b.log ) &
mkdir -p $W/src && tar xzf $K/lcpp_src.tar.gz -C $W/src
SRC=$W/src/llama_cpp_python-0.3.36; B=$W/build
stage build_start
CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF -DGGML_CCACHE=OFF" \
CMAKE_BUILD_PARALLEL_LEVEL=16 python3 -m pip install --no-build-isolation --no-deps --no-index --no-cache-dir -v \
  --config-settings=build-dir=$B --target $W/lcpp $SRC > $L/build.log 2>&1
stage build_done rc=$?
cmake $B -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF > $L/tools_cfg.log 2>&1 \
  && cmake --build $B --target llama-bench llama-server -j 16 > $L/tools_build.log 2>&1
stage tools rc=$?
LBENCH=$B/bin/llama-bench; SRV=$B/bin/llama-server
cat /sys/kernel/mm/transparent_hugepage/enabled > $L/thp.txt 2>&1
nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 200 > $L/smi.csv 2>&1 &
tv() { local n=$1; shift; stage tv_$n
  ( cd $P && timeout ${TV_TIMEOUT:-400} python3 benchmarks/tavern.py --json $L/tv_$n.json "$@" > $L/tv_$n.md 2> $L/tv_$n.err ); stage tv_${n}_done rc=$?; }
LB="$LBENCH -ngl 99 -fa 1 -ctk q8_0 -ctv q8_0 -b 2048 -ub 512 -r 1 -o md"
while ! grep -q rc= $L/make27b.log; do sleep 2; done
stage model27_ready
$LB -m $M27 -p 0 -n 128 > $L/lb27.md 2> $L/lb27.err; stage lb27_done rc=$?
tv 27_tp --model $M27 --preset qwen3.5-27b-dialogue --gpu --scenarios throughput --conc 1,8 --lore 300 --gen 128 --n-seq 8 --n-batch 2048
$SRV -m $M27 -np 8 -c 32768 -ngl 99 -fa on -ctk q8_0 -ctv q8_0 -b 2048 -ub 512 --port 8099 > $L/srv27.log 2>&1 &
SPID=$!
timeout 200 python3 $G/server_bench.py --port 8099 --conc 1,8 --n-predict 128 --json $L/srv27.json > $L/srv27.md 2> $L/srv27.err
stage srv27_done rc=$?
kill $SPID; sleep 3; kill -9 $SPID 2>/dev/null
tv 27_32k --model $M27 --preset qwen3.5-27b-dialogue --gpu --scenarios cached --cached-lore 32000 --cached-turns 8 --gen 32 --n-seq 8 --n-batch 2048 --cached-conv 1,8
while ! grep -q rc= $L/make35b.log; do sleep 2; done
stage model35_ready
$LB -m $M35 -p 0 -n 128 > $L/lb35.md 2> $L/lb35.err; stage lb35_done rc=$?
tv 35_tp --model $M35 --preset qwen3.5-35b-a3b-batch --gpu --scenarios throughput --conc 1,8,16 --lore 300 --gen 128 --n-seq 16 --n-batch 2048
stage ALL_DONE
