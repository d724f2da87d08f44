"""The Triton kernels against the float64 reference: forward, all three gradients, every mode.

On CPU these run through TRITON_INTERPRET (tests/conftest.py); on CUDA the same tests run on
the GPU (``pytest -m gpu``). Small forced block shapes give many tiles with ragged edges, so
a wrong index or a missing mask shows up as a wrong or unwritten (NaN-poisoned) element.
"""

import itertools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bam_fused.kernels import (
    BwdConfig,
    FwdConfig,
    bwd_buffers,
    bwd_config,
    bwd_plan,
    fwd_config,
    fwd_plan,
    gate_bwd,
    gate_fwd,
)
from bam_fused.kernels.gate_bwd import GATE_BWD_PROGRAMS_PER_SM
from bam_fused.kernels.layout import hw_strides
from gate_cases import DTYPES, MODES, TOL, assert_close, make_inputs, poisoned_like, reference64

LAYOUTS = {"nchw": False, "channels_last": True}  # make_inputs' channels_last flag
# Ragged on purpose: C and HW are not multiples of the blocks below.
SHAPE = (2, 11, 5, 7)
SMALL_FWD = FwdConfig(block_c=4, block_hw=16)
# A small reduce block: stage two runs several programs per map, the last one ragged.
SMALL_BWD = BwdConfig(block_c=4, block_hw=16, splits=2, reduce_block=16)


def run_fwd(x, mc, ms, combine, residual, config=None, force_int64=False):
    """The forward into a NaN-poisoned output."""
    out = poisoned_like(x)
    y = gate_fwd(x, mc, ms, combine=combine, residual=residual, config=config, out=out, force_int64=force_int64)
    assert y is out
    return y


def run_bwd(g, x, mc, ms, combine, residual, config, force_int64=False):
    """The backward into NaN-poisoned buffers (partials included); checks that stage two is the
    sum of stage one's partials."""
    plan = bwd_plan(x, config)
    out = bwd_buffers(x, mc, ms, plan, fill=float("nan"))
    grads = gate_bwd(g, x, mc, ms, combine=combine, residual=residual, config=config, out=out, force_int64=force_int64)
    assert grads == out[:3]
    gmc_part, gms_part = plan.part_views(out.parts)
    # Against the partials summed in float64, within the output dtype's tolerance (NaN where a
    # partial is NaN: check_all's comparison with the reference catches those).
    for total, parts in ((out.gmc, gmc_part), (out.gms, gms_part)):
        if total is not None:
            want = parts.double().sum(1).view(total.shape)
            torch.testing.assert_close(total.double(), want, equal_nan=True, **TOL[total.dtype])
    return grads


def check_all(x, mc, ms, combine, residual, fwd_cfg, bwd_cfg, force_int64=False):
    y = run_fwd(x, mc, ms, combine, residual, fwd_cfg, force_int64)
    g = torch.randn_like(y)
    y_ref, grads_ref = reference64(x, mc, ms, combine, residual, g)
    assert_close(y, y_ref, "y")
    assert y.stride() == x.stride()
    grads = run_bwd(g, x, mc, ms, combine, residual, bwd_cfg, force_int64)
    for name, got, want in zip(("gx", "gmc", "gms"), grads, grads_ref):
        if want is not None:
            assert_close(got, want, name)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("residual", [True, False], ids=["residual", "plain"])
@pytest.mark.parametrize("mode", MODES)
def test_matches_reference(mode, residual, dtype, layout, device):
    x, mc, ms, combine = make_inputs(SHAPE, mode, dtype, LAYOUTS[layout], device=device)
    check_all(x, mc, ms, combine, residual, SMALL_FWD, SMALL_BWD)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "shape", [(3, 1, 4, 4), (2, 6, 1, 1), (2, 5, 7, 7), (2, 3, 5, 13), (1, 17, 3, 9), (1, 64, 2, 3)], ids=str
)
def test_odd_shapes_with_launch_heuristics(shape, layout, device):
    """The block heuristics themselves (no forced config) on tiny and non-power-of-2 maps."""
    x, mc, ms, combine = make_inputs(shape, "sum", torch.float32, LAYOUTS[layout], device=device)
    N, C, H, W = shape
    channels_last = LAYOUTS[layout] and not x.is_contiguous()
    bwd_cfg = bwd_config(N, C, H * W, channels_last, x.element_size(), num_sms=8)
    check_all(x, mc, ms, combine, True, None, bwd_cfg)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_pipelined_backward_walk(layout, device):
    """NUM_STAGES > 1 (the walk prefetched through shared memory on a GPU) computes the same thing."""
    x, mc, ms, combine = make_inputs(SHAPE, "product", torch.bfloat16, LAYOUTS[layout], device=device)
    check_all(x, mc, ms, combine, True, SMALL_FWD, SMALL_BWD._replace(num_stages=3))


