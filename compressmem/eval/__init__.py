"""Seeded long-context tasks and their scoring."""

from .niah import NiahCase, load_haystack, make_niah_case, substring_match

__all__ = ["NiahCase", "load_haystack", "make_niah_case", "substring_match"]
