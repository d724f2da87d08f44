"""Whether a call's kernels can run on its device: each configuration compiled and loaded once,
before anything of the call runs.

A kernel that cannot run on a user's GPU — more shared memory than the GPU has, a compile error,
an arch this Triton does not support — fails where Triton compiles and loads it: at its first
launch for each specialisation, which in a FusedBAM training step comes after a BatchNorm has
updated its statistics, or in the backward. So before the first call of each configuration, the
launches of a whole step (forward, and backward with a dense and with an expanded gradient) are
captured on meta tensors and each one is compiled and loaded for the device
(:func:`bam_fused.kernels.layout.load_launch`). The answer is kept for the process: the caller
runs its fallback for that configuration from then on, having warned once, or raises where the
kernels were asked for (``backend="triton"``).
"""

import contextlib
import warnings

import torch
from torch.utils._python_dispatch import _disable_current_modes

from .kernels.layout import CompiledForGPU, captured_launches, load_launch
from .kernels.target import planned_for, target_of

# configuration key → None (the kernels run) or why they cannot
_answers: dict = {}
# the reasons already warned about (train and eval mode are two configurations, one warning)
_warned: set = set()


def kernels_unavailable(
    key: tuple, step, x: torch.Tensor, fallback: str | None, device: torch.device | None = None
) -> str | None:
    """None when every kernel that ``step()`` launches (it runs on meta tensors, so nothing is
    computed) compiles and loads on x's device (``device`` where x is a meta tensor); else which
    kernel cannot, for what x, and why. Found once per ``key`` (a hashable description of
    everything the launches depend on).

    ``fallback``: what the caller does instead (said in a warning, once per reason); None: raise a
    RuntimeError instead of returning a reason.
    """
    device = x.device if device is None else device
    if key in _answers:
        answer = _answers[key]
    else:
        # Planned for x's device, as the real launches will be, though captured on meta tensors.
        with captured_launches() as launches, planned_for(target_of(device)), _apart():
            step()
        answer = None
        for kernel, args, kwargs in launches:
            try:
                load_launch(kernel, args, kwargs, device)
            except CompiledForGPU:  # the kernels' set-up, not the GPU: no fallback hides it
                raise
            except Exception as e:  # noqa: BLE001 (compiling and loading raise several classes)
                name = getattr(kernel, "__name__", type(kernel).__name__)
                answer = f"{name} cannot run on {device} for x {tuple(x.shape)} {x.dtype} ({type(e).__name__}: {e})"
                break
        _answers[key] = answer
        if answer is not None and fallback is not None and answer not in _warned:
            _warned.add(answer)
            warnings.warn(f"{answer}; {fallback} for this configuration from now on", RuntimeWarning, stacklevel=4)
    if answer is not None and fallback is None:
        raise RuntimeError(answer)
    return answer


def meta_like(t: torch.Tensor | None, requires_grad: bool = False) -> torch.Tensor | None:
    """A meta tensor of t's shape, strides and dtype (None for None)."""
    if t is None:
        return None
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta").requires_grad_(requires_grad)


def backward_both_ways(y: torch.Tensor) -> None:
    """y's backward with a dense gradient, then with y.sum()'s expanded one (kernels specialise on
    the gradient's strides)."""
    y.backward(torch.empty_like(y), retain_graph=True)
    y.backward(torch.empty(1, dtype=y.dtype, device=y.device).expand(y.shape))


@contextlib.contextmanager
def _apart():
    """The meta step as if nothing of the caller's were active: gradients on, and none of its
    saved-tensor hooks or dispatch modes (a counter, a profiler's) sees it."""
    with (
        torch.enable_grad(),
        torch.autograd.graph.saved_tensors_hooks(_same, _same),
        _disable_current_modes(),
    ):
        yield


def _same(t):
    return t
