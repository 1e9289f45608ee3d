#!/usr/bin/env bash
# vggt-train's commands. Each sets up what is missing first (never replacing an installed torch:
# Ascend users pin torch to their torch_npu build).
#   ./launch.sh demo         synthetic Co3D -> shards -> 2-process DeepSpeed training on the CPU -> export -> loss plot
#                            (--mix: also synthetic COLMAP scenes, trained as a 0.7/0.3 mixture with the Co3D)
#   ./launch.sh test         the whole test suite (extra arguments go to pytest)
#   ./launch.sh test-compat  the whole suite on the oldest supported stack, Python 3.10 + torch 2.1.2, in .venv-torch2.1/
#   ./launch.sh multinode --hostfile F [--ds-config ds_configs/zero2.json] --config CFG [key=value ...]
#                            training across nodes with the deepspeed launcher (run on the first node)
#   ./launch.sh env          the interpreter the commands use and why (makes .venv/ if that is it; installs nothing)
# The interpreter: $PYTHON if set; else the active virtualenv or conda env; else .venv/ in this repository,
# made with the first Python >= 3.9 on PATH. An externally managed interpreter (PEP 668) is never installed
# into. Where the torch found is 2.1.x, every install applies constraints/torch2.1.txt.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT="$PWD"

CPU_TORCH="torch==2.13.0"     # the CPU wheel these machines carry locally; an unpinned torch pulls a CUDA build
COMPAT_TORCH="torch==2.1.2"   # test-compat's stack: the Ascend reference torch (PyPI's wheel, run on the CPU)
COMPAT_VENV=".venv-torch2.1"
TORCH21_CONSTRAINTS="constraints/torch2.1.txt"
STAMP=".launch-installed"     # one line per interpreter: what was installed into it last
CONSTRAINTS=""                # set by ensure_torch: the constraints file every install applies, if any

log() { printf '[launch] %s\n' "$*"; }
die() { printf '[launch] %s\n' "$*" >&2; exit 1; }

py_ok() {  # $1 runs and is Python >= 3.9
  "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' >/dev/null 2>&1
}

py_version() { "$1" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null || echo "?"; }

find_python() {  # the first Python >= 3.9 on PATH
  local c p
  for c in python3 python3.14 python3.13 python3.12 python3.11 python3.10 python3.9 python; do
    p="$(command -v "$c" 2>/dev/null)" || continue
    if py_ok "$p"; then printf '%s\n' "$p"; return 0; fi
  done
  return 1
}

find_python310() {  # a Python 3.10 for test-compat: $PYTHON_COMPAT, pyenv's, python3.10 on PATH, ~/.pyenv/versions/3.10*
  local p
  local -a found=()
  if [ -n "${PYTHON_COMPAT:-}" ]; then found+=("$PYTHON_COMPAT"); fi
  if command -v pyenv >/dev/null 2>&1; then found+=("$(pyenv which python3.10 2>/dev/null || true)"); fi
  found+=("$(command -v python3.10 2>/dev/null || true)")
  while IFS= read -r p; do found+=("$p"); done < <(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10*/bin/python 2>/dev/null | sort -V -r)
  for p in "${found[@]}"; do
    if [ -n "$p" ] && "$p" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 10) else 1)' >/dev/null 2>&1; then
      printf '%s\n' "$p"; return 0
    fi
  done
  return 1
}

OWN_VENV=""
choose_python() {  # sets PY (the interpreter of every command) and PY_FROM (why); creates nothing
  if [ -n "${PYTHON:-}" ]; then
    PY="$PYTHON"; PY_FROM="PYTHON"
  elif [ -n "${VIRTUAL_ENV:-}" ]; then
    PY="$VIRTUAL_ENV/bin/python"; PY_FROM="the active virtualenv $VIRTUAL_ENV"
  elif [ -n "${CONDA_PREFIX:-}" ]; then
    PY="$CONDA_PREFIX/bin/python"; PY_FROM="the active conda env $CONDA_PREFIX"
  else
    OWN_VENV="$ROOT/.venv"; PY="$OWN_VENV/bin/python"; PY_FROM="this repository's .venv"
  fi
}

make_venv() {  # make_venv DIR BASE_PYTHON
  log "creating $1 with $2 (Python $(py_version "$2"))"
  if ! "$2" -m venv "$1"; then
    rm -rf "$1"
    die "could not create $1 with $2 (Debian/Ubuntu: apt install python3-venv); or activate an environment, or set PYTHON=..."
  fi
}

use_venv() {  # commands and their subprocesses (accelerate, deepspeed, nested ./launch.sh) run in venv $1
  export VIRTUAL_ENV="$1" PATH="$1/bin:$PATH"
  unset PYTHONHOME CONDA_PREFIX
}

