"""Chat template turn markers as text, for token-level prompt assembly."""

from __future__ import annotations

from dataclasses import dataclass

from narrative.llm.errors import ModelError


@dataclass(frozen=True)
class ChatFormat:
    """Turn markers of a chat template, as text, for token-level prompt assembly.

    Derived from the GGUF's ``tokenizer.chat_template``: ChatML (SmolLM2, Qwen),
    with Qwen3.5's empty ``<think>\\n\\n</think>\\n\\n`` block after the assistant
    header when thinking is off; Gemma's ``<start_of_turn>`` format (no system role:
    the system text opens the first user turn).

    ``thinking_open``: the assistant header that lets the model reason first (Qwen3.5:
    ``<|im_start|>assistant\\n<think>\\n``, the template's default), or "" when the
    template has no thinking. ``tool_format``: how the model writes tool calls (``qwen-xml``:
    the template's ``<tool_call><function=...>`` XML; ``json``: no tool format of its own,
    `narrative.actions` uses a JSON tail).
    """

    name: str
    system_open: str
    system_close: str
    user_open: str
    user_close: str
    assistant_open: str
    assistant_close: str
    stop_strings: tuple[str, ...]
    thinking_open: str = ""
    tool_format: str = "json"

    def system(self, text: str) -> str:
        return f"{self.system_open}{text}{self.system_close}"

    def user(self, text: str) -> str:
        return f"{self.user_open}{text}{self.user_close}"

    def system_pieces(self, text: str) -> list[tuple[str, bool]]:
        """A system turn as ``(text, is_marker)`` pieces: only the markers may become special tokens."""
        return [(self.system_open, True), (text, False), (self.system_close, True)]

    def user_pieces(self, text: str, *, then_assistant: bool = False) -> list[tuple[str, bool]]:
        """A user turn as ``(text, is_marker)`` pieces (optionally followed by the assistant header)."""
        close = self.user_close + (self.assistant_open if then_assistant else "")
        return [(self.user_open, True), (text, False), (close, True)]

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
                thinking_open="<|im_start|>assistant\n<think>\n" if think else "",
                tool_format="qwen-xml" if "<function=" in t and "<parameter=" in t else "json",
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
