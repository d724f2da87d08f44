"""BAM and FusedBAM: same numbers, same state_dict, both variants; released checkpoints load;
convert_to_fused swaps in place; bad arguments fail early and clearly."""

import pytest
import torch
from torch import nn

from bam_fused import BAM, FusedBAM, convert_to_fused
from benchmarks.released_bam import BAM as ReleasedBAM
from exact import assert_as_exact_as, float64_copy, module_pair, randomize_bn, results

OFFICIAL_KEYS = {
    f"channel_att.gate_c.{k}"
    for k in [
        "gate_c_fc_0.weight",
        "gate_c_fc_0.bias",
        "gate_c_bn_1.weight",
        "gate_c_bn_1.bias",
        "gate_c_bn_1.running_mean",
        "gate_c_bn_1.running_var",
        "gate_c_bn_1.num_batches_tracked",
        "gate_c_fc_final.weight",
        "gate_c_fc_final.bias",
    ]
} | {
    f"spatial_att.gate_s.{k}"
    for k in [
        "gate_s_conv_reduce0.weight",
        "gate_s_conv_reduce0.bias",
        "gate_s_conv_final.weight",
        "gate_s_conv_final.bias",
    ]
    + [f"gate_s_bn_reduce0.{b}" for b in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    + [f"gate_s_conv_di_{i}.{p}" for i in (0, 1) for p in ("weight", "bias")]
    + [
        f"gate_s_bn_di_{i}.{b}"
        for i in (0, 1)
        for b in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    ]
}
BN_BUFFERS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
PAPER_EXTRA = {f"channel_att.gate_c.gate_c_bn_final.{b}" for b in BN_BUFFERS} | {
    f"spatial_att.gate_s.gate_s_bn_final.{b}" for b in BN_BUFFERS
}


def test_state_dict_keys():
    assert set(BAM(64, variant="official").state_dict()) == OFFICIAL_KEYS
    assert set(BAM(64).state_dict()) == OFFICIAL_KEYS | PAPER_EXTRA
    assert set(FusedBAM(64).state_dict()) == OFFICIAL_KEYS | PAPER_EXTRA
    assert BAM(64, variant="official").combine == "product" and BAM(64).combine == "sum"


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("variant", ["paper", "official"])
@pytest.mark.parametrize("combine", [None, "max"])
def test_fused_matches_eager(variant, combine, training, device):
    """Output, every gradient and (train mode) every running statistic of one step, as near a
    float64 eager BAM as eager BAM's own in float32."""
    eager, fused = module_pair(device=device, args=(32, 4), dilation_val=2, variant=variant, combine=combine)
    exact = float64_copy(eager)
    x = torch.randn(3, 32, 6, 5, device=device)  # non-square on purpose
    g = torch.randn_like(x)
    want, got = (results(m.train(training), x, g) for m in (eager, fused))
    assert_as_exact_as(got, want, results(exact.train(training), x.double(), g.double()))


@pytest.mark.parametrize("branches", ["channel", "spatial"])
def test_single_branch(branches, device):
    eager, fused = module_pair(device=device, branches=branches)
    assert all(k.startswith("channel_att" if branches == "channel" else "spatial_att") for k in fused.state_dict())
    exact = float64_copy(eager)
    x = torch.randn(2, 16, 4, 4, device=device)
    g = torch.randn_like(x)
    assert_as_exact_as(results(fused, x, g), results(eager, x, g), results(exact, x.double(), g.double()))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_released_code_loads_strictly_into_official(training, device):
    released = ReleasedBAM(64).to(device)
    randomize_bn(released)
    ours = FusedBAM(64, variant="official", backend="triton").to(device)
    ours.load_state_dict(released.state_dict(), strict=True)
    exact = float64_copy(released)
    for module in (released, ours, exact):
        module.train(training)
    x = torch.randn(2, 64, 7, 7, device=device)
    assert_as_exact_as(ours(x), released(x), exact(x.double()), name="y")
    # The paper variant is a superset: released weights load with strict=False, missing only final BNs.
    missing, unexpected = BAM(64).load_state_dict(released.state_dict(), strict=False)
    # (BatchNorm forgives a missing num_batches_tracked, so those two keys are not reported.)
    assert set(missing) == {k for k in PAPER_EXTRA if "num_batches" not in k} and not unexpected


def test_state_dict_round_trip(tmp_path, device):
    src = FusedBAM(32, 8).to(device)
    randomize_bn(src)
    torch.save(src.state_dict(), tmp_path / "bam.pt")
    dst = BAM(32, 8).to(device)
    dst.load_state_dict(torch.load(tmp_path / "bam.pt"), strict=True)
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), k