ensure_python() {  # $1 = create: make .venv/ when it is the chosen environment and missing
  local base
  if [ -n "$OWN_VENV" ] && [ ! -e "$PY" ] && [ "${1:-}" = create ]; then
    base="$(find_python)" || die "no Python >= 3.9 on PATH: install one, activate an environment, or set PYTHON=/path/to/python"
    make_venv "$OWN_VENV" "$base"
  fi
  if ! "$PY" -c '' >/dev/null 2>&1; then
    if [ -n "$OWN_VENV" ] && [ -e "$PY" ]; then die "$PY does not run (its base interpreter is gone?): remove .venv/ and rerun"; fi
    if [ -n "$OWN_VENV" ]; then die "no environment yet: run ./launch.sh test (or demo) first, activate yours, or set PYTHON=..."; fi
    die "$PY (from $PY_FROM) does not run"
  fi
  py_ok "$PY" || die "$PY (from $PY_FROM) is Python $(py_version "$PY"); vggt-train needs Python >= 3.9"
  if [ -n "$OWN_VENV" ]; then use_venv "$OWN_VENV"; fi
}

externally_managed() {  # PEP 668: a marker next to the stdlib of an interpreter that is not a virtual environment
  "$PY" - <<'EOF' >/dev/null 2>&1
import os, sys, sysconfig
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if sys.prefix == sys.base_prefix and os.path.isfile(marker) else 1)
EOF
}

pip_install() {  # pip install into $PY, applying $CONSTRAINTS
  if externally_managed; then
    die "$PY is externally managed (PEP 668): launch.sh does not install into it; unset PYTHON to use .venv/, or activate a virtual environment"
  fi
  "$PY" -m pip --version >/dev/null 2>&1 || die "$PY has no pip: run '$PY -m ensurepip', or use another interpreter"
  if [ -n "$CONSTRAINTS" ]; then set -- -c "$CONSTRAINTS" "$@"; fi
  "$PY" -m pip install "$@"
}

torch_version() { "$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null; }

constraints_for() {  # the constraints file for torch version $1 (empty: none)
  case "$1" in
    2.1|2.1.*|2.1+*|torch==2.1|torch==2.1.*) printf '%s\n' "$TORCH21_CONSTRAINTS" ;;
    *) printf '\n' ;;
  esac
}

ensure_torch() {  # $1: the torch to install where none imports
  local v
  if v="$(torch_version)"; then
    log "torch $v already installed: keeping it"
  else
    CONSTRAINTS="$(constraints_for "$1")"
    log "no torch found: installing $1${CONSTRAINTS:+ (-c $CONSTRAINTS)}"
    pip_install "$1"
    v="$(torch_version)" || die "torch does not import after 'pip install $1'"
  fi
  CONSTRAINTS="$(constraints_for "$v")"
  if [ -n "$CONSTRAINTS" ]; then log "torch $v: every install applies $CONSTRAINTS"; fi
}

ensure_package() {
  # re-install only when pyproject.toml (or the constraints applied) changed since this interpreter's last install
  local key want others=""
  key="$("$PY" -c 'import sys; print(sys.executable)' | cksum | cut -d' ' -f1)"
  # shellcheck disable=SC2086
  want="$key $(cat pyproject.toml $CONSTRAINTS | cksum | cut -d' ' -f1)"
  if [ -f "$STAMP" ] && grep -qxF "$want" "$STAMP" \
     && "$PY" -c "import vggt_train, accelerate, deepspeed, datasets, transformers, safetensors, pytest, pytest_timeout" >/dev/null 2>&1; then
    return
  fi
  log "installing vggt-train and its dependencies (pip install -e .[dev]${CONSTRAINTS:+ -c $CONSTRAINTS})"
  pip_install -e ".[dev]"
  if [ -f "$STAMP" ]; then others="$(grep -v "^$key " "$STAMP" || true)"; fi
  if [ -n "$others" ]; then printf '%s\n%s\n' "$others" "$want" > "$STAMP"; else printf '%s\n' "$want" > "$STAMP"; fi
}

setup() {  # $1: the torch to install where none imports
  log "Python $(py_version "$PY") at $PY (from $PY_FROM)"
  ensure_torch "$1"
  ensure_package
}

