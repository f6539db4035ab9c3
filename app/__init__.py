"""The composition root: the ``narrative`` command line, the demo, and the wiring of settings into running parts.

The one package allowed to import all the others (lore <- narrative <- bridge <- app);
nothing imports it. ``python -m app`` is the ``narrative`` command.
"""

# llama_cpp before anything that imports numpy (chromadb, gguf): on a CUDA build of llama-cpp-python,
# numpy loaded first makes model loading crash in the CUDA backend (issue 13). Every entry point
# (`narrative`, `python -m app`) imports this package first.
from narrative.llm import load_backend as _load_backend

_load_backend()
