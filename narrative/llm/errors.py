"""Errors of the model layer. Each is a `ModelError`: a model cannot be loaded or used."""

from __future__ import annotations


class ModelError(Exception):
    """A model cannot be loaded or used (file missing, bad GGUF, context overflow)."""


class ContextOverflow(ModelError):
    """The prompt plus ``max_tokens`` does not fit in the context window (``n_ctx`` tokens)."""


class KvCacheFull(ModelError):
    """``llama_decode`` found no free KV cells (return code 1): other sequences hold them."""


class StateError(ModelError):
    """A sequence state could not be read or written (``llama_state_seq_*`` returned 0)."""


class GrammarRefused(ModelError):
    """llama.cpp refused a grammar (e.g. a repetition over its limit of 2000, from a large ``maxLength``).

    Sampling with a refused grammar dereferences a NULL sampler (SIGSEGV), so this is raised before.
    """
