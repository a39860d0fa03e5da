#!/bin/sh
# Every check that needs an NVIDIA GPU, in one run: benchmarks/gpu_truth.py (NVML's counters against integrated
# power, and greenmeter's NVML behaviour) and the tests that skip without CUDA. For a machine with a GPU, torch
# built for CUDA, nvidia-ml-py and pytest; it installs this checkout without dependencies (nothing is downloaded).
# Results go to $OUT (default ./gpu_check_out): nvidia-smi.txt, gpu_truth.json and .log, pytest.log.
# About three minutes on an H200; each part has its own time limit, so one that hangs leaves the others' results.
#
#     OUT=/tmp/gpu sh benchmarks/gpu_check.sh
set -u
out=${OUT:-gpu_check_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if ! python3 -m pip install -q --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1; then
    # no setuptools there: run from the checkout, with the two folders installed under greenmeter linked in
    echo "pip install -e . failed; running from the checkout" >>"$out/install.log"
    for part in compression reports_templates; do
        [ -e "greenmeter/$part" ] || ln -s "../$part" "greenmeter/$part"
    done
    export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi -q >"$out/nvidia-smi.txt" 2>&1
python3 -c "import torch, pynvml; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count())" \
    >>"$out/nvidia-smi.txt" 2>&1
timeout 400 python3 benchmarks/gpu_truth.py --out "$out/gpu_truth.json" >"$out/gpu_truth.log" 2>&1
echo "gpu_truth.py exit $?" >>"$out/gpu_truth.log"
timeout 300 python3 -m pytest -q -p no:cacheprovider -rs tests/comparison/test_compare_gpu.py \
    tests/comparison/test_devices.py tests/sources/test_nvml_gpu.py >"$out/pytest.log" 2>&1
echo "pytest exit $?" >>"$out/pytest.log"
tail -n 3 "$out/gpu_truth.log" "$out/pytest.log"