cmd="${1:-help}"
shift || true
case "$cmd" in
  test)
    choose_python; ensure_python create; setup "$CPU_TORCH"
    log "running the test suite"
    exec "$PY" -m pytest tests -q "$@"
    ;;
  test-compat)
    venv="$ROOT/$COMPAT_VENV"
    if [ ! -e "$venv/bin/python" ]; then
      base="$(find_python310)" || die "test-compat needs a Python 3.10 (pyenv install 3.10, or PYTHON_COMPAT=/path/to/python3.10)"
      make_venv "$venv" "$base"
    fi
    PY="$venv/bin/python"; PY_FROM="$COMPAT_VENV"; unset PYTHON
    "$PY" -c '' >/dev/null 2>&1 || die "$PY does not run: remove $COMPAT_VENV/ and rerun"
    use_venv "$venv"
    setup "$COMPAT_TORCH"
    case "$(torch_version)" in
      2.1.*) ;;
      *) die "$COMPAT_VENV holds torch $(torch_version), not 2.1: remove $COMPAT_VENV/ and rerun" ;;
    esac
    log "running the test suite on Python $(py_version "$PY") + torch $(torch_version)"
    exec "$PY" -m pytest tests -q "$@"
    ;;
  env)
    choose_python; ensure_python create
    printf 'python: %s
from: %s
version: %s
' "$PY" "$PY_FROM" "$(py_version "$PY")"
    if v="$(torch_version)"; then printf 'torch: %s
' "$v"; else printf 'torch: none (test/demo install %s)
' "$CPU_TORCH"; fi
    c="$(constraints_for "${v:-none}")"
    printf 'constraints: %s
' "${c:-none}"
    if externally_managed; then printf 'externally managed: yes (launch.sh installs nothing into it)
'; fi
    ;;
  demo)
    choose_python; ensure_python create; setup "$CPU_TORCH"
    out="runs/demo" mix="" args=()
    for arg in "$@"; do  # an output_dir= override moves every step of the demo, not only the training
      case "$arg" in
        --mix) mix=1; continue ;;  # also your-own-data style scenes (COLMAP), trained as a weighted mixture
        output_dir=*) out="${arg#output_dir=}" ;;
      esac
      args+=("$arg")
    done
    log "demo 1/5: a synthetic Co3D (2 categories x 5 sequences x 24 frames) in $out/data/raw"
    # only what an earlier demo wrote: output_dir= may name a directory that holds other things
    rm -rf "$out/data" "$out/checkpoints" "$out/tensorboard" "$out/metrics.jsonl" "$out/loss.png" "$out/model.safetensors"
    "$PY" -m vggt_train make-synthetic-co3d --out "$out/data/raw" --categories tv,apple --sequences 4 \
      --test-sequences 1 --frames 24 --size 84x112 --seed 0
    log "demo 2/5: convert it to Arrow shards in $out/data/shards"
    "$PY" -m vggt_train convert-co3d --co3d-dir "$out/data/raw/co3d" --annotation-dir "$out/data/raw/annotations" \
      --out "$out/data/shards" --workers 1
    data=("data.path=$out/data/shards")
    if [ -n "$mix" ]; then
      log "demo 2/5 (--mix): synthetic COLMAP workspaces in $out/data/colmap_raw, converted to $out/data/colmap"
      "$PY" -m vggt_train make-synthetic-colmap --out "$out/data/colmap_raw" --workspaces 4 --frames 12 --size 84x112 --seed 1
      "$PY" -m vggt_train convert-colmap --input "$out/data/colmap_raw" --name scenes --out "$out/data/colmap" --workers 1
      data=("data.path=null" "data.mix=[{path: $out/data/shards, weight: 0.7, name: co3d}, {path: $out/data/colmap, weight: 0.3, name: colmap}]")
    fi
    log "demo 3/5: train the tiny VGGT with accelerate + DeepSpeed ZeRO-2 on 2 CPU processes (configs/demo_cpu.yaml)"
    OMP_NUM_THREADS=1 "$PY" -m accelerate.commands.launch --config_file accelerate_configs/cpu_2p.yaml \
      -m vggt_train.train --config configs/demo_cpu.yaml "${data[@]}" "${args[@]}"
    log "demo 4/5: export the last checkpoint to an official-format checkpoint"
    "$PY" -m vggt_train export "$out" "$out/model.safetensors"
    log "demo 5/5: loss plot and summary"
    "$PY" -m vggt_train plot-metrics "$out/metrics.jsonl" --out "$out/loss.png"
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
    choose_python; ensure_python
    # DS_LAUNCHER_ARGS passes extra deepspeed-launcher options, e.g. "--master_addr node1 --master_port 29500"
    log "deepspeed launcher: hostfile $hostfile, DeepSpeed config $ds_config"
    # shellcheck disable=SC2086
    exec "$PY" -m deepspeed.launcher.runner --hostfile "$hostfile" ${DS_LAUNCHER_ARGS:-} \
      --no_local_rank --module vggt_train.train "${rest[@]}" "deepspeed=$ds_config"
    ;;
  help|-h|--help)
    sed -n '2,/^[^#]/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    ;;
  *)
    echo "unknown command '$cmd'; use: ./launch.sh demo | test | test-compat | multinode --hostfile F ... | env (./launch.sh help)" >&2
    exit 2
    ;;
esac
