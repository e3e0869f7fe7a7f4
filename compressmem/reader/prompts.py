"""The reasoner's prompts: the section prefix, notes updates, gate queries and the final answer.

Everything here is text in, token ids out, built from the tokenizer's own chat template, so the
rest of the library never sees template details.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jinja2.exceptions import TemplateError
from transformers import PreTrainedTokenizerBase

from ..config import NotesConfig, PromptConfig
from ..hf.tokens import chat_text, decode_text


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's padding id, or its end-of-sequence id when it has none (as most causal LMs)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


_SENTINELS = ("\x00Q1\x00", "\x00A1\x00", "\x00Q2\x00")


@dataclass(frozen=True)
class Question:
    """A question found in a user's prompt, and how to rebuild that prompt around the notes."""

    text: str
    before: str  # prompt text before the question (template head, earlier turns)
    after: str  # prompt text after it (end of turn, generation prompt)


class PromptBuilder:
    """Renders every prompt the reasoner needs for one tokenizer, its prompt settings and its notes' mode."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, prompts: PromptConfig, notes: NotesConfig, query_tokens: int = 256
    ) -> None:
        self.tokenizer = tokenizer
        self.config = prompts
        self.update_template = prompts.update_for(notes)
        self.query_tokens = query_tokens
        self.chat_head, self.chat_tail, self.user_open = _chat_markers(tokenizer)

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor(
            self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long
        )

    def section_prefix_ids(self) -> torch.Tensor:
        """Tokens every chunk is read after: the chat template's opening of a user turn, then the header."""
        if self.chat_head is None:
            bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
            return torch.cat([torch.tensor(bos, dtype=torch.long), self.encode(self.config.section_header)])
        return self.encode(self.chat_head + self.config.section_header)

    def update_ids(self, question: str, notes: str) -> torch.Tensor:
        """Tokens read right after a section: the question, the notes so far, and the turn's close."""
        text = self.update_template.format(question=question, notes=self._notes(notes))
        return self.encode(text + (self.chat_tail or "\n\nUpdated notes:"))

    def gate_text(self, question: str, notes: str) -> str:
        """What the gate matches blocks against: the question and the notes, without placeholder text."""
        return self.config.gate_template.format(question=question, notes=notes).strip()

    def answer_ids(self, question: Question, notes: str) -> torch.Tensor:
        """The user's own prompt with its question replaced by the question plus the notes."""
        filled = self.config.answer_template.format(question=question.text, notes=self._notes(notes))
        return self.encode(question.before + filled + question.after)

    def find_question(self, prompt_ids: torch.Tensor) -> Question:
        """Locate the question in a prompt: the last user turn of a chat prompt, else the whole prompt."""
        text = decode_text(self.tokenizer, prompt_ids, skip_special_tokens=False)
        if self.chat_tail and self.user_open and text.endswith(self.chat_tail):
            start = text.rfind(self.user_open)
            if start >= 0:
                start += len(self.user_open)
                end = len(text) - len(self.chat_tail)
                return Question(text[start:end].strip(), text[:start], text[end:])
        plain = decode_text(self.tokenizer, prompt_ids, skip_special_tokens=True)
        return Question(plain.strip(), "", "")

    def split_long_prompt(self, prompt_ids: torch.Tensor) -> tuple[str, Question]:
        """Split an over-long prompt into (context, question): the question is the last user turn, or
        its last `query_tokens` tokens when that turn is longer; everything before is the context."""
        found = self.find_question(prompt_ids)
        content = self.encode(found.text)
        keep = self.query_tokens
        head_text = decode_text(self.tokenizer, self.encode(found.before), skip_special_tokens=True)
        if content.numel() <= keep:
            return head_text, Question(found.text, *self._fresh_turn())
        context = head_text + decode_text(self.tokenizer, content[:-keep], skip_special_tokens=True)
        question = decode_text(self.tokenizer, content[-keep:], skip_special_tokens=True).strip()
        return context, Question(question, *self._fresh_turn())

    def _fresh_turn(self) -> tuple[str, str]:
        if self.chat_head is None or self.chat_tail is None:  # both or neither: the tokenizer has a chat template
            return "", ""
        return self.chat_head, self.chat_tail

    def _notes(self, notes: str) -> str:
        return notes if notes.strip() else self.config.empty_notes


def _chat_markers(tokenizer: PreTrainedTokenizerBase) -> tuple[str | None, str | None, str | None]:
    """(text before a lone user message, text after it incl. the generation prompt, opening of a user turn)."""
    if not getattr(tokenizer, "chat_template", None):
        return None, None, None
    q1, a1, q2 = _SENTINELS
    single = chat_text(tokenizer, [{"role": "user", "content": q1}])
    head, tail = single.split(q1)
    try:
        turns = chat_text(
            tokenizer,
            [{"role": "user", "content": q1}, {"role": "assistant", "content": a1}, {"role": "user", "content": q2}],
        )
        between = turns.split(a1)[1].split(q2)[0]
    except TemplateError:  # some templates reject multi-turn layouts; the single-turn head still marks a user turn
        between = head
    return head, tail, _common_suffix(head, between) or head


def _common_suffix(a: str, b: str) -> str:
    size = 0
    while size < min(len(a), len(b)) and a[-1 - size] == b[-1 - size]:
        size += 1
    return a[len(a) - size :]
