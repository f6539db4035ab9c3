"""Memory plan formulas vs the buffer sizes llama.cpp logs when it loads real GGUFs."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from narrative.presets import PRESETS, Arch, DoesNotFit, check_fits, plan, preset_settings, read_gguf_metadata

ROOT = Path(__file__).resolve().parents[2]

LOADER = """
import sys
from narrative.llm.model import _load_llama, _llama_kwargs, resolve_model_path
from narrative.settings import ModelSettings
s = ModelSettings(path=sys.argv[1], n_ctx=int(sys.argv[2]), n_seq_max=int(sys.argv[3]), type_k=sys.argv[4],
                  type_v=sys.argv[4], flash_attn=sys.argv[4] != "f16", n_threads=2)
kw = _llama_kwargs(s)
kw["verbose"] = True
_load_llama(resolve_model_path(s.path), kw, s.n_seq_max)
"""


def llama_buffers(path: str, n_ctx: int, n_seq: int, kv_type: str) -> dict[str, float]:
    """MiB per buffer as llama.cpp's load log reports them."""
    r = subprocess.run([sys.executable, "-c", LOADER, path, str(n_ctx), str(n_seq), kv_type], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    log = r.stderr + r.stdout
    out = {"weights": sum(float(x) for x in re.findall(r"model buffer size =\s+([\d.]+) MiB", log))}
    for key, pat in (
        ("kv", r"llama_kv_cache: size =\s+([\d.]+) MiB"),
        ("recurrent", r"llama_memory_recurrent: size =\s+([\d.]+) MiB"),
        ("output", r"output buffer size =\s+([\d.]+) MiB"),
        ("compute", r"sched_reserve:\s+\S+ compute buffer size =\s+([\d.]+) MiB"),
    ):
        m = re.findall(pat, log)
        out[key] = float(m[-1]) if m else 0.0
    return out


@pytest.mark.parametrize(
    "name,n_ctx,n_seq,kv_type",
    [("qwen35", 8192, 4, "q8_0"), ("qwen35moe", 6144, 3, "q4_0"), ("smollm2", 4096, 2, "f16")],
)
def test_plan_matches_llama_cpp_buffers_within_5_percent(fixture_paths, name, n_ctx, n_seq, kv_type):
    from narrative.llm import resolve_model_path

    path = "bundled:smollm2" if name == "smollm2" else str(fixture_paths[name])
    meta, tensor_bytes = read_gguf_metadata(resolve_model_path(path))
    arch = Arch.from_gguf_metadata(meta)
    p = plan(arch, n_ctx=n_ctx, n_seq_max=n_seq, type_k=kv_type, type_v=kv_type, weights_bytes=tensor_bytes, on_gpu=False)
    got = llama_buffers(path, n_ctx, n_seq, kv_type)
    want = {"weights": p.weights, "kv": p.kv, "recurrent": p.recurrent, "output": p.output, "compute": p.compute}
    if name == "smollm2":
        assert got["recurrent"] == 0 and p.recurrent == 0
    else:
        assert got["recurrent"] > 0
    for key, v in want.items():
        if key == "recurrent" and not v:
            continue
        mib = v / (1 << 20)
        assert abs(mib - got[key]) <= 0.05 * got[key] + 0.006, f"{key}: plan {mib:.3f} MiB, llama.cpp {got[key]:.3f} MiB"
    total_got = sum(got.values())
    assert abs(p.total / (1 << 20) - total_got) <= 0.05 * total_got


def test_real_model_numbers():
    """The per-sequence recurrent state and KV per token of the real models (see narrative.presets)."""
    a27 = PRESETS["qwen3.5-27b-dialogue"].arch
    a35 = PRESETS["qwen3.5-35b-a3b-batch"].arch
    assert a27.recurrent_bytes_per_seq() / (1 << 20) == pytest.approx(149.625)
    assert a35.recurrent_bytes_per_seq() / (1 << 20) == pytest.approx(62.8125)
    # DESIGN.md: 27B KV at ~1M tokens ~62 GiB f16, ~33 GiB q8_0, ~17 GiB q4_0
    for t, gib in (("f16", 61.65), ("q8_0", 32.75), ("q4_0", 17.34)):
        assert plan(a27, n_ctx=1_010_000, type_k=t, type_v=t).kv / (1 << 30) == pytest.approx(gib, abs=0.01)


def test_presets_settings_and_refusal():
    s = preset_settings("qwen3.5-27b-dialogue", "/m/27b.gguf", n_ctx=4 * 1_000_000)
    assert s["yarn_factor"] == 4.0 and s["yarn_orig_ctx"] == 262_144 and s["flash_attn"] and s["type_v"] == "q8_0"
    assert "yarn_factor" not in preset_settings("qwen3.5-27b-dialogue", "/m/27b.gguf", n_ctx=4 * 262_144)
    one = preset_settings("qwen3.5-35b-a3b-batch", "/m/35b.gguf", n_ctx=1_010_000, n_seq_max=1)  # the preset has 8
    assert one["n_seq_max"] == 1 and one["yarn_factor"] == 4.0
    with pytest.raises(ValueError, match="1,010,000"):
        preset_settings("qwen3.5-27b-dialogue", "/m/27b.gguf", n_ctx=4 * 2_000_000)
    with pytest.raises(KeyError, match="presets: qwen3.5-27b-dialogue"):
        preset_settings("nope", "/m")
    p = plan(PRESETS["qwen3.5-27b-dialogue"].arch, n_ctx=262_144, type_k="q8_0", type_v="q8_0")
    check_fits([p], 32 << 30, "GPU memory")
    with pytest.raises(DoesNotFit, match=r"needs 25\.\d\d GiB of GPU memory but 16\.00 GiB"):
        check_fits([p], 16 << 30, "GPU memory")


def test_sidecar_refuses_a_configuration_that_does_not_fit(tmp_path):
    from narrative.presets import ensure_fits
    from app.runtime import build_runtime
    from app.settings import load_settings
    from narrative.settings import ModelSettings

    p = ensure_fits(ModelSettings(n_ctx=4096), budget_gib=4.0)  # SmolLM2: ~92 MiB weights + 90 MiB KV + compute
    assert 0.1 * (1 << 30) < p.total < 0.5 * (1 << 30)
    with pytest.raises(DoesNotFit, match=r"needs .* but 50\.0 MiB is available \(dialogue: SmolLM2.*weights 92\.1 MiB"):
        ensure_fits(ModelSettings(n_ctx=4096), budget_gib=50 / 1024)
    s = load_settings(state_dir=tmp_path)
    s.context.memory_budget_gib = 0.05
    with pytest.raises(DoesNotFit):
        build_runtime(s, sync=False)
    assert not any(tmp_path.iterdir())  # refused before the lore index (or anything) was opened


# Peak GPU memory (nvidia-smi, MiB, from an idle GPU) of the shaped Q4_0 GGUFs on an H200, loaded by
# benchmarks/gpu/plan_probe.py (a full 512-token micro-batch plus one token in every sequence), and the
# files' tensor bytes (llama.cpp's CUDA0 + CPU_Mapped model buffers): docs/batching-h200.md.
H200_PEAKS = [
    # preset, cells per sequence, sequences, measured MiB
    ("qwen3.5-27b-dialogue", 36096, 4, 20443),
    ("qwen3.5-27b-dialogue", 135096, 4, 35247),
    ("qwen3.5-35b-a3b-batch", 36096, 8, 23261),
]
SHAPED_WEIGHTS_MIB = {"qwen3.5-27b-dialogue": 13754.79 + 682.03, "qwen3.5-35b-a3b-batch": 18393.41 + 272.81}


@pytest.mark.parametrize("preset,per_seq,seqs,measured_mib", H200_PEAKS)
def test_gpu_plan_within_3_percent_of_the_measured_h200_peak(preset, per_seq, seqs, measured_mib):
    from narrative.presets import PRESETS

    pre = PRESETS[preset]
    embd = pre.arch.n_vocab * pre.arch.n_embd * 18 // 32  # Q4_0 token embedding, kept in host memory
    arch = replace(pre.arch, embd_bytes=embd)
    weights = int(SHAPED_WEIGHTS_MIB[preset] * (1 << 20))
    p = plan(arch, n_ctx=per_seq * seqs, n_seq_max=seqs, type_k="q8_0", type_v="q8_0", weights_bytes=weights, on_gpu=True)
    got = p.total / (1 << 20)
    assert abs(got - measured_mib) <= 0.03 * measured_mib, f"plan {got:,.0f} MiB, measured {measured_mib:,} MiB"
