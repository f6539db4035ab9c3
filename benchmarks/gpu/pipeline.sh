#!/bin/bash
# The whole GPU run (issue 12), started once under setsid by call.sh; logs in /tmp/work/logs.
# Build llama-cpp-python with CUDA from the trimmed sdist, then llama-bench, llama-batched-bench and
# llama-server from the same vendored llama.cpp (same build dir), write the shaped GGUFs, measure.
W=/tmp/work; K=$W/kit; P=$W/proj; L=$W/logs; G=$P/benchmarks/gpu
M27=$W/models/q27b.gguf; M35=$W/models/q35b.gguf
export PYTHONPATH=$W/lcpp:$W/site PYTHONUNBUFFERED=1 PROJ_ROOT=$P
stage() { echo "STAGE $(date +%s.%N | cut -c1-14) $*" | tee -a $L/stages.txt; }
stage start
nvidia-smi > $L/nvidia-smi.txt 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --target $W/site $K/whl/*.whl > $L/pip.log 2>&1
stage wheels rc=$?
( python3 $G/make_shaped.py --preset 27b --vocab-dir $K/vocab --out $M27 > $L/make27b.log 2>&1; echo "rc=$?" >> $L/make27b.log
  python3 $G/make_shaped.py --preset 35b-a3b --vocab-dir $K/vocab --out $M35 > $L/make35b.log 2>&1; echo "rc=$?" >> $L/make35b.log ) &
python3 $G/make_shaped.py --preset tiny --vocab-dir $K/vocab --out $W/models/tiny.gguf > $L/make_tiny.log 2>&1
mkdir -p $W/src && tar xzf $K/lcpp_src.tar.gz -C $W/src
SRC=$W/src/llama_cpp_python-0.3.36; B=$W/build
stage build_start
CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF -DGGML_CCACHE=OFF" \
CMAKE_BUILD_PARALLEL_LEVEL=16 python3 -m pip install --no-build-isolation --no-deps --no-index --no-cache-dir -v \
  --config-settings=build-dir=$B --target $W/lcpp $SRC > $L/build.log 2>&1
stage build_done rc=$?
# llama.cpp's own tools, from the same build dir (only the tools compile; ggml/llama are built)
cmake $B -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF > $L/tools_cfg.log 2>&1 \
  && cmake --build $B --target llama-bench llama-batched-bench llama-server -j 16 > $L/tools_build.log 2>&1
stage tools rc=$?
LBENCH=$(find $B -name llama-bench -type f -perm -u+x | head -1)
BB=$(find $B -name llama-batched-bench -type f -perm -u+x | head -1)
SRV=$(find $B -name llama-server -type f -perm -u+x | head -1)
if [ -z "$LBENCH" ]; then  # fallback: the known-good hand compile of llama-bench
  LS=$SRC/vendor/llama.cpp; LIBDIR=$(dirname $(find $B -name 'libllama.so' | head -1)); BASEA=$(find $B -name 'libllama-common-base.a' | head -1)
  g++ -O2 -std=c++17 -I$LS/common -I$LS/include -I$LS/ggml/include -I$LS/vendor -I$LS/tools/llama-bench \
    $LS/tools/llama-bench/llama-bench.cpp $LS/tools/llama-bench/main.cpp -o $W/llama-bench \
    -L$LIBDIR -lllama-common $BASEA -lllama -lggml -lggml-base -pthread -Wl,-rpath,$LIBDIR > $L/bench_build.log 2>&1
  LBENCH=$W/llama-bench
fi
stage tools_found bench=$LBENCH batched=$BB server=$SRV
python3 -c "import llama_cpp; print(llama_cpp.__version__, llama_cpp.llama_supports_gpu_offload())" > $L/import.log 2>&1
nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 200 > $L/smi.csv 2>&1 &
tv() { # name, args... : benchmarks/tavern.py
  local n=$1; shift
  stage tv_$n
  ( cd $P && timeout ${TV_TIMEOUT:-900} python3 benchmarks/tavern.py --json $L/tv_$n.json "$@" > $L/tv_$n.md 2> $L/tv_$n.err )
  stage tv_${n}_done rc=$?
}
TV_TIMEOUT=180 tv tiny --model $W/models/tiny.gguf --gpu --scenarios throughput,shared --conc 1,8 --gen 16 --lore 300 --shared-lore 1000
LB="$LBENCH -ngl 99 -fa 1 -ctk q8_0 -ctv q8_0 -b 2048 -ub 512 -r 1 -o md"
BBA="-ngl 99 -fa on -ctk q8_0 -ctv q8_0 -b 2048 -ub 512 -npp 128 -ntg 128"
while ! grep -q rc= $L/make27b.log; do sleep 2; done
stage model27_ready $(tail -2 $L/make27b.log | tr '\n' ' ')
stage lb27
$LB -m $M27 -p 4096 -n 128 > $L/lb27_a.md 2> $L/lb27_a.err; stage lb27_a_done rc=$?
tv 27_tp --model $M27 --preset qwen3.5-27b-dialogue --gpu --scenarios throughput --conc 1,2,4,8 --lore 300 --gen 128 --n-seq 8 --n-batch 2048
stage bb27
$BB -m $M27 -c 4096 $BBA -npl 1,2,4,8 > $L/bb27.md 2> $L/bb27.err; stage bb27_done rc=$?
$BB -m $M27 -c 4096 $BBA -npl 8 -kvu > $L/bb27_kvu.md 2> $L/bb27_kvu.err; stage bb27_kvu_done rc=$?
stage srv27
$SRV -m $M27 -np 8 -c 32768 -ngl 99 -fa on -ctk q8_0 -ctv q8_0 -b 2048 -ub 512 --port 8099 > $L/srv27.log 2>&1 &
SPID=$!
timeout 240 python3 $G/server_bench.py --port 8099 --conc 1,8 --n-predict 128 --json $L/srv27.json > $L/srv27.md 2> $L/srv27.err
stage srv27_done rc=$?
kill $SPID; sleep 3; kill -9 $SPID 2>/dev/null
tv 27_32k --model $M27 --preset qwen3.5-27b-dialogue --gpu --scenarios cached --cached-lore 32000 --cached-turns 5 --gen 32 --n-seq 8 --n-batch 2048 --cached-conv 1,8
$LB -m $M27 -p 0 -n 64 -d 32768 > $L/lb27_b.md 2> $L/lb27_b.err; stage lb27_b_done rc=$?
while ! grep -q rc= $L/make35b.log; do sleep 2; done
stage model35_ready $(tail -2 $L/make35b.log | tr '\n' ' ')
$LB -m $M35 -p 4096 -n 128 > $L/lb35_a.md 2> $L/lb35_a.err; stage lb35_a_done rc=$?
tv 35_tp --model $M35 --preset qwen3.5-35b-a3b-batch --gpu --scenarios throughput --conc 1,8,16 --lore 300 --gen 128 --n-seq 16 --n-batch 2048
$BB -m $M35 -c 8192 $BBA -npl 1,8,16 > $L/bb35.md 2> $L/bb35.err; stage bb35_done rc=$?
stage probes
for spec in "qwen3.5-27b-dialogue $M27 36096 4" "qwen3.5-27b-dialogue $M27 135096 4" "qwen3.5-35b-a3b-batch $M35 36096 8"; do
  set -- $spec
  ( cd $P && timeout 180 python3 $G/plan_probe.py --preset $1 --model $2 --per-seq $3 --seqs $4 > $L/probe_$(basename $2 .gguf)_$3.log 2>&1 )
done
stage probes_done
TV_TIMEOUT=420 tv 27_128k --model $M27 --preset qwen3.5-27b-dialogue --gpu --scenarios cached --cached-lore 128000 --cached-turns 3 --gen 32 --n-seq 8 --n-batch 2048 --per-seq 130560 --cached-conv 8
stage ALL_DONE
