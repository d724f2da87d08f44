"""Loading checkpoints written by the authors' released training script (and plain state dicts).

The released ``train_imagenet.py`` saves ``{'epoch', 'arch', 'state_dict', 'best_prec1',
'optimizer'}`` with the model wrapped in ``DataParallel``, so every key starts with ``module.``.
"""

import os
from collections.abc import Mapping

import torch
from torch import nn

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile


def extract_state_dict(checkpoint: Mapping) -> dict[str, torch.Tensor]:
    """The model's state dict from a released-format checkpoint or a plain state dict.

    Strips the ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (torch.compile) prefixes when
    every key carries them, so that a partly prefixed dict is reported, not silently altered.
    """
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"checkpoint must be a state dict or a checkpoint dict, got {type(checkpoint).__name__}")
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping):
        raise TypeError(f"checkpoint['state_dict'] must be a mapping, got {type(state).__name__}")
    state = dict(state)
    changed = True
    while changed and state:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def load_released_checkpoint(model: nn.Module, path_or_state_dict, strict: bool = True, map_location="cpu") -> dict:
    """Load a released-format checkpoint (or a plain state dict) into ``model``.

    Args:
        model: e.g. ``resnet_bam(50, attention="fused", variant="official")``; a DDP-wrapped
            model is unwrapped.
        path_or_state_dict: a path to a ``torch.save`` file, or the loaded object: either
            ``{'state_dict': ..., 'epoch': ..., 'best_prec1': ..., 'optimizer': ...}`` or a
            state dict; ``module.`` prefixes are stripped.
        strict: require the keys to match exactly (the default). With ``strict=False`` missing
            and unexpected keys are tolerated and returned; shape mismatches always raise.
        map_location: passed to ``torch.load``.

    Returns:
        ``{"missing_keys": [...], "unexpected_keys": [...], "checkpoint": <the loaded object>}``;
        the caller can read ``epoch``/``best_prec1``/``optimizer`` from ``checkpoint``.

    Raises:
        KeyError: ``strict`` and the keys differ; the message lists missing and unexpected keys.
        ValueError: a tensor's shape differs from the model's (named with both shapes).
    """
    if isinstance(path_or_state_dict, str | os.PathLike):
        # weights_only=False: the released format pickles the optimizer state alongside.
        checkpoint = torch.load(path_or_state_dict, map_location=map_location, weights_only=False)
    else:
        checkpoint = path_or_state_dict
    state = extract_state_dict(checkpoint)
    wrapped = isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel)
    target = model.module if wrapped else model
    own = target.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if strict and (missing or unexpected):
        raise KeyError(
            f"checkpoint does not match {type(target).__name__} (strict=True): "
            f"missing keys {missing}, unexpected keys {unexpected}. Pass strict=False to load the "
            f"common keys (e.g. released 'official' weights into variant='paper')."
        )
    bad = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape
    ]
    if bad:
        raise ValueError("checkpoint tensor shapes differ from the model's: " + "; ".join(bad))
    target.load_state_dict(state, strict=False)
    return {"missing_keys": missing, "unexpected_keys": unexpected, "checkpoint": checkpoint}
