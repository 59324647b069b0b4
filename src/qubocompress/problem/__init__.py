"""Formulations: compression spec -> dimod BQM -> decoded Plan (numpy and dimod only, never torch)."""

from qubocompress.problem.plan import Plan, uniform_plan
from qubocompress.problem.spec import ChannelGroup, CompressionSpec, LayerSpec

__all__ = ["ChannelGroup", "CompressionSpec", "LayerSpec", "Plan", "uniform_plan"]
