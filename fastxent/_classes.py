"""Keras-style loss objects: options at construction, ``loss(y_true, y_pred, sample_weight)``."""

from __future__ import annotations

from ._api import binary_crossentropy, categorical_crossentropy, keyword_defaults, sparse_categorical_crossentropy
from ._validate import check_ignore_index, check_options

_SCALAR_OPTIONS = ("from_logits", "label_smoothing", "reduction", "epsilon", "return_grad", "backend", "threads")


class _Loss:
    _function = None  # the public function this class wraps

    def __init__(self, *, name: str | None = None, **options):
        allowed = _keyword_options(type(self)._function)
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise TypeError(
                f"{type(self).__name__}: expected options among {sorted(allowed)}, got {unknown}"
            )
        defaults = keyword_defaults(type(self)._function)
        resolved = {**defaults, **options}
        # the options a call would check first, checked now: a bad one fails here
        check_options(**{k: resolved[k] for k in _SCALAR_OPTIONS})
        if "ignore_index" in resolved:
            check_ignore_index(resolved["ignore_index"])
        self.name = name or type(self)._function.__name__
        self.options = options

    def __call__(self, y_true, y_pred, sample_weight=None):
        """The loss of ``y_pred`` against ``y_true`` with this object's options."""
        return type(self)._function(y_true, y_pred, sample_weight=sample_weight, **self.options)

    def get_config(self) -> dict:
        return {"name": self.name, **self.options}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({args})"


def _keyword_options(fn) -> set:
    return set(keyword_defaults(fn)) - {"sample_weight"}


class BinaryCrossentropy(_Loss):
    """Keras-style :func:`fastxent.binary_crossentropy`.

    >>> import fastxent
    >>> bce = fastxent.BinaryCrossentropy(from_logits=True)
    >>> print(round(float(bce([1, 0], [2.0, -1.0])), 6))
    0.220095
    """

    _function = staticmethod(binary_crossentropy)


class CategoricalCrossentropy(_Loss):
    """Keras-style :func:`fastxent.categorical_crossentropy`.

    >>> import fastxent
    >>> cce = fastxent.CategoricalCrossentropy(label_smoothing=0.1)
    >>> print(round(float(cce([[0, 1]], [[0.2, 0.8]])), 6))
    0.292458
    """

    _function = staticmethod(categorical_crossentropy)


class SparseCategoricalCrossentropy(_Loss):
    """Keras-style :func:`fastxent.sparse_categorical_crossentropy`.

    >>> import fastxent
    >>> scce = fastxent.SparseCategoricalCrossentropy(from_logits=True, ignore_index=-100)
    >>> print(round(float(scce([1, -100], [[0.0, 1.0], [5.0, 0.0]])), 6))
    0.313262
    """

    _function = staticmethod(sparse_categorical_crossentropy)
