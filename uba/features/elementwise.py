"""Element-wise math the feature and reason kernels are written in, for arrays or one event.

The kernels (``uba.features.compiled``, ``uba.features.reasons``) are written once, against
a namespace ``xp`` of the operations below, so there is still one definition of every
feature and severity:

* ``ARRAYS`` is numpy: a batch shard's rows, a ``/predict/batch`` request's events;
* ``FLOATS`` does the same on plain Python floats, for the single event of a ``/predict``,
  where each numpy call on a one-element array costs about a microsecond and the kernel
  makes about a hundred of them (the Python versions cost a tenth of that).

Both follow IEEE arithmetic as numpy does, so one event gets the same bits either way:
``fmax`` / ``fmin`` skip a NaN operand, ``maximum`` / ``minimum`` propagate it, a division
by zero is an infinity or NaN (not an exception), ``sqrt`` of a negative number and
``fmod`` of an infinity are NaN. Values are typed ``Any``: an array or a float, whichever
the namespace works on.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl

# Below this many values, C-library calls one by one beat a round trip through Polars.
SCALAR_MATH_ROWS = 16
Values = Any  # a float64 (or bool / index) array with ARRAYS, a Python float (bool, int) with FLOATS


def c_log1p(value: Values) -> Values:
    """``log(1 + x)`` of one value by the C library (NaN below -1, -inf at -1), as Polars."""
    if math.isnan(value) or value < -1.0:
        return math.nan
    return -math.inf if value == -1.0 else math.log1p(value)


class ArrayMath:
    """numpy's element-wise functions; callers silence its floating point warnings
    (``np.errstate``) where NaN and infinities are expected. Written as typed wrappers, not
    ``staticmethod(np.fmax)``: numpy's ufunc stubs reject plain floats as the second and
    third arguments under mypy (tried: 12 errors at the kernels' call sites)."""

    @staticmethod
    def fmax(a: Values, b: Values) -> Values:
        return np.fmax(a, b)

    @staticmethod
    def fmin(a: Values, b: Values) -> Values:
        return np.fmin(a, b)

    @staticmethod
    def maximum(a: Values, b: Values) -> Values:
        return np.maximum(a, b)

    @staticmethod
    def minimum(a: Values, b: Values) -> Values:
        return np.minimum(a, b)

    @staticmethod
    def where(condition: Values, a: Values, b: Values) -> Values:
        return np.where(condition, a, b)

    @staticmethod
    def isnan(values: Values) -> Values:
        return np.isnan(values)

    @staticmethod
    def sqrt(values: Values) -> Values:
        return np.sqrt(values)

    @staticmethod
    def fmod(a: Values, b: Values) -> Values:
        return np.fmod(a, b)

    @staticmethod
    def abs(values: Values) -> Values:
        return np.abs(values)

    @staticmethod
    def trunc(values: Values) -> Values:
        return np.trunc(values)

    @staticmethod
    def div(a: Values, b: Values) -> Values:
        return a / b

    @staticmethod
    def log1p(values: Values) -> Values:
        """``log(1 + x)`` bit for bit as the C library (and Polars) computes it."""
        values = np.asarray(values, dtype=np.float64)
        if values.size <= SCALAR_MATH_ROWS:
            return np.array([c_log1p(v) for v in values.tolist()], dtype=np.float64)
        return pl.Series(values).log1p().to_numpy()

    @staticmethod
    def gather(values: np.ndarray, rows: Values) -> Values:
        """``values`` at each event's snapshot row."""
        return values[rows]

    @staticmethod
    def gather2(table: np.ndarray, rows: Values, codes: Values) -> Values:
        """``table`` at each event's (snapshot row, category column), taken from the flat
        table: numpy's indexing by two arrays cost 2.5x as much (1.3-2.1 ms per 250 k
        events, fourteen tables a shard). The codes are within the table's columns by
        construction (``_category_index``)."""
        table = np.ascontiguousarray(table)
        return np.take(table.reshape(-1), rows * table.shape[1] + codes)

    @staticmethod
    def to_float(values: Values) -> Values:
        return values.astype(np.float64)

    @staticmethod
    def to_index(values: Values) -> Values:
        return values.astype(np.intp)

    @staticmethod
    def falses(rows: Values) -> Values:
        """False for every event (``rows`` gives their number)."""
        return np.zeros(len(rows), dtype=bool)


def _fmax(a: Values, b: Values) -> Values:
    if a != a:
        return b
    return a if b != b or a >= b else b


def _fmin(a: Values, b: Values) -> Values:
    if a != a:
        return b
    return a if b != b or a <= b else b


def _maximum(a: Values, b: Values) -> Values:
    return a if a != a or a >= b else b


def _minimum(a: Values, b: Values) -> Values:
    return a if a != a or a <= b else b


def _where(condition: Values, a: Values, b: Values) -> Values:
    return a if condition else b


def _isnan(value: Values) -> Values:
    return value != value


def _sqrt(value: Values) -> Values:
    return math.sqrt(value) if value >= 0.0 else math.nan  # NaN fails the test too


def _fmod(a: Values, b: Values) -> Values:
    try:
        return math.fmod(a, b)
    except ValueError:  # fmod(inf, b), fmod(a, 0): NaN in IEEE
        return math.nan


def _abs(value: Values) -> Values:
    return abs(value)


def _trunc(value: Values) -> Values:
    return float(math.trunc(value)) if math.isfinite(value) else value


def _div(a: Values, b: Values) -> Values:
    try:
        return a / b
    except ZeroDivisionError:  # IEEE: 0/0 and NaN/0 are NaN, x/0 an infinity of the sign of x/b
        if a != a or a == 0.0:
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)


class FloatMath:
    """The same operations on one event's plain Python floats (bools, ints)."""

    fmax = staticmethod(_fmax)
    fmin = staticmethod(_fmin)
    maximum = staticmethod(_maximum)
    minimum = staticmethod(_minimum)
    where = staticmethod(_where)
    isnan = staticmethod(_isnan)
    sqrt = staticmethod(_sqrt)
    fmod = staticmethod(_fmod)
    abs = staticmethod(_abs)
    trunc = staticmethod(_trunc)
    div = staticmethod(_div)
    log1p = staticmethod(c_log1p)

    @staticmethod
    def gather(values: np.ndarray, row: Values) -> Values:
        """The value at the event's snapshot row, as a Python scalar."""
        return values.item(row)

    @staticmethod
    def gather2(table: np.ndarray, row: Values, code: Values) -> Values:
        return table.item(row, code)

    @staticmethod
    def to_float(value: Values) -> Values:
        return float(value)

    @staticmethod
    def to_index(value: Values) -> Values:
        return int(value)

    @staticmethod
    def falses(row: Values) -> Values:
        return False


Math = type[ArrayMath] | type[FloatMath]
ARRAYS: Math = ArrayMath
FLOATS: Math = FloatMath