@pytest.mark.parametrize("mode", ["sum", "max"])
def test_float64(mode, device):
    x, mc, ms, combine = make_inputs(SHAPE, mode, torch.float64, device=device)
    check_all(x, mc, ms, combine, True, SMALL_FWD, SMALL_BWD)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_x_with_float32_maps(dtype, device):
    """Autocast hands the gate float32 maps next to a half x: each gradient keeps its input's dtype."""
    x, mc, ms, combine = make_inputs(SHAPE, "sum", dtype, map_dtype=torch.float32, device=device)
    check_all(x, mc, ms, combine, True, SMALL_FWD, SMALL_BWD)
    _, gmc, gms = run_bwd(torch.randn_like(x), x, mc, ms, combine, True, SMALL_BWD)
    assert gmc.dtype == gms.dtype == torch.float32


@pytest.mark.parametrize("layout", LAYOUTS)
def test_int64_offsets(layout, device):
    """The 64-bit offset path (taken at numel ≥ 2³¹) computes the same thing, forced on a small map."""
    x, mc, ms, combine = make_inputs(SHAPE, "product", torch.float32, LAYOUTS[layout], device=device)
    check_all(x, mc, ms, combine, True, SMALL_FWD, SMALL_BWD, force_int64=True)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("splits", [1, 2, 3, 5])
def test_split_uneven(splits, layout, device):
    """Splits of the walked axis (c for NCHW, hw for channels_last) that do not divide it,
    including more splits asked for than there are chunks."""
    x, mc, ms, combine = make_inputs((2, 19, 3, 6), "sum", torch.float32, LAYOUTS[layout], device=device)
    check_all(x, mc, ms, combine, True, SMALL_FWD, SMALL_BWD._replace(splits=splits))


def test_gradient_for_g_in_other_layout(device):
    """g arriving contiguous for a channels_last x goes through the public op unchanged in value."""
    import bam_fused

    x, mc, ms, combine = make_inputs(SHAPE, "sum", torch.float32, True, device=device)
    x.requires_grad_()
    y = bam_fused.bam_gate(x, mc, ms, backend="triton")
    g = torch.randn(y.shape, device=device)  # contiguous
    (gx,) = torch.autograd.grad(y, x, g)
    _, (gx_ref, _, _) = reference64(x, mc, ms, combine, True, g)
    assert_close(gx, gx_ref, "gx")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradient_whose_hw_do_not_collapse(layout, device):
    """A g whose (h, w) share no single stride (W-major) is read through one copy laid out like x:
    every gradient as the reference's."""
    x, mc, ms, combine = make_inputs(SHAPE, "sum", torch.float32, LAYOUTS[layout], device=device)
    g = torch.randn(SHAPE[0], SHAPE[1], SHAPE[3], SHAPE[2], device=device).transpose(2, 3)
    assert hw_strides(g) is None
    _, grads_ref = reference64(x, mc, ms, combine, True, g)
    for got, want, name in zip(gate_bwd(g, x, mc, ms, combine=combine, residual=True), grads_ref, "gx gmc gms".split()):
        assert_close(got, want, name)


def test_empty_batch(device):
    x, mc, ms, combine = make_inputs((0, 4, 3, 3), "sum", torch.float32, device=device)
    y = run_fwd(x, mc, ms, combine, True)
    assert y.shape == x.shape
    gx, gmc, gms = gate_bwd(torch.randn_like(x), x, mc, ms, combine="sum", residual=True)
    assert gx.shape == x.shape and gmc.shape == (0, 4) and gms.shape == (0, 3, 3)


def test_zero_channels_give_zero_spatial_gradient(device):
    x, mc, ms, combine = make_inputs((2, 0, 3, 3), "spatial", torch.float32, device=device)
    for cl in (False, True):
        xl = x.to(memory_format=torch.channels_last) if cl else x
        gx, gmc, gms = run_bwd(torch.randn_like(xl), xl, None, ms, combine, True, None)
        assert gx.shape == x.shape and gmc is None and torch.equal(gms, torch.zeros(2, 3, 3, device=device))


def test_deterministic(device):
    """Two backward runs with a c-split are bitwise equal (no atomics, fixed reduction order)."""
    x, mc, ms, combine = make_inputs((2, 37, 6, 6), "sum", torch.float32, device=device)
    g = torch.randn_like(x)
    cfg = SMALL_BWD._replace(splits=4)
    first = gate_bwd(g, x, mc, ms, combine=combine, residual=True, config=cfg)
    second = gate_bwd(g, x, mc, ms, combine=combine, residual=True, config=cfg)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["sum", "product", "max"])
