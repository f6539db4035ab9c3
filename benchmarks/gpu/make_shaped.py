"""Full-size Qwen3.5-shaped GGUF (qwen35 27B or qwen35moe 35B-A3B) with random Q4_0 weights.

Metadata and tokenizer as tests/fixtures/make_qwen35.py (qwen35 test vocab +
Qwen added tokens, Qwen3.5-4B chat template), vocab padded with UNUSED
[PADn] tokens to the real 248,320. Matmul weights: raw Q4_0 blocks, one
constant f16 scale per tensor (1/(4.64*sqrt(fan_in))) and random nibbles, so
no NaN/Inf. Norms, ssm_conv1d, ssm_a, ssm_dt.bias, routers: F32.
Written tensor by tensor (no full model in RAM).

    python make_shaped.py --preset 27b --vocab-dir DIR --out X.gguf
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import os
ROOT = Path(os.environ.get("PROJ_ROOT", Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(ROOT))
import gguf  # noqa: E402
from tests.fixtures.make_qwen35 import read_sources, tokenizer_fields  # noqa: E402

N_VOCAB = 248_320
PRESETS = {
    # n_embd, layers, heads, kv heads, head_dim, n_ff, ssm groups (QK heads), V heads
    "27b": dict(E=5120, L=64, H=24, HKV=4, HD=256, FF=17408, G=16, VH=48, moe=False),
    "tiny": dict(E=256, L=4, H=2, HKV=1, HD=256, FF=512, G=2, VH=4, moe=False),
    "tinymoe": dict(E=256, L=4, H=2, HKV=1, HD=256, FF=0, G=2, VH=4, moe=True, NEXP=8, NUSED=2, FFEXP=64, FFSH=64),
    "35b-a3b": dict(E=2048, L=40, H=16, HKV=2, HD=256, FF=0, G=16, VH=32, moe=True,
                    NEXP=256, NUSED=8, FFEXP=512, FFSH=512),
}
Q40 = gguf.GGMLQuantizationType.Q4_0
POOL = None


def q4_bytes(shape_np: tuple[int, ...], rng) -> np.ndarray:
    """Raw Q4_0 blocks for a tensor of numpy shape (..., ne0): uint8 (..., ne0/32*18)."""
    global POOL
    ne0 = shape_np[-1]
    assert ne0 % 32 == 0, shape_np
    nblk = int(np.prod(shape_np)) // 32
    scale = np.float16(1.0 / (4.64 * np.sqrt(ne0)))
    out = np.empty((nblk, 18), dtype=np.uint8)
    out[:, 0:2] = np.frombuffer(scale.tobytes(), dtype=np.uint8)
    if POOL is None:
        POOL = rng.integers(0, 256, size=(1 << 22, 16), dtype=np.uint8)  # 64 MiB of random nibbles
    done = 0
    while done < nblk:
        n = min(nblk - done, POOL.shape[0])
        off = int(rng.integers(0, POOL.shape[0] - n + 1))
        out[done:done + n, 2:] = POOL[off:off + n]
        done += n
    return out.reshape(*shape_np[:-1], ne0 // 32 * 18)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", choices=sorted(PRESETS), required=True)
    ap.add_argument("--vocab-dir", type=Path, required=True, help="dir with ggml-vocab-qwen35.gguf and Qwen3.5-4B.jinja")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    p = PRESETS[a.preset]
    t0 = time.time()
    rng = np.random.default_rng(0)
    arch = "qwen35moe" if p["moe"] else "qwen35"
    E, L, H, HKV, HD = p["E"], p["L"], p["H"], p["HKV"], p["HD"]
    S, G, VH = 128, p["G"], p["VH"]
    inner = S * VH
    conv_dim = 2 * S * G + inner

    vocab, template = read_sources(a.vocab_dir)
    fields = tokenizer_fields(vocab)
    w = gguf.GGUFWriter(str(a.out), arch)
    w.add_name(f"random-{arch}-{a.preset}")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    w.add_context_length(262144)
    w.add_embedding_length(E)
    w.add_block_count(L)
    w.add_head_count(H)
    w.add_head_count_kv(HKV)
    w.add_key_length(HD)
    w.add_value_length(HD)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10_000_000.0)
    w.add_rope_dimension_count(HD // 4)
    w.add_rope_dimension_sections([11, 11, 10, 0])
    w.add_full_attention_interval(4)
    w.add_ssm_conv_kernel(4)
    w.add_ssm_state_size(S)
    w.add_ssm_group_count(G)
    w.add_ssm_time_step_rank(VH)
    w.add_ssm_inner_size(inner)
    if p["moe"]:
        w.add_expert_count(p["NEXP"])
        w.add_expert_used_count(p["NUSED"])
        w.add_expert_feed_forward_length(p["FFEXP"])
        w.add_expert_shared_feed_forward_length(p["FFSH"])
    else:
        w.add_feed_forward_length(p["FF"])
    for key, val, vtype, sub in fields:
        if key == "tokenizer.ggml.tokens":
            val = list(val) + [f"[PAD{i}]" for i in range(len(val), N_VOCAB)]
        elif key == "tokenizer.ggml.token_type":
            val = list(val) + [int(gguf.TokenType.UNUSED)] * (N_VOCAB - len(val))
        elif key == "tokenizer.ggml.scores":
            val = list(val) + [0.0] * (N_VOCAB - len(val))
        w.add_key_value(key, val, vtype, sub_type=sub)
    w.add_chat_template(template)

    # (name, numpy shape, kind): kind "q" = Q4_0 matrix, "f" = F32 with a generator
    specs: list[tuple[str, tuple[int, ...], object]] = []

    def q(name, *shape):
        specs.append((name, tuple(shape), "q"))

    def f(name, shape, fn):
        specs.append((name, tuple(shape), fn))

    ones = lambda n: (lambda: np.ones(n, dtype=np.float32))  # noqa: E731
    q("token_embd.weight", N_VOCAB, E)
    f("output_norm.weight", (E,), ones(E))
    q("output.weight", N_VOCAB, E)
    for il in range(L):
        b = f"blk.{il}"
        f(f"{b}.attn_norm.weight", (E,), ones(E))
        f(f"{b}.post_attention_norm.weight", (E,), ones(E))
        if (il + 1) % 4 != 0:
            q(f"{b}.attn_qkv.weight", conv_dim, E)
            q(f"{b}.attn_gate.weight", inner, E)
            f(f"{b}.ssm_conv1d.weight", (conv_dim, 4), lambda: rng.normal(0, 0.5, size=(conv_dim, 4)).astype(np.float32))
            f(f"{b}.ssm_dt.bias", (VH,), lambda: np.full(VH, -4.0, dtype=np.float32))
            f(f"{b}.ssm_a", (VH,), lambda: -rng.uniform(1.0, 16.0, size=VH).astype(np.float32))
            q(f"{b}.ssm_beta.weight", VH, E)
            q(f"{b}.ssm_alpha.weight", VH, E)
            f(f"{b}.ssm_norm.weight", (S,), ones(S))
            q(f"{b}.ssm_out.weight", E, inner)
        else:
            q(f"{b}.attn_q.weight", HD * H * 2, E)
            q(f"{b}.attn_k.weight", HD * HKV, E)
            q(f"{b}.attn_v.weight", HD * HKV, E)
            q(f"{b}.attn_output.weight", E, HD * H)
            f(f"{b}.attn_q_norm.weight", (HD,), ones(HD))
            f(f"{b}.attn_k_norm.weight", (HD,), ones(HD))
        if p["moe"]:
            NE, FX, FS = p["NEXP"], p["FFEXP"], p["FFSH"]
            f(f"{b}.ffn_gate_inp.weight", (NE, E), lambda: rng.normal(0, 1 / np.sqrt(E), size=(NE, E)).astype(np.float32))
            q(f"{b}.ffn_gate_exps.weight", NE, FX, E)
            q(f"{b}.ffn_up_exps.weight", NE, FX, E)
            q(f"{b}.ffn_down_exps.weight", NE, E, FX)
            f(f"{b}.ffn_gate_inp_shexp.weight", (E,), lambda: rng.normal(0, 1 / np.sqrt(E), size=E).astype(np.float32))
            q(f"{b}.ffn_gate_shexp.weight", FS, E)
            q(f"{b}.ffn_up_shexp.weight", FS, E)
            q(f"{b}.ffn_down_shexp.weight", E, FS)
        else:
            q(f"{b}.ffn_gate.weight", p["FF"], E)
            q(f"{b}.ffn_up.weight", p["FF"], E)
            q(f"{b}.ffn_down.weight", E, p["FF"])

    nparams = 0
    for name, shape, kind in specs:
        n = int(np.prod(shape))
        nparams += n
        if kind == "q":
            bshape = (*shape[:-1], shape[-1] // 32 * 18)
            w.add_tensor_info(name, bshape, np.dtype(np.uint8), int(np.prod(bshape)), raw_dtype=Q40)
        else:
            w.add_tensor_info(name, shape, np.dtype(np.float32), 4 * n)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, shape, kind in specs:
        arr = q4_bytes(shape, rng) if kind == "q" else np.ascontiguousarray(kind(), dtype=np.float32).reshape(shape)
        w.write_tensor_data(arr)
    w.close()
    print(f"wrote {a.out} ({a.out.stat().st_size:,} B, {nparams / 1e9:.3f} B params, {len(specs)} tensors) in {time.time() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
