# GPU speed session (not yet run: written in a session without a GPU). Through the device tool, from
# the repository root, carrying the raw Frappe_x1 files (copy ../shared/data/frappe_x1 to an ignored
# folder, e.g. raw_frappe/, and name it in `carry`) and wheels in .whl/ for what that machine's image
# lacks: polars (adactr's raw-file readers) and deepctr-torch 0.3.0 with its pure-Python needs (see
# /work/.library/device/README.md for fetching manylinux wheels here):
#   FRAPPE_DIR=raw_frappe bash benchmarks/gpu_speed.sh
# 1. the CUDA-graph test against the eager loop; 2. the side-by-side speed run with adactr eager,
# compiled and CUDA-graphed (FuxiCTR needs Ray, which cannot be carried there).
export PYTHONPATH=src PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=src:/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -m pytest -q tests/test_graphed.py -p no:cacheprovider 2>&1 | tail -5
python3 benchmarks/speed.py --device cuda --datasets frappe,criteo --frappe-epochs 5 --peers deepctr \
  --deepctr-encoder factorize --adactr-compile --adactr-cuda-graph --frappe-dir "${FRAPPE_DIR:-raw_frappe}" \
  --peers-python "$(command -v python3)" --out "$OUT/speed_gpu.json" 2>&1 | grep -v Warn
