"""qubocompress: joint pruning + mixed-precision quantization of CNNs searched as a QUBO.

Layers (imports flow one way): data, models -> analysis -> problem -> solvers;
apply, bench, report, pipeline and cli sit on top.
"""

from qubocompress.errors import QubocompressError

__version__ = "0.1.0"
__all__ = ["QubocompressError", "__version__"]
