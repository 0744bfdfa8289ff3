#!/bin/bash
# The notebook chain on the synthetic carpet, defaults, on a GPU machine that has JAX (CUDA
# build) and the scientific stack but no TensorFlow and no internet, run twice to check that
# the same parameters give the same metrics there. The packages the image lacks travel as
# wheels in WHEELS (keras, papermill, nbclient, ipykernel, pyfastnoiselite and what they
# need; list them with `pip install --dry-run --report` for the machine's Python and platform
# and leave out what the image has). Run from the repository root:
#   bash benchmarks/gpu_chain_check.sh WHEELS OUTDIR
# OUTDIR receives the environment, both runs' logs, metrics.json and status.json.
set -o pipefail
wheels=${1:?give the folder of wheels the machine lacks}
out=${2:?give an output folder}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 KERAS_BACKEND=jax
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gpu-chain-site "$wheels"/*.whl || exit 3
export PYTHONPATH=/tmp/gpu-chain-site:$PWD
{ nvidia-smi -L; nproc; python3 -V
  python3 -c "import jax, keras, numpy, cv2; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__, 'numpy', numpy.__version__, 'opencv', cv2.__version__)"
  python3 -c "import tensorflow" 2>&1 | tail -1; } 2>&1 | tee "$out/env.txt"
test -d data/synthetic_carpet || python3 -m anomaly_utils make-synthetic data/synthetic_carpet || exit 4
for id in gpu-carpet gpu-carpet-2; do
    python3 -m anomaly_utils run --backend jax --data-dir data/synthetic_carpet --run-id $id \
        > "$out/$id.log" 2>&1 || { tail -30 "$out/$id.log"; exit 5; }
    tail -9 "$out/$id.log"
    cp runs/$id/metrics.json "$out/$id.metrics.json"; cp runs/$id/status.json "$out/$id.status.json"
done
python3 - runs/gpu-carpet/metrics.json runs/gpu-carpet-2/metrics.json <<'PY' | tee -a "$out/env.txt"
import json, sys
first, second = (json.load(open(path)) for path in sys.argv[1:])
for metrics in (first, second):
    for notebook in metrics.get("params", {}).values():
        notebook.pop("run_dir", None)
print("the two runs' metrics are identical:", first == second)
sys.exit(first != second)
PY
