#!/bin/bash
# Precision per machine (docs/measurements.md, "Precision on a CPU with AMX"): the default `mae pretrain`
# (amp auto) against fp32 and bf16, natively and with torch's kernels limited to AVX2, then the smoke study.
# One thing at a time on an otherwise idle machine.
# usage: docs/bench/precision.sh DATA OUTDIR     (DATA: a prepared dataset, e.g. the default study's shapes)
# Writes OUTDIR/cpu.txt, matmul_{native,avx2}.txt, pt_<class>_<amp>/metrics.json and walls.txt (process wall
# seconds per command); `amp_used`, `amp_reason`, `img_s` and `wall_s` are in each metrics.json.
set -euo pipefail
D=$1; O=$2; mkdir -p "$O"
export OMP_NUM_THREADS=1
lscpu | grep -E "Model name|^Model:|Flags" | cut -c1-400 > "$O/cpu.txt"
secs() { python -c "import time; print(time.time())"; }
for class in native avx2; do
  if [ "$class" = avx2 ]; then export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2; fi
  python - > "$O/matmul_$class.txt" <<'PY'
import time, torch
torch.set_num_threads(1)
for dt in (torch.float32, torch.bfloat16):
    a, b = torch.randn(2048, 512, dtype=dt), torch.randn(512, 512, dtype=dt)
    for _ in range(3):
        a @ b
    n = 3 if dt is torch.bfloat16 and torch.backends.cpu.get_cpu_capability() == "AVX2" else 20
    t = time.perf_counter()
    for _ in range(n):
        a @ b
    print(dt, round(2 * 2048 * 512 * 512 * n / (time.perf_counter() - t) / 1e9, 1), "GFLOP/s",
          torch.backends.cpu.get_cpu_capability())
PY
  for amp in auto none bf16; do
    [ "$class" = avx2 ] && [ "$amp" = bf16 ] && continue   # tens of times slower there: nothing to learn
    start=$(secs)
    mae pretrain --data "$D" --out "$O/pt_${class}_$amp" --device cpu --set model=mae_vit_micro_patch4 \
      --set epochs=1 --set batch_size=128 --set amp=$amp --set on_change=restart > "$O/pt_${class}_$amp.log" 2>&1
    echo "$class $amp process_wall_s $(python -c "print(round($(secs) - $start, 1))")" >> "$O/walls.txt"
  done
done
unset ATEN_CPU_CAPABILITY ONEDNN_MAX_CPU_ISA MKL_ENABLE_INSTRUCTIONS
W=$O/smoke; rm -rf "$W"; git worktree add -f "$W" HEAD > /dev/null
start=$(secs)
(cd "$W" && snakemake --cores 2 --configfile config/smoke.yaml > "$O/smoke.log" 2>&1)
echo "smoke wall_s $(python -c "print(round($(secs) - $start, 1))")" >> "$O/walls.txt"
git worktree remove --force "$W"
