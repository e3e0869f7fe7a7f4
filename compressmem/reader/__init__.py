"""The reader (DESIGN §3.4): the scan loop over a bank, one read step shared by inference and training, the notes
with their update rule, and every prompt."""

from .loop import Reasoner
from .notes import grounding, update_notes
from .prompts import PromptBuilder, Question, pad_token_id
from .step import Layout, StepInput, Written, cut_at_eos, generate_steps, layout, step_input, step_logprobs
from .trace import ReadStep, Trace

__all__ = ["Layout", "PromptBuilder", "Question", "ReadStep", "Reasoner", "StepInput", "Trace", "Written",
           "cut_at_eos", "generate_steps", "grounding", "layout", "pad_token_id", "step_input", "step_logprobs",
           "update_notes"]
