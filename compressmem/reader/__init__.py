"""The reader: the scan loop over a bank, one read step shared by inference and training, the notes
with their update rule, and every prompt."""

from .judge import CALIBRATION, GroundingJudge, Judge, Labelled, ModelJudge, Verdict, calibrate, choose_judge
from .loop import Answerer, Draft, Reasoner
from .notes import update_notes
from .prompts import PromptBuilder, Question, pad_token_id
from .quotes import Quote, find_quote, key_terms
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
from .trace import Attempt, ReadStep, Source, Trace

__all__ = [
    "CALIBRATION",
    "Answerer",
    "Attempt",
    "Draft",
    "GroundingJudge",
    "Judge",
    "Labelled",
    "Layout",
    "ModelJudge",
    "PromptBuilder",
    "Question",
    "Quote",
    "ReadStep",
    "Reasoner",
    "Source",
    "StepInput",
    "Trace",
    "Verdict",
    "Written",
    "calibrate",
    "choose_judge",
    "cut_at_eos",
    "find_quote",
    "generate_steps",
    "key_terms",
    "layout",
    "pad_token_id",
    "recomputed_input",
    "step_input",
    "step_logprobs",
    "update_notes",
]
