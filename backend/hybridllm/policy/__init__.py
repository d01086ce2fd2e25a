"""Policy: pure decisions. HardwareProfile (measured tables) -> CostModel (per step and phase) ->
Planner (per-phase choice) and NEO's host sub-batch choice; the policy table in registry.py.

Nothing here imports torch, the runtime, clocks or files beyond reading a profile JSON.
"""
from .cost_model import CostModel, Estimate, StepCost, StepShape
from .planner import Plan, PlanError, Planner, format_plan
from .profile import HardwareProfile
from .reference import reference_profile
from .registry import PLANNABLE, POLICIES, POLICY_NAMES, PolicySpec
from .shapes import BatchShape, ModelShape
from .tables import Table2D

__all__ = ["CostModel", "Estimate", "StepCost", "StepShape", "Plan", "PlanError", "Planner", "format_plan",
           "HardwareProfile", "reference_profile", "PLANNABLE", "POLICIES", "POLICY_NAMES", "PolicySpec",
           "BatchShape", "ModelShape", "Table2D"]
