"""A zero-shot multiple-choice example: the unit that calibration, routing and evaluation share."""

from __future__ import annotations

import msgspec

TARGET_DELIMITER = " "
"""lm-eval's default `target_delimiter`: put between context and choice, so every
continuation here starts with it."""


class MCExample(msgspec.Struct, frozen=True):
    """One example scored by log-likelihood of each continuation after a shared context.

    For WinoGrande (partial scoring) the contexts differ per choice and the
    continuation is shared; `contexts` then holds one context per choice.
    """

    task: str
    """Task name, e.g. "arc_easy"."""
    doc_id: str
    """Stable id of the example within its split (provenance, dedup)."""
    contexts: list[str]
    """The context(s): one shared by all choices, or one per choice (WinoGrande)."""
    continuations: list[str]
    """One continuation per choice (leading space included), or one shared (WinoGrande)."""
    gold: int
    """Index of the correct choice."""

    @property
    def num_choices(self) -> int:
        return max(len(self.contexts), len(self.continuations))

    def pair(self, choice: int) -> tuple[str, str]:
        """(context, continuation) whose continuation log-prob scores `choice`."""
        ctx = self.contexts[choice if len(self.contexts) > 1 else 0]
        cont = self.continuations[choice if len(self.continuations) > 1 else 0]
        return ctx, cont

    def choice_text(self, choice: int) -> str:
        """The choice as lm-eval's `doc_to_choice` gives it (what acc_norm's length counts):
        the continuation without the target delimiter, or, for per-choice contexts
        (WinoGrande's partial scoring), that choice's context."""
        if len(self.contexts) > 1:
            return self.contexts[choice]
        return self.continuations[choice].removeprefix(TARGET_DELIMITER)
