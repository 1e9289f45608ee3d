#!/usr/bin/env bash
# vggt-train's two commands. Both set up what is missing first (never replacing an installed torch:
# Ascend users pin torch to their torch_npu build).
#   ./launch.sh demo   synthetic Co3D -> shards -> 2-process DeepSpeed training on the CPU -> export -> loss plot
#   ./launch.sh test   the whole test suite (extra arguments go to pytest)
#   ./launch.sh multinode --hostfile F [--ds-config ds_configs/zero2.json] --config CFG [key=value ...]
#                      training across nodes with the deepspeed launcher (run on the first node)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

PYTHON="${PYTHON:-python3}"
CPU_TORCH="torch==2.13.0"  # the CPU wheel these machines carry locally; an unpinned torch pulls a CUDA build

log() { printf '[launch] %s\n' "$*"; }

ensure_torch() {
  if "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    log "torch $("$PYTHON" -c 'import torch; print(torch.__version__)') already installed: keeping it"
  else
    log "no torch found: installing $CPU_TORCH (CPU build)"
    "$PYTHON" -m pip install "$CPU_TORCH"
  fi
}

ensure_package() {
  # re-install only when pyproject.toml or the interpreter changed since the last successful install
  local stamp=".launch-installed" want
  want="$(cat pyproject.toml | cksum | cut -d' ' -f1)-$("$PYTHON" -c 'import sys; print(sys.executable)' | cksum | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
     && "$PYTHON" -c "import vggt_train, accelerate, deepspeed, datasets, transformers, safetensors, pytest, pytest_timeout" >/dev/null 2>&1; then
    return
  fi
  log "installing vggt-train and its dependencies (pip install -e .[dev])"
  "$PYTHON" -m pip install -e ".[dev]"
  echo "$want" > "$stamp"
}

setup() {
  ensure_torch
  ensure_package
}

cmd="${1:-help}"
shift || true
case "$cmd" in
  test)
    setup
    log "running the test suite"
    exec "$PYTHON" -m pytest tests -q "$@"
    ;;
  demo)
    setup
    out="runs/demo"
    for arg in "$@"; do  # an output_dir= override moves every step of the demo, not only the training
      case "$arg" in output_dir=*) out="${arg#output_dir=}" ;; esac
    done
    log "demo 1/5: a synthetic Co3D (2 categories x 5 sequences x 24 frames) in $out/data/raw"
    # only what an earlier demo wrote: output_dir= may name a directory that holds other things
    rm -rf "$out/data" "$out/checkpoints" "$out/tensorboard" "$out/metrics.jsonl" "$out/loss.png" "$out/model.safetensors"
    "$PYTHON" -m vggt_train make-synthetic-co3d --out "$out/data/raw" --categories tv,apple --sequences 4 \
      --test-sequences 1 --frames 24 --size 84x112 --seed 0
    log "demo 2/5: convert it to Arrow shards in $out/data/shards"
    "$PYTHON" -m vggt_train convert-co3d --co3d-dir "$out/data/raw/co3d" --annotation-dir "$out/data/raw/annotations" \
      --out "$out/data/shards" --workers 1
    log "demo 3/5: train the tiny VGGT with accelerate + DeepSpeed ZeRO-2 on 2 CPU processes (configs/demo_cpu.yaml)"
    OMP_NUM_THREADS=1 "$PYTHON" -m accelerate.commands.launch --config_file accelerate_configs/cpu_2p.yaml \
      -m vggt_train.train --config configs/demo_cpu.yaml "data.path=$out/data/shards" "$@"
    log "demo 4/5: export the last checkpoint to an official-format checkpoint"
    "$PYTHON" -m vggt_train export "$out" "$out/model.safetensors"
    log "demo 5/5: loss plot and summary"
    "$PYTHON" -m vggt_train plot-metrics "$out/metrics.jsonl" --out "$out/loss.png"
    ;;
  multinode)
    hostfile="" ds_config="ds_configs/zero2.json" rest=()
    while [ $# -gt 0 ]; do
      case "$1" in
        --hostfile) hostfile="$2"; shift 2 ;;
        --ds-config) ds_config="$2"; shift 2 ;;
        *) rest+=("$1"); shift ;;
      esac
    done
    if [ -z "$hostfile" ] || [ ! -f "$hostfile" ]; then
      echo "multinode: --hostfile FILE is required (lines like 'node1 slots=8'); got '${hostfile}'" >&2
      exit 2
    fi
    # DS_LAUNCHER_ARGS passes extra deepspeed-launcher options, e.g. "--master_addr node1 --master_port 29500"
    log "deepspeed launcher: hostfile $hostfile, DeepSpeed config $ds_config"
    # shellcheck disable=SC2086
    exec "$PYTHON" -m deepspeed.launcher.runner --hostfile "$hostfile" ${DS_LAUNCHER_ARGS:-} \
      --no_local_rank --module vggt_train.train "${rest[@]}" "deepspeed=$ds_config"
    ;;
  help|-h|--help)
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
    ;;
  *)
    echo "unknown command '$cmd'; use: ./launch.sh demo | test | multinode --hostfile F ... (./launch.sh help)" >&2
    exit 2
    ;;
esac
