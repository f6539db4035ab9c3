"""What of a streamed reply a player may see: reasoning and call markup removed, as the text streams.

A thinking model (Qwen3.5 with thinking on, or one that starts a ``<think>`` block on its
own) writes its reasoning between ``<think>`` and ``</think>``; Qwen3.5's chat template
itself drops that reasoning from earlier turns (``reasoning_content``; llama.cpp
``models/templates/Qwen3.5-4B.jinja``). A model may also start writing a tool call as text.
`VisibleText` filters the pieces of the spoken line as they arrive:

- text inside ``<think>...</think>`` is dropped (an unclosed block hides the rest; with
  ``thinking`` the prompt opened the block, so everything up to the first ``</think>`` is
  reasoning); a stray ``</think>`` is dropped;
- from a ``<tool_call>`` (or ``<function=``) on, the rest of the line is dropped (the
  structured tail is decoded and validated separately, `narrative.actions`);
- a piece that may be the start of such a marker is held back until the next piece tells;
- leading whitespace of the visible text is dropped (the ``\\n\\n`` after ``</think>``).

Markers are matched in the text, whether the model wrote them as one special token or as
several plain ones.
"""

from __future__ import annotations

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
CUT = ("<tool_call>", "<function=")


class VisibleText:
    """Filter a reply's text pieces down to what the player sees.

    Args:
        thinking: the prompt opened a ``<think>`` block (thinking on): everything up to the
            first ``</think>`` is reasoning.
    """

    def __init__(self, *, thinking: bool = False) -> None:
        self._buf = ""
        self._inside = thinking
        self._cut = False
        self._started = False
        self.hid_reasoning = False  # some reasoning was dropped
        self.hid_markup = False  # a call written as text was dropped
        self.shown: list[str] = []

    def feed(self, piece: str) -> str:
        """The visible part of `piece` that is certain now ("" while a marker may be starting)."""
        self._buf += piece
        return self._emit(self._drain(final=False))

    def finish(self) -> str:
        """The rest once the line ended (a held partial marker that never completed is text)."""
        return self._emit(self._drain(final=True))

    @property
    def text(self) -> str:
        """Everything shown so far."""
        return "".join(self.shown)

    def _emit(self, out: str) -> str:
        if not self._started:
            out = out.lstrip()
            self._started = bool(out)
        if out:
            self.shown.append(out)
        return out

    def _drain(self, *, final: bool) -> str:
        out = []
        while self._buf and not self._cut:
            if self._inside:
                end = self._buf.find(THINK_CLOSE)
                self.hid_reasoning = True
                if end < 0:
                    keep = 0 if final else _partial(self._buf, (THINK_CLOSE,))
                    self._buf = self._buf[len(self._buf) - keep:] if keep else ""
                    break
                self._buf = self._buf[end + len(THINK_CLOSE):]
                self._inside = False
                self._started = False  # the answer starts after the block: its leading blank lines go
                continue
            hits = [(i, m) for m in (THINK_OPEN, THINK_CLOSE, *CUT) if (i := self._buf.find(m)) >= 0]
            if not hits:
                keep = 0 if final else _partial(self._buf, (THINK_OPEN, THINK_CLOSE, *CUT))
                out.append(self._buf[: len(self._buf) - keep])
                self._buf = self._buf[len(self._buf) - keep:]
                break
            i, m = min(hits)
            if m == THINK_OPEN:
                out.append(self._buf[:i])
                self._buf = self._buf[i + len(m):]
                self._inside = True
            elif m == THINK_CLOSE:  # a stray closing marker (what came before it is already shown): dropped
                out.append(self._buf[:i])
                self._buf = self._buf[i + len(m):]
                self.hid_markup = True
            else:
                out.append(self._buf[:i])
                self._buf = ""
                self._cut = True
                self.hid_markup = True
        if self._cut:
            self._buf = ""
        return "".join(out)


def _partial(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a marker (held back)."""
    best = 0
    for m in markers:
        for n in range(min(len(m) - 1, len(text)), best, -1):
            if text.endswith(m[:n]):
                best = n
                break
    return best
