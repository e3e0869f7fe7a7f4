"""The reader: the scan loop over a bank, one read step shared by inference and training, the notes
with their update rule, and every prompt."""

from .loop import Reasoner
from .notes import update_notes
from .prompts import PromptBuilder, Question, pad_token_id
from .quotes import Quote, covers, find_quote, found, key_terms
from .step import (
    Layout,
    StepInput,
    Written,
    cut_at_eos,
    generate_steps,
    layout,
    recomputed_input,
    step_input,
    step_logprobs,
)
from .trace import ReadStep, Source, Trace

__all__ = [
    "Layout",
    "PromptBuilder",
    "Question",
    "Quote",
    "ReadStep",
    "Reasoner",
    "Source",
    "StepInput",
    "Trace",
    "Written",
    "covers",
    "cut_at_eos",
    "find_quote",
    "found",
    "generate_steps",
    "key_terms",
    "layout",
    "pad_token_id",
    "recomputed_input",
    "step_input",
    "step_logprobs",
    "update_notes",
]
