"""The sampling parameters of one decode, as one frozen value."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is drawn from the logits.

    Built from settings (`narrative.settings.SamplingSettings.params` for
    dialogue, `narrative.batch.generator.BatchOptions.params` for the batch),
    never with defaults of its own, so one place decides each role's values.

    Attributes:
        temperature: 0 = greedy (argmax); otherwise the softmax temperature.
        top_p: nucleus sampling mass in (0, 1].
        top_k: keep the k most likely tokens; 0 keeps all.
        repeat_penalty: llama.cpp's repetition penalty (1.0 = off) over the last
            ``penalty_last_n`` tokens.
        seed: the draw's seed (llama.cpp reads 0xFFFFFFFF as "random").
        penalty_last_n: tokens the repeat penalty looks back over.
    """

    temperature: float
    top_p: float
    top_k: int
    repeat_penalty: float
    seed: int
    penalty_last_n: int = 64