def test_nan_and_inf_stay_where_they_belong(mode, device):
    """A NaN in x spoils exactly its own output and the map gradients it feeds, nothing else;
    an inf in ms gives the reference's numbers everywhere (0 · inf must not leak from masks)."""
    x, mc, ms, combine = make_inputs(SHAPE, mode, torch.float32, device=device)
    x[1, 3, 2, 4] = float("nan")
    ms[0, 1, 1] = float("inf")
    ms[0, 2, 2] = float("-inf")
    y = run_fwd(x, mc, ms, combine, True, SMALL_FWD)
    g = torch.randn_like(y)
    y_ref, grads_ref = reference64(x, mc, ms, combine, True, g)
    got = (y,) + run_bwd(g, x, mc, ms, combine, True, SMALL_BWD)
    want = (y_ref,) + grads_ref
    for name, a, b in zip(("y", "gx", "gmc", "gms"), got, want):
        torch.testing.assert_close(a.double().cpu(), b, equal_nan=True, atol=1e-5, rtol=1e-5, msg=name)
    assert torch.isnan(y).sum() == 1 and torch.isnan(y[1, 3, 2, 4])


def test_max_ties_split_like_torch_maximum(device):
    """Where mc == ms each side gets half the gradient, as torch.maximum's backward."""
    x, mc, ms, combine = make_inputs((1, 3, 2, 2), "max", torch.float32, device=device)
    ms[0] = mc[0, 0]  # channel 0 ties everywhere
    check_all(x, mc, ms, combine, True, SMALL_FWD, SMALL_BWD)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 2),
    c=st.integers(1, 24),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    mode=st.sampled_from(sorted(MODES)),
    channels_last=st.booleans(),
    residual=st.booleans(),
    block_c=st.sampled_from([1, 2, 8, 32]),
    block_hw=st.sampled_from([1, 4, 16, 64]),
    splits=st.integers(1, 4),
    reduce_block=st.sampled_from([1, 16, 1024]),
)
def test_random_shapes_and_blocks(
    n, c, h, w, mode, channels_last, residual, block_c, block_hw, splits, reduce_block, device
):
    x, mc, ms, combine = make_inputs((n, c, h, w), mode, torch.float32, channels_last, device=device)
    fwd_cfg = FwdConfig(block_c, block_hw)
    bwd_cfg = BwdConfig(block_c, block_hw, splits, reduce_block=reduce_block)
    check_all(x, mc, ms, combine, residual, fwd_cfg, bwd_cfg)


def test_heuristics_cover_the_resnet_shapes():
    """Configs for tiny to large maps: power-of-2 blocks, the tile bounded, the grid filled, and the
    backward's fast axis no wider than a warp of 16-byte vectors (its per-chunk sum stays in a warp)."""
    for (c, hw), cl, size in itertools.product(
        [(1, 1), (64, 49), (256, 3136), (1024, 196), (64, 12544)], [False, True], [2, 4, 8]
    ):
        f = fwd_config(c, hw, cl, size)
        b = bwd_config(64, c, hw, cl, size, num_sms=132)
        for cfg in (f, b):
            for block in (cfg.block_c, cfg.block_hw):
                assert block & (block - 1) == 0, (c, hw, cfg)
            assert cfg.block_c * cfg.block_hw * size <= 16384
        assert (b.block_c if cl else b.block_hw) <= 32 * 16 // size
        x = torch.empty(64, c, hw, 1, device="meta")
        plan = bwd_plan(x.to(memory_format=torch.channels_last) if cl else x, b)
        chunks = -(-c // b.block_c) if plan.walk_is_c else -(-hw // b.block_hw)
        programs = plan.grid[0]
        assert programs == 64 * plan.fast_blocks * plan.walk_splits
        assert programs >= min(GATE_BWD_PROGRAMS_PER_SM * 132, 64 * plan.fast_blocks * chunks), (c, hw, b)


def test_launch_plans_are_cached_per_shape_layout_dtype_and_config():
    """A launch looks its plan up: equal inputs share one, any difference that matters does not."""
    x = torch.empty(2, 8, 3, 5)
    xc = x.to(memory_format=torch.channels_last)
    assert bwd_plan(x) is bwd_plan(torch.empty(2, 8, 3, 5))
    assert bwd_plan(x).walk_is_c and not bwd_plan(xc).walk_is_c
    assert bwd_plan(x, SMALL_BWD) is bwd_plan(x, BwdConfig(4, 16, 2, reduce_block=16))
    assert bwd_plan(x, SMALL_BWD) is not bwd_plan(x, SMALL_BWD._replace(splits=1))
    assert bwd_plan(x, SMALL_BWD) is not bwd_plan(x, SMALL_BWD, force_int64=True)
    assert fwd_plan(x) is fwd_plan(x.clone()) and fwd_plan(x) is not fwd_plan(x.double())
    assert fwd_plan(x).scalars != fwd_plan(xc).scalars  # strides differ
    with pytest.raises(ValueError, match=r"contiguous or channels_last.*\(2, 8, 3, 5\)"):
        fwd_plan(x.transpose(2, 3).contiguous().transpose(2, 3))
