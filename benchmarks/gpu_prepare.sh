#!/usr/bin/env bash
# Run HERE (the development machine) before a device call: fills the ignored .gpu-data/ folder with
# what the lent GPU machine lacks. It has no package registry and no ../shared, and its image holds
# torch, torchvision, numpy, matplotlib, scikit-learn, rich and pillow but not pydantic or tomli-w
# (the device tool's KINDS.md lists its packages). Python there is 3.12, so the wheels are cp312.
#   bash benchmarks/gpu_prepare.sh && <device run: bash benchmarks/gpu_check.sh, carry [".gpu-data"]>
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu-data/whl
cp -u ../shared/data/cifar10-jpeg.tar.gz .gpu-data/
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .gpu-data/whl pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  typing_extensions==4.16.0 tomli_w==1.2.0
du -sh .gpu-data  # about 22 MB of the 64 MiB a call may carry
