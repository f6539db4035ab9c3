"""Model presets (Qwen3.5 dialogue and batch models) and the memory plan.

A preset is the model card's settings for one role, mapped onto
`narrative.settings.ModelSettings`, plus the architecture numbers the memory
plan needs. `plan` computes what a configuration takes, before anything is
loaded, with llama.cpp's own buffer arithmetic:

- **weights**: the GGUF's tensor bytes (a file given), else parameters x
  bits per weight of the quantization (``QUANT_BPW``);
- **KV cache**: ``n_ctx x n_attention_layers x n_head_kv x head_dim x
  (bytes(type_k) + bytes(type_v))``: llama.cpp's ``llama_kv_cache`` allocates
  one row of ``ggml_row_size(type, n_head_kv * head_dim)`` per cell and layer
  (``src/llama-kv-cache.cpp``); q8_0 is 34 bytes per 32 values, q4_0 18 per 32
  (ggml block sizes);
- **recurrent state**: per sequence and Gated DeltaNet layer, f32 conv state
  ``(d_conv - 1) x (d_inner + 2 x n_group x d_state)`` and f32 SSM state
  ``d_state x d_inner`` (``llama_hparams::n_embd_r()/n_embd_s()``,
  ``src/llama-memory-recurrent.cpp``), times ``n_seq_max`` sequences;
- **output + compute**: logits ``n_vocab x 4`` bytes per sequence, plus the
  compute buffer. On the CPU (``on_gpu=False``), estimated as the
  ``n_ubatch x n_vocab`` f32 logits of a full micro-batch and ``1.5 x n_ubatch
  x max(n_embd, n_ff, conv channels)`` f32 activations (the fixtures and
  SmolLM2 match within 2%).
- **on a CUDA GPU** (``on_gpu=True``, all layers offloaded), as measured on an
  H200 (docs/batching-h200.md, `benchmarks/gpu/plan_probe.py`): the token
  embedding stays in host memory (llama.cpp keeps the input layer on the CPU),
  so it is not counted; the compute buffer is the worst-case graph that
  llama.cpp reserves for ``n_ubatch`` tokens over all ``n_seq_max`` sequences
  with ``n_seqs`` outputs (not a full micro-batch of logits): f32 activations
  ``16 x n_ubatch x max(n_embd, conv channels)`` bytes, plus per KV cell of one
  sequence the f16 attention mask row (``2 x n_ubatch``) and, for a quantized
  K or V with flash attention, its f16 copy for every sequence
  (``n_seq_max x n_head_kv x head_dim x 2`` each). That copy is what the
  old estimate missed: 1.6 GiB more at 4 x 135k on the 27B (plan 5.2% under,
  now +0.1%). Plus ``CUDA_RUNTIME`` for the CUDA context and cuBLAS.
- KV cells per sequence are padded to a multiple of 256, as llama.cpp does.

`tests/narrative/test_presets.py` checks these formulas against the buffer
sizes llama.cpp logs when it loads the tiny qwen35/qwen35moe fixtures and
SmolLM2 (within 5%).

Architecture numbers of the real models (``config.json`` ``text_config`` of
Qwen/Qwen3.5-27B, -35B-A3B, -122B-A10B as published on Hugging Face; quoted in
THUDM/slime ``scripts/models/qwen3.5-27B.sh`` and ``qwen3.5-35B-A3B.sh``, and
in public configs of the 122B-A10B: 48 layers, hidden 3072, 2 KV heads x 256,
DeltaNet 16 QK heads / 64 V heads x 128):

=============  ======  =====  =====  ========  ========  ==========  ========
model          layers  attn   n_embd KV heads  head dim  DeltaNet    V heads
                       layers                            QK heads    (x128)
=============  ======  =====  =====  ========  ========  ==========  ========
27B            64      16     5120   4         256       16          48
35B-A3B        40      10     2048   2         256       16          32
122B-A10B      48      12     3072   2         256       16          64
=============  ======  =====  =====  ========  ========  ==========  ========

Full attention every 4th layer (``full_attention_interval`` 4), conv kernel 4,
vocabulary 248,320 (padded). llama.cpp's GGUF keys: ``ssm.state_size`` = QK
head dim (128), ``ssm.group_count`` = QK heads, ``ssm.time_step_rank`` = V heads,
``ssm.inner_size`` = V heads x 128. So the recurrent state of one sequence is
149.6 MiB (27B), 62.8 MiB (35B-A3B), 149.1 MiB (122B-A10B), whatever the context.

Model card settings (Qwen3.5 cards): context 262,144 native, up to 1,010,000
with YaRN (factor 4, original context 262,144; llama.cpp: ``--rope-scaling yarn
--rope-scale 4 --yarn-orig-ctx 262144``); sampling non-thinking / general:
temperature 0.7, top_p 0.8, top_k 20, min_p 0, presence_penalty 1.5; thinking /
general: 1.0, 0.95, 20, 0, 1.5. Dialogue runs with thinking off (the chat
template's empty ``<think>\\n\\n</think>\\n\\n``, see `narrative.llm.ChatFormat`).
"""

