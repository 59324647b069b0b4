"""Formulations: compression spec -> dimod BQM -> decoded Plan (numpy and dimod only, never torch)."""

from qubocompress.problem.base import Formulation, Reference, Target
from qubocompress.problem.budget import BudgetFormulation, ExactResult, smallest_plan
from qubocompress.problem.filters import FiltersFormulation
from qubocompress.problem.paper import PaperFormulation, balanced_beta, quant_sensitivity
from qubocompress.problem.plan import Plan, uniform_plan
from qubocompress.problem.spec import ChannelGroup, CompressionSpec, Interaction, LayerSpec
from qubocompress.problem.synthetic import synthetic_resnet_spec, synthetic_spec, with_synthetic_measurements
from qubocompress.problem.target import calibrate_gamma, most_compressed_plan

# Every formulation by its --formulation name: adding one is its module and one entry here.
FORMULATIONS: dict[str, type[Formulation]] = {
    cls.name: cls for cls in (PaperFormulation, BudgetFormulation, FiltersFormulation)
}

__all__ = [
    "BudgetFormulation",
    "ChannelGroup",
    "CompressionSpec",
    "ExactResult",
    "FORMULATIONS",
    "FiltersFormulation",
    "Formulation",
    "Interaction",
    "LayerSpec",
    "PaperFormulation",
    "Plan",
    "Reference",
    "Target",
    "balanced_beta",
    "calibrate_gamma",
    "most_compressed_plan",
    "quant_sensitivity",
    "smallest_plan",
    "synthetic_resnet_spec",
    "synthetic_spec",
    "uniform_plan",
    "with_synthetic_measurements",
]
