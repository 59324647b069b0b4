"""analysis layer: channel groups, importance, sensitivity, interactions, and the spec built from them."""

from qubocompress.analysis.analyse import analyse_model

__all__ = ["analyse_model"]