from __future__ import annotations

import logging
import math
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from narrative.llm import ModelError

log = logging.getLogger(__name__)

MiB = 1 << 20
GiB = 1 << 30

KV_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "f32": 4.0}
"""Bytes per KV cache value (ggml block sizes: q8_0 = 32 int8 + f16 scale, q4_0 = 32 nibbles + f16 scale)."""

QUANT_BPW = {"q4_0": 4.5, "q4_k_m": 4.89, "q5_k_m": 5.7, "q6_k": 6.56, "q8_0": 8.5, "bf16": 16.0}
"""Bits per weight of a GGUF quantization (q4_0/q8_0 from block sizes; K-quant mixes as llama.cpp's
quantize reports them for Llama-class models: an approximation for others)."""

CUDA_RUNTIME = 650 * MiB
"""GPU memory of the CUDA context, cuBLAS and llama.cpp's CUDA pools beyond its named buffers
(nvidia-smi minus the buffers llama.cpp logs: 616-716 MiB on an H200, 27B and 35B-A3B shapes)."""

NATIVE_CTX = 262_144
YARN_MAX_CTX = 1_010_000


@dataclass(frozen=True)
class Arch:
    """The numbers of one model that decide its memory. Hybrid fields are 0 for plain transformers."""

    name: str
    n_layer: int
    n_attn_layers: int
    n_embd: int
    n_head_kv: int
    head_dim: int
    n_vocab: int
    n_ff: int  # dense FFN width, or the expert FFN width of an MoE
    params_b: float = 0.0  # parameters in billions (for weights without a file)
    ssm_d_conv: int = 0
    ssm_d_state: int = 0
    ssm_n_group: int = 0
    ssm_d_inner: int = 0
    embd_bytes: int = 0  # bytes of the token embedding in the GGUF (0: estimate from the quantization)

    @property
    def n_recurrent_layers(self) -> int:
        return self.n_layer - self.n_attn_layers if self.ssm_d_inner else 0

    def recurrent_bytes_per_seq(self) -> int:
        """f32 conv + SSM state of one sequence, all recurrent layers (bytes)."""
        if not self.ssm_d_inner:
            return 0
        conv = (self.ssm_d_conv - 1) * (self.ssm_d_inner + 2 * self.ssm_n_group * self.ssm_d_state)
        ssm = self.ssm_d_state * self.ssm_d_inner
        return self.n_recurrent_layers * 4 * (conv + ssm)

    def kv_bytes_per_token(self, type_k: str, type_v: str) -> float:
        """KV cache bytes per cell (token), all attention layers."""
        return self.n_attn_layers * self.n_head_kv * self.head_dim * (KV_BYTES[type_k] + KV_BYTES[type_v])

    @staticmethod
    def from_gguf_metadata(meta: dict[str, str], name: str = "") -> "Arch":
        """Read the numbers from GGUF metadata (``llama_cpp.Llama.metadata`` or `read_gguf_metadata`).

        Raises:
            KeyError: a required key is missing (the message names it).
        """
        a = meta["general.architecture"]

        def get(key: str, default: int | None = None) -> int:
            k = f"{a}.{key}"
            if k not in meta:
                if default is None:
                    raise KeyError(f"GGUF metadata has no {k!r}")
                return default
            return int(float(meta[k]))

        n_layer = get("block_count")
        n_head = get("attention.head_count")
        n_embd = get("embedding_length")
        head_dim = get("attention.key_length", n_embd // n_head)
        inner = get("ssm.inner_size", 0)
        interval = get("full_attention_interval", 4) if inner else 1
        n_attn = n_layer // interval if inner else n_layer
        n_ff = get("expert_feed_forward_length", 0) or get("feed_forward_length", 0)
        n_vocab = int(meta.get("tokenizer.ggml.n_vocab", 0)) or _vocab_size(meta)
        return Arch(
            name=name or meta.get("general.name", a),
            n_layer=n_layer,
            n_attn_layers=n_attn,
            n_embd=n_embd,
            n_head_kv=get("attention.head_count_kv", n_head),
            head_dim=head_dim,
            n_vocab=n_vocab,
            n_ff=n_ff,
            ssm_d_conv=get("ssm.conv_kernel", 0),
            ssm_d_state=get("ssm.state_size", 0),
            ssm_n_group=get("ssm.group_count", 0),
            ssm_d_inner=inner,
            embd_bytes=int(meta.get("narrative.token_embd_bytes", 0)),
        )


def _vocab_size(meta: dict[str, str]) -> int:
    v = meta.get("narrative.n_vocab")
    if v:
        return int(v)
    raise KeyError("GGUF metadata does not give the vocabulary size (pass n_vocab)")


# Real models (see the module docstring for the sources).
QWEN35_27B = Arch("Qwen3.5-27B", 64, 16, 5120, 4, 256, 248_320, 17_408, params_b=26.9,
                  ssm_d_conv=4, ssm_d_state=128, ssm_n_group=16, ssm_d_inner=48 * 128)
QWEN35_35B_A3B = Arch("Qwen3.5-35B-A3B", 40, 10, 2048, 2, 256, 248_320, 512, params_b=34.7,
                      ssm_d_conv=4, ssm_d_state=128, ssm_n_group=16, ssm_d_inner=32 * 128)
QWEN35_122B_A10B = Arch("Qwen3.5-122B-A10B", 48, 12, 3072, 2, 256, 248_320, 1024, params_b=122.0,
                        ssm_d_conv=4, ssm_d_state=128, ssm_n_group=16, ssm_d_inner=64 * 128)


@dataclass(frozen=True)
class Preset:
    """One model in one role with its model-card settings.

    ``settings`` are `ModelSettings` fields (path to be filled in by the user);
    ``sampling``: the model card's recommendation for the role; ``thinking``:
    whether the chat template's reasoning block is on.
    """

    name: str
    role: str  # "dialogue" or "batch"
    arch: Arch
    gguf: str  # the usual file name (Q4_K_M)
    quant: str
    settings: dict = field(default_factory=dict)
    sampling: dict = field(default_factory=dict)
    thinking: bool = False
    note: str = ""


NON_THINKING = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.0, "presence_penalty": 1.5, "repeat_penalty": 1.0}
THINKING = {"temperature": 1.0, "top_p": 0.95, "top_k": 20, "min_p": 0.0, "presence_penalty": 1.5, "repeat_penalty": 1.0}
LONG = {"type_k": "q8_0", "type_v": "q8_0", "flash_attn": True, "n_gpu_layers": -1}

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("qwen3.5-27b-dialogue", "dialogue", QWEN35_27B, "Qwen3.5-27B-Q4_K_M.gguf", "q4_k_m",
               {"n_ctx": NATIVE_CTX, "n_seq_max": 4, "n_batch": 2048, **LONG}, NON_THINKING, False,
               "real-time NPC dialogue, thinking off; dense: every token reads all 27B weights"),
        Preset("qwen3.5-35b-a3b-batch", "batch", QWEN35_35B_A3B, "Qwen3.5-35B-A3B-Q4_K_M.gguf", "q4_k_m",
               {"n_ctx": NATIVE_CTX, "n_seq_max": 8, "n_batch": 2048, **LONG}, THINKING, True,
               "build-time content (quests, barks); MoE, 3B active: fast decode, loaded on demand"),
        Preset("qwen3.5-122b-a10b-batch", "batch", QWEN35_122B_A10B, "Qwen3.5-122B-A10B-Q4_K_M.gguf", "q4_k_m",
               {"n_ctx": NATIVE_CTX, "n_seq_max": 4, "n_batch": 2048, **LONG}, THINKING, True,
               "highest-quality batch content; needs a large GPU or CPU offload of experts"),
    )
}


