"""The reciprocity scheduler: a pure function from a week's problem to a plan. No I/O here."""

from jvmail.scheduler.problem import Assignment, ListSpec, Plan, Problem, PromotionSpec, Settings
from jvmail.scheduler.value import expected_value, niche_match
from jvmail.scheduler.verify import Violation, verify

__all__ = [
    "Assignment",
    "ListSpec",
    "Plan",
    "Problem",
    "PromotionSpec",
    "Settings",
    "Violation",
    "expected_value",
    "niche_match",
    "verify",
]
