"""The names of anomaly maps and their blends (``"ssim"``, ``"0.5*ssim+0.5*gms"``): parsed
without numpy or TensorFlow, so parameters can be checked before anything heavy loads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from anomaly_utils.errors import ParameterError

_MAP_KINDS = ("ssim", "l1", "l2", "gms", "lowpass")
# Where AE-2's map comes from: the reconstruction error alone, or the learned segmentation
# head (anomaly_utils.scoring.head_maps).
HEADS = ("none", "segmentation")


def _split_term(term: str, kind: str) -> tuple[float | None, str]:
    """``"0.5*ssim"`` -> (0.5, "ssim"); ``"ssim"`` -> (None, "ssim")."""
    weight, star, name = term.strip().rpartition("*")
    if not star:
        return None, name
    try:
        return float(weight), name.strip()
    except ValueError:
        raise ParameterError(f"anomaly map kind {kind!r}: weight {weight.strip()!r} of "
                             f"{name.strip()!r} is not a number",
                             fix="write weighted terms as e.g. '0.5*ssim+0.5*gms'") from None


def map_components(kind: str, weights: Mapping[str, float] | Sequence[float] | None = None,
                   ) -> dict[str, float]:
    """The {component: weight} that ``kind`` and ``weights`` describe (see :func:`anomaly_map`).

    Raises:
        ParameterError: an unknown or repeated component, weights both inline and passed,
            some terms weighted and others not, or a weight that is negative or not finite.

    Example:
        >>> map_components("ssim+gms"), map_components("0.5*ssim + 1*lowpass")
        ({'ssim': 0.5, 'gms': 0.5}, {'ssim': 0.5, 'lowpass': 1.0})
    """
    terms = ([_split_term(t, kind) for t in kind.split("+")] if isinstance(kind, str) else [])
    parts = [name for _, name in terms]
    if not parts or any(p not in _MAP_KINDS for p in parts) or len(set(parts)) != len(parts):
        raise ParameterError(
            f"anomaly map kind {kind!r} is not known",
            fix=f"use one of {', '.join(_MAP_KINDS)} or a '+' blend of distinct ones, e.g. "
                "'ssim+l1' (equal weights) or '0.5*ssim+1*lowpass'")
    inline = [w for w, _ in terms if w is not None]
    if inline and (len(inline) != len(terms) or weights is not None):
        problem = ("weights only some of its terms" if weights is None
                   else "has inline weights, and weights were passed as well")
        raise ParameterError(f"anomaly map kind {kind!r} {problem}",
                             fix="weight every term inline (e.g. '0.5*ssim+0.5*gms') or none")
    if inline:
        values = inline
    elif weights is None:
        values = [1.0 / len(parts)] * len(parts)
    elif isinstance(weights, Mapping):
        if set(weights) != set(parts):
            raise ParameterError(
                f"weights {dict(weights)!r} must have exactly the components of kind {kind!r}",
                fix=f"pass e.g. {dict.fromkeys(parts, round(1 / len(parts), 3))}")
        values = [weights[p] for p in parts]
    else:
        values = list(weights)
        if len(values) != len(parts):
            raise ParameterError(
                f"kind {kind!r} has {len(parts)} component(s) but {len(values)} weight(s) were "
                "given", fix="pass one weight per component, in the order of kind")
    if any(not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0) for v in values) \
            or sum(values) <= 0:
        raise ParameterError(f"map weights must be finite, >= 0 and not all 0; got {values!r} "
                             f"(kind {kind!r})",
                             fix="pass e.g. '0.5*ssim+0.5*l1' or weights={'ssim': 0.5, 'l1': 0.5}")
    return dict(zip(parts, (float(v) for v in values), strict=True))