def preset_settings(name: str, path: str, n_ctx: int | None = None, n_seq_max: int | None = None) -> dict:
    """`ModelSettings` fields for preset `name` with the GGUF at `path`; past 262,144
    tokens of context per sequence (``n_ctx / n_seq_max``, `n_seq_max` overriding the
    preset's), YaRN factor 4 over ``yarn_orig_ctx`` 262,144 (model card).

    Raises:
        KeyError: unknown preset (the message lists them).
        ValueError: `n_ctx` beyond 1,010,000 tokens.
    """
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    p = PRESETS[name]
    s = dict(p.settings, path=path)
    if n_ctx is not None:
        s["n_ctx"] = n_ctx
    if n_seq_max is not None:
        s["n_seq_max"] = n_seq_max
    per_seq = s["n_ctx"] // s.get("n_seq_max", 1)
    if per_seq > YARN_MAX_CTX:
        raise ValueError(f"n_ctx per sequence {per_seq} exceeds {YARN_MAX_CTX:,} tokens (Qwen3.5 with YaRN)")
    if per_seq > NATIVE_CTX:
        s.update(yarn_factor=4.0, yarn_orig_ctx=NATIVE_CTX)
    return s


@dataclass
class Plan:
    """Memory of one model configuration, in bytes."""

    label: str
    arch: Arch
    n_ctx: int  # KV cells in total (all sequences)
    n_seq_max: int
    type_k: str
    type_v: str
    weights: int
    kv: int
    recurrent: int
    output: int
    compute: int
    on_gpu: bool
    runtime: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.recurrent + self.output + self.compute + self.runtime

    def rows(self) -> list[tuple[str, int]]:
        rows = [
            ("weights" + (" (token embedding in host memory)" if self.on_gpu else ""), self.weights),
            (f"KV cache ({self.n_ctx:,} cells, {self.type_k}/{self.type_v})", self.kv),
            (f"recurrent state ({self.n_seq_max} seq)", self.recurrent),
            ("output + compute (estimate)", self.output + self.compute),
        ]
        if self.runtime:
            rows.append(("CUDA runtime", self.runtime))
        return rows + [("total", self.total)]


