"""Formulations: compression spec -> dimod BQM -> decoded Plan (numpy and dimod only, never torch)."""

from qubocompress.problem.paper import PaperFormulation, balanced_beta, quant_sensitivity
from qubocompress.problem.plan import Plan, uniform_plan
from qubocompress.problem.spec import ChannelGroup, CompressionSpec, Interaction, LayerSpec
from qubocompress.problem.synthetic import synthetic_spec
from qubocompress.problem.target import calibrate_gamma, most_compressed_plan

__all__ = [
    "ChannelGroup",
    "CompressionSpec",
    "Interaction",
    "LayerSpec",
    "PaperFormulation",
    "Plan",
    "balanced_beta",
    "calibrate_gamma",
    "most_compressed_plan",
    "quant_sensitivity",
    "synthetic_spec",
    "uniform_plan",
]