def test_convert_to_fused(device):
    ours = BAM(32, 8)
    released = ReleasedBAM(64)
    inner = nn.Sequential(nn.Conv2d(32, 64, 1), released)
    model = nn.Sequential(nn.Conv2d(3, 32, 1), ours, inner, nn.ReLU()).to(device)
    randomize_bn(model)
    model.eval()
    released.train()  # a mixed tree: each module's own mode must survive
    x = torch.randn(2, 3, 8, 8, device=device)
    exact = float64_copy(model)(x.double())
    before = model(x)
    params_of_ours = {id(p) for p in ours.parameters()}
    convert_to_fused(model, backend="triton")
    assert isinstance(model[1], FusedBAM) and isinstance(model[2][1], FusedBAM)
    assert model[2][1].variant == "official" and model[2][1].combine == "product"
    assert {id(p) for p in model[1].parameters()} == params_of_ours  # optimizers keep working
    assert not model[1].training and model[2][1].training
    released.train()
    assert_as_exact_as(model(x), before, exact, name="y")
    assert isinstance(convert_to_fused(BAM(16, 4)), FusedBAM)
    assert convert_to_fused(model) is model


def test_convert_to_fused_keeps_subclasses_with_their_own_forward():
    """A BAM subclass that overrides forward (or attention_maps) would lose it as a FusedBAM: it stays,
    and a warning names it; a subclass that only adds to BAM is converted."""

    class Scaled(BAM):
        def forward(self, x):
            return 2 * super().forward(x)

    class Tagged(BAM):
        tag = "mine"

    model = nn.Sequential(Scaled(16, 4), nn.Sequential(Tagged(16, 4)))
    with pytest.warns(UserWarning, match=r"left 0 \(.*Scaled\) as it is: it overrides BAM\.forward"):
        convert_to_fused(model)
    assert type(model[0]) is Scaled and isinstance(model[1][0], FusedBAM)
    with pytest.warns(UserWarning, match=r"left the model \(.*Scaled\)"):
        assert type(convert_to_fused(Scaled(16, 4))) is Scaled


def test_convert_to_fused_module_registered_twice_stays_one_module():
    bam = BAM(16, 4)
    model = nn.Sequential()
    model.add_module("first", bam)
    model.add_module("again", nn.Sequential(bam))
    convert_to_fused(model)
    assert isinstance(model.first, FusedBAM) and model.again[0] is model.first
    assert len(list(model.parameters())) == len(list(bam.parameters()))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # shape checks, baked in as constants
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("cls", [BAM, FusedBAM])
def test_jit_trace(cls, training, device):
    """torch.jit.trace (whose check re-runs the model and compares graphs) gives the eager numbers:
    traced and untraced as near a float64 eager BAM (same weights) as the untraced module."""
    bam = cls(16, 4).to(device).train(training)
    randomize_bn(bam)
    eager = BAM(16, 4).to(device).train(training)
    eager.load_state_dict(bam.state_dict())
    x = torch.randn(2, 16, 5, 4, device=device)
    exact = float64_copy(eager)(x.double())
    traced = torch.jit.trace(bam, x)
    want = bam(x)
    assert_as_exact_as(want, eager(x), exact, name="untraced")
    assert_as_exact_as(traced(x), want, exact, name="traced")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gate_channel": 0}, "gate_channel must be >= 1, got 0"),
        ({"reduction_ratio": 0}, "reduction_ratio must be >= 1, got 0"),
        ({"reduction_ratio": -2}, "reduction_ratio must be >= 1, got -2"),
        ({"dilation_conv_num": -1}, "dilation_conv_num must be >= 0, got -1"),
        ({"dilation_val": 0}, "dilation_val must be >= 1, got 0"),
    ],
)
@pytest.mark.parametrize("cls", [BAM, FusedBAM])
def test_constructor_rejects_out_of_range_sizes(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**{"gate_channel": 32, **kwargs})


def test_constructor_errors():
    with pytest.raises(ValueError, match=r"gate_channel // reduction_ratio.*8 // 16 = 0"):
        BAM(8)
    with pytest.raises(ValueError, match="variant.*'released'"):
        BAM(64, variant="released")
    with pytest.raises(ValueError, match="combine.*'avg'"):
        FusedBAM(64, combine="avg")
    with pytest.raises(ValueError, match="backend.*'cudnn'"):
        FusedBAM(64, backend="cudnn")


def test_wrong_channel_count_fails_before_any_convolution():
    bam = FusedBAM(32, 8)
    ran = []
    bam.spatial_att.gate_s.gate_s_conv_reduce0.register_forward_hook(lambda *a: ran.append(1))
    bam.channel_att.gate_c.gate_c_fc_0.register_forward_hook(lambda *a: ran.append(1))
    with pytest.raises(ValueError, match=r"\(N, 32, H, W\).*\(2, 16, 4, 4\)"):
        bam(torch.randn(2, 16, 4, 4))
    with pytest.raises(ValueError, match=r"\(2, 32, 4\)"):
        bam(torch.randn(2, 32, 4))
    assert not ran


def test_empty_batch_and_one_by_one_map(device):
    fused = FusedBAM(16, 4, backend="triton").to(device).eval()
    randomize_bn(fused)
    eager = BAM(16, 4).to(device).eval()
    eager.load_state_dict(fused.state_dict())
    assert fused(torch.randn(0, 16, 5, 5, device=device)).shape == (0, 16, 5, 5)
    x = torch.randn(2, 16, 1, 1, device=device)
    assert_as_exact_as(fused(x), eager(x), float64_copy(eager)(x.double()), name="y")
