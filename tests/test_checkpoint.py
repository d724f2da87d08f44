"""load_released_checkpoint: the released script's checkpoint format and plain state dicts."""

import pytest
import torch
from torch import nn

from bam_fused.models import extract_state_dict, load_released_checkpoint, resnet_bam


def _released(model: nn.Module) -> dict:
    """A checkpoint as the released train_imagenet.py writes it (model wrapped in DataParallel)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    return {
        "epoch": 90,
        "arch": "resnet18",
        "state_dict": state,
        "best_prec1": 71.3,
        "optimizer": opt.state_dict(),
    }


def _randomised(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.uniform_(0.5, 1.5)
    return model


def _assert_same(a: nn.Module, b: nn.Module) -> None:
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(y, x, rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_released_format_from_file(tmp_path, variant):
    src = _randomised(resnet_bam(18, "CIFAR100", 100, attention="bam", variant=variant))
    path = tmp_path / "model_best.pth.tar"
    torch.save(_released(src), path)
    dst = resnet_bam(18, "CIFAR100", 100, attention="fused", variant=variant)
    info = load_released_checkpoint(dst, path)
    _assert_same(src, dst)
    assert info["missing_keys"] == info["unexpected_keys"] == []
    assert info["checkpoint"]["epoch"] == 90 and info["checkpoint"]["best_prec1"] == 71.3


def test_plain_state_dict_and_object(tmp_path):
    src = _randomised(resnet_bam(18, "CIFAR10", 10, attention="bam"))
    dst = resnet_bam(18, "CIFAR10", 10, attention="bam")
    load_released_checkpoint(dst, src.state_dict())
    _assert_same(src, dst)
    torch.save(src.state_dict(), tmp_path / "plain.pt")
    dst2 = resnet_bam(18, "CIFAR10", 10, attention="fused")
    load_released_checkpoint(dst2, str(tmp_path / "plain.pt"))
    _assert_same(src, dst2)


def test_into_ddp_like_wrapper_and_compile_prefix():
    src = _randomised(resnet_bam(18, "CIFAR10", 10, attention=None))
    compiled = {f"_orig_mod.module.{k}": v for k, v in src.state_dict().items()}
    dst = nn.DataParallel(resnet_bam(18, "CIFAR10", 10, attention=None))
    load_released_checkpoint(dst, {"state_dict": compiled, "epoch": 1})
    _assert_same(src, dst.module)


def test_strict_error_lists_missing_and_unexpected_keys():
    official = _released(resnet_bam(18, attention="bam", variant="official"))
    paper = resnet_bam(18, attention="fused", variant="paper")
    with pytest.raises(KeyError, match=r"missing keys \['bam1\.channel_att\.gate_c\.gate_c_bn_final\.bias'"):
        load_released_checkpoint(paper, official)
    plain = resnet_bam(18, attention=None)
    with pytest.raises(KeyError, match=r"unexpected keys \['bam1\.channel_att"):
        load_released_checkpoint(plain, official)


def test_non_strict_official_into_paper():
    src = _randomised(resnet_bam(18, attention="bam", variant="official"))
    dst = resnet_bam(18, attention="bam", variant="paper")
    before = dst.bam1.channel_att.gate_c.gate_c_bn_final.weight.clone()
    info = load_released_checkpoint(dst, _released(src), strict=False)
    assert len(info["missing_keys"]) == 3 * 2 * 5 and info["unexpected_keys"] == []
    torch.testing.assert_close(dst.layer3[1].bn2.running_var, src.layer3[1].bn2.running_var)
    torch.testing.assert_close(dst.bam1.channel_att.gate_c.gate_c_bn_final.weight, before)


def test_shape_mismatch_names_key_and_shapes():
    src = resnet_bam(18, "CIFAR100", 100, attention="bam")
    with pytest.raises(ValueError, match=r"fc\.weight: checkpoint \(100, 512\) vs model \(10, 512\)"):
        load_released_checkpoint(resnet_bam(18, "CIFAR10", 10, attention="bam"), src.state_dict(), strict=False)


def test_partly_prefixed_dict_is_not_silently_rewritten():
    sd = resnet_bam(18, attention=None).state_dict()
    mixed = {("module." + k if i % 2 else k): v for i, (k, v) in enumerate(sd.items())}
    assert extract_state_dict(mixed) == mixed
    with pytest.raises(KeyError, match="unexpected keys"):
        load_released_checkpoint(resnet_bam(18, attention=None), mixed)


def test_not_a_mapping():
    with pytest.raises(TypeError, match="checkpoint must be"):
        load_released_checkpoint(resnet_bam(18, attention=None), [1, 2])
