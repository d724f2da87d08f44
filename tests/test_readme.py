"""The README's install commands: what a newcomer copies first."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
CPU_WHEEL_INDEX = "https://download.pytorch.org/whl/cpu"


def test_cpu_only_install_takes_torch_from_pytorchs_cpu_wheel_index_before_the_package():
    """A plain ``pip install -e .`` pulls the CUDA build of torch (~3 GB): on a CPU-only machine the
    README installs the CPU build from PyTorch's CPU wheel index first, in the same code block."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    cpu_blocks = [b for b in blocks if CPU_WHEEL_INDEX in b]
    assert cpu_blocks, f"no bash block of the README installs torch from {CPU_WHEEL_INDEX}"
    block = cpu_blocks[0]
    torch_install = block.index(f"pip install torch --index-url {CPU_WHEEL_INDEX}")
    assert torch_install < block.index("pip install -e"), "torch's CPU build must come before the package"
