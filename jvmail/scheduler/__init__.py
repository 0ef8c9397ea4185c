"""The reciprocity scheduler: a pure function from a week's problem to a plan. No I/O here."""

from jvmail.scheduler.figures import Figures, PartnerWeek, plan_figures
from jvmail.scheduler.problem import Assignment, ListSpec, Plan, Problem, PromotionSpec, Settings
from jvmail.scheduler.solver import Effort, solve
from jvmail.scheduler.value import expected_value, niche_match
from jvmail.scheduler.verify import Violation, verify

__all__ = [
    "Assignment",
    "Effort",
    "Figures",
    "ListSpec",
    "PartnerWeek",
    "Plan",
    "Problem",
    "PromotionSpec",
    "Settings",
    "Violation",
    "expected_value",
    "niche_match",
    "plan_figures",
    "solve",
    "verify",
]
