"""Evaluation: seeded long-context tasks with located evidence, their scoring, and the runner."""

from .cases import EvalCase
from .haystack import load_haystack
from .measure import PeakMemory
from .report import markdown, plot, summarize
from .runner import MODES, run_eval
from .scoring import exact_match, normalize_answer, score_answer, substring_match, substring_match_all, token_f1
from .tasks import TASKS, default_data_dir, make_cases, parse_token_counts

__all__ = [
    "MODES",
    "TASKS",
    "EvalCase",
    "PeakMemory",
    "default_data_dir",
    "exact_match",
    "load_haystack",
    "make_cases",
    "markdown",
    "normalize_answer",
    "parse_token_counts",
    "plot",
    "run_eval",
    "score_answer",
    "substring_match",
    "substring_match_all",
    "summarize",
    "token_f1",
]
