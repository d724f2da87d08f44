"""Element-wise math of the BAM gate shared by the forward and backward kernels.

    a = mc ⊕ ms        (sum, product or max; or mc alone / ms alone)
    s = σ(a)

Each helper works on broadcastable tiles in the compute dtype (float32, or float64 for
gradcheck) so that the forward and backward kernels cannot disagree on the formula.
"""

import triton
import triton.language as tl

from .utils import COMBINES

# The COMBINE constexpr of every kernel: the combine's position in COMBINES.
COMBINE_SUM: tl.constexpr = tl.constexpr(COMBINES.index("sum"))
COMBINE_PRODUCT: tl.constexpr = tl.constexpr(COMBINES.index("product"))
COMBINE_CODES = {name: code for code, name in enumerate(COMBINES)}


@triton.jit
def gate_preactivation(mc, ms, COMBINE: tl.constexpr, HAS_MC: tl.constexpr, HAS_MS: tl.constexpr):
    """a = mc ⊕ ms for broadcastable tiles mc [BC, 1] / ms [1, BHW] (or [BHW, 1] / [1, BC])."""
    if HAS_MC and HAS_MS:
        if COMBINE == COMBINE_SUM:
            a = mc + ms
        elif COMBINE == COMBINE_PRODUCT:
            a = mc * ms
        else:
            # Spelled out rather than tl.maximum so NaN propagates from either side, as torch.maximum.
            a = tl.where((mc > ms) | (mc != mc), mc, ms)
    elif HAS_MC:
        a = mc
    else:
        a = ms
    return a


@triton.jit
def gate_sigmoid(a):
    # 1 / (1 + e^-a) rather than tl.sigmoid so that float64 tiles stay float64 for gradcheck.
    return 1.0 / (1.0 + tl.exp(-a))


@triton.jit
def gate_combine_grads(t, mc, ms, COMBINE: tl.constexpr):
    """Split t = ∂L/∂a into its share for mc and for ms (both branches present).

    max follows torch.maximum: a tie gives each side half, NaN on either side gives both all.
    """
    if COMBINE == COMBINE_SUM:
        t_mc = t
        t_ms = t
    elif COMBINE == COMBINE_PRODUCT:
        t_mc = t * ms
        t_ms = t * mc
    else:
        tie = mc == ms
        t_mc = tl.where(tie, 0.5 * t, tl.where(mc < ms, 0.0, t))
        t_ms = tl.where(tie, 0.5 * t, tl.where(mc > ms, 0.0, t))
    return t_mc, t_ms
