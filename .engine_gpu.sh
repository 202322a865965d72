export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi -L
python3 -c "import torch,timm;print(torch.__version__,timm.__version__)"
# timeout 150 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_engine.py -o addopts="" 2>&1 | grep -v "it/s" | tail -15
python3 - <<'PY' > $OUT/log 2>&1; tr '\r' '\n' < $OUT/log | grep -v 'it/s\|img/s' | tail -40
from pathlib import Path

from mae.config import load_config, PretrainConfig
from mae.pretrain import run
for amp in ['bf16', 'fp16', 'none']:
    cfg = load_config(PretrainConfig, overrides=[f'amp={amp}', 'epochs=3', 'warmup_epochs=1', 'batch_size=256', 'device=cuda', 'num_workers=4', 'base_lr=1e-3'])
    m = run(cfg, '.engine_gpu_data', f'/tmp/o_{amp}/pretrain')
    print(amp, {k: m[k] for k in ['train_loss', 'loss', 'img_s', 'wall_s', 'steps']})
PY