def plan(
    arch: Arch,
    *,
    n_ctx: int,
    n_seq_max: int = 1,
    type_k: str = "f16",
    type_v: str = "f16",
    n_ubatch: int = 512,
    weights_bytes: int | None = None,
    quant: str = "q4_k_m",
    on_gpu: bool = True,
    label: str = "",
) -> Plan:
    """The memory a configuration needs (see the module docstring for each formula).

    Args:
        n_ctx: KV cells of the context (all sequences together, as llama.cpp's n_ctx).
        weights_bytes: tensor bytes of the GGUF; None -> ``params_b x QUANT_BPW[quant] / 8``.
    """
    if weights_bytes is None:
        weights_bytes = int(arch.params_b * 1e9 * QUANT_BPW[quant] / 8)
    n_seq = max(1, n_seq_max)
    per_seq = -(-(n_ctx // n_seq) // 256) * 256  # llama.cpp pads the cells of a sequence to 256
    n_ctx = per_seq * n_seq
    kv = math.ceil(n_ctx * arch.kv_bytes_per_token(type_k, type_v))
    rec = arch.recurrent_bytes_per_seq() * n_seq
    output = 4 * arch.n_vocab * n_seq
    conv_ch = arch.ssm_d_inner + 2 * arch.ssm_n_group * arch.ssm_d_state if arch.ssm_d_inner else 0
    runtime = 0
    if on_gpu:
        embd = arch.embd_bytes or int(arch.n_vocab * arch.n_embd * QUANT_BPW[quant] / 8)
        weights_bytes = max(0, weights_bytes - embd)
        cast = sum(2 * arch.n_head_kv * arch.head_dim for t in (type_k, type_v) if t != "f16")  # f16 copies of quantized K/V
        per_cell = 2 * n_ubatch + n_seq * cast
        compute = 16 * n_ubatch * max(arch.n_embd, conv_ch) + per_seq * per_cell
        runtime = CUDA_RUNTIME
    else:
        compute = 4 * n_ubatch * arch.n_vocab + int(1.5 * 4 * n_ubatch * max(arch.n_embd, arch.n_ff, conv_ch))
    return Plan(label or arch.name, arch, n_ctx, n_seq_max, type_k, type_v, weights_bytes, kv, rec, output, compute, on_gpu, runtime)


def read_gguf_metadata(path: Path) -> tuple[dict[str, str], int]:
    """(metadata as strings, total tensor bytes) of a GGUF file, without loading it into llama.cpp.

    Uses the ``gguf`` package when installed (exact tensor bytes); else the file size.
    Raises `FileNotFoundError`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        import gguf
    except ImportError:  # no reader: llama.cpp's load log shows the same numbers
        raise RuntimeError("reading GGUF metadata needs the 'gguf' package (pip install gguf)") from None
    r = gguf.GGUFReader(str(path))
    meta: dict[str, str] = {}
    for t in r.tensors:
        if t.name == "token_embd.weight":
            meta["narrative.token_embd_bytes"] = str(int(t.n_bytes))
    for k, f in r.fields.items():
        if k.startswith("tokenizer.ggml.tokens"):
            meta["narrative.n_vocab"] = str(len(f.data))
            continue
        if not f.types or f.types[0] == gguf.GGUFValueType.ARRAY:
            continue
        v = f.parts[f.data[0]]
        meta[k] = bytes(v).decode("utf-8", "replace") if f.types[0] == gguf.GGUFValueType.STRING else str(v[0])
    return meta, int(sum(int(t.n_bytes) for t in r.tensors))


def fmt_gib(n: int) -> str:
    return f"{n / GiB:,.2f} GiB" if n >= GiB // 4 else f"{n / MiB:,.1f} MiB"


def table(plans: list[Plan]) -> str:
    """A Markdown table of plans (GiB/MiB)."""
    out = ["| model | context | KV type | weights | KV cache | recurrent | output+compute | total |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for p in plans:
        out.append(
            f"| {p.label} | {p.n_ctx:,} x{p.n_seq_max} seq | {p.type_k} | {fmt_gib(p.weights)} | {fmt_gib(p.kv)} | "
            f"{fmt_gib(p.recurrent)} | {fmt_gib(p.output + p.compute + p.runtime)} | {fmt_gib(p.total)} |"
        )
    return "\n".join(out)


class DoesNotFit(ModelError):
    """A configuration needs more memory than the budget; the message has the numbers."""


def check_fits(plans: list[Plan], budget_bytes: int, where: str) -> None:
    """Raise `DoesNotFit` (with a per-model breakdown) when the plans' total exceeds `budget_bytes`."""
    need = sum(p.total for p in plans)
    if need > budget_bytes:
        parts = "; ".join(f"{p.label}: {', '.join(f'{k} {fmt_gib(v)}' for k, v in p.rows())}" for p in plans)
        raise DoesNotFit(f"needs {fmt_gib(need)} of {where} but {fmt_gib(budget_bytes)} is available ({parts})")


def detect_budget(on_gpu: bool) -> tuple[int | None, str]:
    """(bytes available, where): total memory of GPU 0 from ``nvidia-smi`` when
    offloading, else available RAM (``psutil.virtual_memory().available``: Linux's
    MemAvailable, and its equivalent on Windows and macOS); None when unknown."""
    if on_gpu:
        exe = shutil.which("nvidia-smi")
        if exe:
            try:
                r = subprocess.run([exe, "--query-gpu=memory.total", "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10)
                return int(r.stdout.split()[0]) * MiB, "GPU memory"
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                pass
        return None, "GPU memory"
    try:
        import psutil  # MemAvailable on Linux, the same figure from the OS on Windows and macOS

        return int(psutil.virtual_memory().available), "RAM"
    except (ImportError, OSError, AttributeError):
        return None, "RAM"


def plan_for_settings(ms, label: str = "dialogue") -> Plan:
    """The plan of a `ModelSettings` with a GGUF file: numbers read from the file's metadata.

    Raises:
        ModelError: the file cannot be read.
    """
    from narrative.llm import read_model_metadata, resolve_model_path

    path = resolve_model_path(ms.path)
    try:
        meta, weights = read_gguf_metadata(path)
    except RuntimeError:  # no gguf package: llama.cpp reads the metadata (vocab only, no weights)
        meta, weights = read_model_metadata(path), path.stat().st_size
    try:
        arch = Arch.from_gguf_metadata(meta)
    except KeyError as exc:
        raise ModelError(f"{path}: cannot plan memory: {exc.args[0]}") from None
    return plan(arch, n_ctx=ms.n_ctx, n_seq_max=ms.n_seq_max, type_k=ms.type_k, type_v=ms.type_v,
                n_ubatch=min(ms.n_batch, 512), weights_bytes=weights, on_gpu=ms.n_gpu_layers != 0, label=f"{label}: {path.name}")


def ensure_fits(ms, budget_gib: float | None = None, label: str = "dialogue") -> Plan:
    """Refuse (raise `DoesNotFit`, with the numbers) a model configuration that does not fit
    in memory, before anything is loaded. `budget_gib` overrides detection; an unknown
    budget is logged and allowed."""
    p = plan_for_settings(ms, label)
    if budget_gib is not None:
        budget, where = int(budget_gib * GiB), "the memory budget"
    else:
        budget, where = detect_budget(p.on_gpu)
    if budget is None:
        log.info("memory budget unknown (%s): not checking that %s fits (needs %s)", where, p.label, fmt_gib(p.total))
        return p
    check_fits([p], budget, where)
    return p


__all__ = [
    "Arch",
    "DoesNotFit",
    "PRESETS",
    "Plan",
    "Preset",
    "check_fits",
    "ensure_fits",
    "plan",
    "preset_settings",
    "read_gguf_metadata",
    "table",
]
