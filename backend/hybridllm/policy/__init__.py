"""Policy: HardwareProfile (measured tables) -> CostModel (pure) -> Planner (per-phase choice)."""
from .cost_model import POLICIES, CostModel, Estimate
from .planner import Plan, PlanError, Planner, format_plan
from .profile import HardwareProfile
from .reference import reference_profile
from .shapes import BatchShape, ModelShape
from .tables import Table2D

__all__ = ["POLICIES", "CostModel", "Estimate", "Plan", "PlanError", "Planner", "format_plan",
           "HardwareProfile", "reference_profile", "BatchShape", "ModelShape", "Table2D"]
