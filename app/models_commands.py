"""``narrative models``: the configured backends of each role and their health; ``narrative models plan``:
the memory a model configuration needs, before loading it (`narrative.presets`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from narrative.presets import (
    KV_BYTES,
    NATIVE_CTX,
    PRESETS,
    QUANT_BPW,
    YARN_MAX_CTX,
    Arch,
    GiB,
    detect_budget,
    fmt_gib,
    plan,
    read_gguf_metadata,
    table,
)


def register(sub, common: argparse.ArgumentParser) -> None:
    """Register ``narrative models`` and ``narrative models plan`` on the CLI's subparsers."""
    top = sub.add_parser("models", parents=[common], help="configured backends and their health; model presets and memory plans")
    top.set_defaults(func=cmd_status)
    models = top.add_subparsers(dest="models_cmd", required=False, metavar="MODELS_COMMAND")
    models.add_parser("status", parents=[common], help="each role's backend and its health (the default)").set_defaults(func=cmd_status)
    p = models.add_parser("plan", help="memory a dialogue (+ batch) model configuration needs, before loading it")
    p.add_argument("--preset", default="qwen3.5-27b-dialogue", help=f"dialogue preset: {', '.join(PRESETS)}")
    p.add_argument("--ctx", type=int, help="context per conversation in tokens (default: 32k, 262k and 1,010,000 with f16/q8_0/q4_0)")
    p.add_argument("--seqs", type=int, default=1, help="conversations held at once (n_seq_max): KV cells = ctx x seqs")
    p.add_argument("--kv", choices=sorted(KV_BYTES), help="KV cache type (default: the preset's)")
    p.add_argument("--quant", default=None, choices=sorted(QUANT_BPW), help="weights quantization when no --model file")
    p.add_argument("--model", type=Path, help="GGUF file of the dialogue model (weights and numbers read from it)")
    p.add_argument("--batch-preset", default="qwen3.5-35b-a3b-batch", help="batch preset planned alongside ('none' to skip)")
    p.add_argument("--batch-ctx", type=int, default=32_768, help="context per batch job in tokens")
    p.add_argument("--gpu-gib", type=float, help="GPU memory to check against (default: nvidia-smi, else a list of common sizes)")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    if args.preset not in PRESETS:
        print(f"error: unknown preset {args.preset!r}; presets: {', '.join(PRESETS)}")
        return 2
    pre = PRESETS[args.preset]
    arch = pre.arch
    weights = None
    if args.model:
        meta, weights = read_gguf_metadata(args.model)
        arch = Arch.from_gguf_metadata(meta)
    quant = args.quant or pre.quant
    if args.ctx is None:
        plans = [
            plan(PRESETS[n].arch, n_ctx=c, type_k=t, type_v=t, quant=PRESETS[n].quant, label=PRESETS[n].arch.name)
            for n in PRESETS for c in (32_768, NATIVE_CTX, YARN_MAX_CTX) for t in ("f16", "q8_0", "q4_0")
        ]
        print(f"Memory plans, one sequence, weights at {quant} (~{QUANT_BPW[quant]} bits/weight); "
              f"past {NATIVE_CTX:,} tokens YaRN factor 4 applies\n")
        print(table(plans))
        return 0
    kv = args.kv or pre.settings.get("type_k", "f16")
    if args.ctx > YARN_MAX_CTX:
        print(f"error: --ctx {args.ctx:,} exceeds {YARN_MAX_CTX:,} tokens (Qwen3.5 with YaRN)")
        return 2
    d = plan(arch, n_ctx=args.ctx * args.seqs, n_seq_max=args.seqs, type_k=kv, type_v=kv, weights_bytes=weights, quant=quant,
             label=f"dialogue: {args.model.name if args.model else arch.name}")
    plans = [d]
    b = None
    if args.batch_preset != "none":
        bp = PRESETS[args.batch_preset]
        b = plan(bp.arch, n_ctx=args.batch_ctx, type_k=bp.settings["type_k"], type_v=bp.settings["type_v"], quant=bp.quant, label=f"batch: {bp.arch.name}")
        plans.append(b)
    print(table(plans))
    print()
    if args.ctx > NATIVE_CTX:
        print(f"context {args.ctx:,} > {NATIVE_CTX:,}: YaRN factor 4, yarn_orig_ctx {NATIVE_CTX:,} (model card)")
    if kv != "f16":
        print(f"KV type {kv} needs flash_attn=true (quantized V)")
    budgets = [int(args.gpu_gib * GiB)] if args.gpu_gib else []
    if not budgets:
        got, _ = detect_budget(True)
        budgets = [got] if got else [g * GiB for g in (24, 32, 48, 80, 141)]
    both = d.total + (b.total if b else 0)
    for cap in budgets:
        if both <= cap:
            verdict = "dialogue and batch models both stay resident"
        elif d.total <= cap and b is not None and b.total <= cap:
            verdict = (f"dialogue stays resident ({fmt_gib(d.total)}); the batch model ({fmt_gib(b.total)}) does not fit beside it: "
                       "run batch jobs on another GPU or the CPU, or only while no dialogue is served (the batch model loads on demand)")
        elif d.total <= cap:
            verdict = f"dialogue fits ({fmt_gib(d.total)}); the batch model never fits here"
        else:
            verdict = f"does NOT fit: dialogue alone needs {fmt_gib(d.total)}; the sidecar refuses this configuration"
        print(f"{fmt_gib(cap):>12} GPU: {verdict}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Each role's backend: in process (the GGUF file found or not) or its endpoints (``GET /models``:
    up with the models served and the latency, or why not). Exit 1 when something is down."""
    from app.settings import settings_from_args
    from narrative.backends import OpenAIEndpoint, egress_notice
    from narrative.llm import ModelError, resolve_model_path
    from narrative.settings import is_loopback

    s = settings_from_args(args)
    roles = {"dialogue": s.dialogue_model, "batch": s.batch_model, "embedding": s.embedding}
    rows, bad = [], 0
    for role, ms in roles.items():
        if getattr(ms, "backend", "llama.cpp") == "llama.cpp":
            try:
                path = resolve_model_path(ms.path)
                health = f"ok: {path.name} ({path.stat().st_size / 1e6:.1f} MB)"
            except ModelError as exc:
                health, bad = f"MISSING: {exc}", bad + 1
            rows.append((role, "llama.cpp", f"{ms.path} (in process)", health))
            continue
        if not ms.endpoints:
            rows.append((role, "openai", "-", "NO ENDPOINTS configured"))
            bad += 1
        for i, e in enumerate(ms.endpoints):
            where = f"{e.url} ({'loopback' if is_loopback(e.url) else 'OFFSITE'}, x{e.concurrency}{', fallback' if i and role == 'dialogue' else ''})"
            try:
                ep = OpenAIEndpoint(e)
                h = ep.health()
                ep.close()
                health = f"up, {h.latency_ms:.0f} ms, models: {', '.join(h.models) or '-'}" if h.ok else f"DOWN: {h.error}"
                bad += not h.ok
            except ModelError as exc:
                health, bad = f"NOT USABLE: {exc}", bad + 1
            rows.append((role if i == 0 else "", "openai" if i == 0 else "", where, health))
    w = [max(len(r[i]) for r in rows + [("role", "backend", "where", "")]) for i in range(3)]
    print(f"{'role':{w[0]}}  {'backend':{w[1]}}  {'where':{w[2]}}  health")
    for r in rows:
        print(f"{r[0]:{w[0]}}  {r[1]:{w[1]}}  {r[2]:{w[2]}}  {r[3]}")
    for line in egress_notice({"dialogue": s.dialogue_model, "batch": s.batch_model}):
        print(line)
    return 1 if bad else 0
