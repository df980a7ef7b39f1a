"""fastxent: fast, exact cross-entropy losses for NumPy arrays on the CPU.

Binary, categorical and sparse categorical cross-entropy, from probabilities or
logits, with gradients, through NumPy, Numba and Cython kernels chosen per call.
See the README for the contract; ``fastxent.show_config()`` for this installation.
"""

from ._version import __version__
from ._api import binary_crossentropy, categorical_crossentropy, sparse_categorical_crossentropy
from ._calibration import CalibrationWarning
from ._measure import calibrate
from ._classes import BinaryCrossentropy, CategoricalCrossentropy, SparseCategoricalCrossentropy
from ._config import config
from ._dispatch import Plan
from ._introspect import explain, show_config
from ._metrics import Metrics, sparse_metrics
from ._validate import ProbabilitiesAsLogitsWarning
from .linear import linear_cross_entropy

__all__ = [
    "binary_crossentropy",
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
    "linear_cross_entropy",
    "BinaryCrossentropy",
    "CategoricalCrossentropy",
    "SparseCategoricalCrossentropy",
    "Plan",
    "CalibrationWarning",
    "ProbabilitiesAsLogitsWarning",
    "calibrate",
    "config",
    "explain",
    "show_config",
    "sparse_metrics",
    "Metrics",
]
