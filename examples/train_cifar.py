"""Train ResNet+BAM on CIFAR-10/100: a thin wrapper around ``bam-train`` (:mod:`bam_fused.train`).

    python examples/train_cifar.py --data ./cifar --dataset cifar100 --download --depth 50 --out runs/r50
    python examples/train_cifar.py --synthetic --epochs 1 --steps-per-epoch 2 --out /tmp/smoke
    torchrun --nproc_per_node 2 examples/train_cifar.py --synthetic --epochs 1 --out /tmp/ddp

``python examples/train_cifar.py --help`` lists every option.
"""

import sys

from bam_fused.train import main

if __name__ == "__main__":
    sys.exit(main())
