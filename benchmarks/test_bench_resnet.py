"""A ResNet-50 training step: ImageNet stem, bf16 autocast, channels_last, SGD with momentum.

Under --quick: ResNet-18 in fp32 on 2 images of 32², which CPUs get through in seconds.

Providers: no attention, eager BAM, FusedBAM, eager BAM with bam1..bam3 compiled. Records the
step time and the peak memory of one step (``torch.cuda.max_memory_allocated``).
"""

from . import cases
from .providers import resnet_model, resnet_step
from .timing import measure_steps, peak_memory


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        metafunc.parametrize("case", cases.resnet_cases(metafunc.config.getoption("--quick")), ids=str)


def test_resnet_step(case, device, quick, compile_mode, results):
    model = resnet_model(case.provider, case.depth, device, compile_mode)
    step = resnet_step(model, case.batch, case.image, device, case.dtype)
    # Warm-up: cuDNN plans, Triton JIT and the compiled BAMs, and the optimizer's momentum buffers.
    t = measure_steps(step, device, warmup=1 if quick else 3, iters=2 if quick else 8)
    peak, peak_abs = peak_memory(step, device)
    results.add_case(
        case,
        t,
        peak_mem_bytes=peak,
        extra={"reps": t.reps, "depth": case.depth, "peak_mem_abs_bytes": peak_abs, "optimizer": "SGD(0.9)"},
    )
