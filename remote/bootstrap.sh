#!/usr/bin/env bash
# Environment setup on a TPU VM worker, as the seeds did it by hand, safe to run again.
#
#   bash remote/bootstrap.sh [--env conda|venv] [--name NAME] [--python 3.12] [--prefix DIR]
#                            [--repos DIR] [--sglang-jax URL] [--sglang-jax-ref REF]
#                            [--tunix URL] [--tunix-ref REF] [--skip-install] [--no-tunix]
#                            [--accept-conda-tos]
#
# conda: Miniconda in $PREFIX (default ~/miniconda3, as the seeds: /root/miniconda3), an env NAME
# with Python 3.12. venv: ~/.venvs/NAME made with pythonX.Y. Then sglang-jax and tunix are
# cloned into --repos, or fast-forwarded when already there, and installed editable
# (`pip install -e "python[all]"` for sglang-jax, as the seeds). Each step says what it does and
# how long it took; a step with nothing to do says so. Last, the JAX sanity line.
set -euo pipefail

ENV_KIND=conda
NAME=sglang-jax
PYVER=3.12
PREFIX="$HOME/miniconda3"
REPOS="$HOME"
SGLANG_JAX="https://github.com/sgl-project/sglang-jax.git"
TUNIX="https://github.com/google/tunix.git"
SGLANG_JAX_REF=""
TUNIX_REF=""
INSTALL=1
ACCEPT_TOS=0
WITH_TUNIX=1
MINICONDA_URL="https://repo.anaconda.com/miniconda/Miniconda3-latest-Linux-x86_64.sh"

while [ $# -gt 0 ]; do
    # --flag=value (the console writes a value that starts with a dash so) is --flag value.
    case "$1" in --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;; esac
    case "$1" in
        --env) ENV_KIND="$2"; shift 2 ;;
        --name) NAME="$2"; shift 2 ;;
        --python) PYVER="$2"; shift 2 ;;
        --prefix) PREFIX="$2"; shift 2 ;;
        --repos) REPOS="$2"; shift 2 ;;
        --sglang-jax) SGLANG_JAX="$2"; shift 2 ;;
        --sglang-jax-ref) SGLANG_JAX_REF="$2"; shift 2 ;;
        --tunix) TUNIX="$2"; shift 2 ;;
        --tunix-ref) TUNIX_REF="$2"; shift 2 ;;
        --skip-install) INSTALL=0; shift ;;
        --no-tunix) WITH_TUNIX=0; shift ;;
        --accept-conda-tos) ACCEPT_TOS=1; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "bootstrap: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
# A "~/" from a form or --set arrives quoted; it means the worker's home.
PREFIX="${PREFIX/#\~/$HOME}"
REPOS="${REPOS/#\~/$HOME}"
case "$ENV_KIND" in conda|venv) ;; *) echo "bootstrap: --env must be conda or venv" >&2; exit 2 ;; esac

STEP_START=0
step() {  # step "what": announce a step; its end prints the elapsed time
    STEP_START=$(date +%s.%N)
    echo "[bootstrap] $(date +%H:%M:%S) $1"
}
done_step() {
    local now
    now=$(date +%s.%N)
    echo "[bootstrap]   ${1:-done} ($(awk -v a="$STEP_START" -v b="$now" 'BEGIN{printf "%.1f", b-a}') s)"
}

# --- the Python environment -----------------------------------------------------------------
if [ "$ENV_KIND" = conda ]; then
    step "conda in $PREFIX"
    if [ -x "$PREFIX/bin/conda" ]; then
        done_step "already installed"
    else
        scratch="$(mktemp -d)"
        trap 'rm -rf "$scratch"' EXIT
        curl -fsSL "$MINICONDA_URL" -o "$scratch/miniconda.sh"
        # -u: a folder left by an interrupted install is completed, not refused.
        bash "$scratch/miniconda.sh" -b -u -p "$PREFIX"
        done_step "installed"
    fi
    # shellcheck disable=SC1091
    source "$PREFIX/etc/profile.d/conda.sh"
    step "conda env $NAME (python $PYVER)"
    if conda env list | awk '{print $1}' | grep -qx "$NAME"; then
        done_step "already there"
    else
        if [ "$ACCEPT_TOS" = 1 ]; then
            # Miniconda 25.5+ asks to accept its default channels' terms; the user said yes.
            export CONDA_PLUGINS_AUTO_ACCEPT_TOS=yes
        fi
        if ! conda create -y -q -n "$NAME" "python=$PYVER"; then
            echo "bootstrap: conda create failed. If it says the channels' Terms of Service" \
                "have not been accepted, read them and re-run with --accept-conda-tos" \
                "(or use --env venv)." >&2
            exit 4
        fi
        done_step "created"
    fi
    conda activate "$NAME"
else
    VENV="$HOME/.venvs/$NAME"
    step "venv $VENV (python $PYVER)"
    if [ -x "$VENV/bin/python" ]; then
        done_step "already there"
    else
        if ! command -v "python$PYVER" >/dev/null; then
            echo "bootstrap: python$PYVER is not installed; sglang-jax needs Python >= 3.12." >&2
            echo "bootstrap: use --env conda (it brings its own Python) or install python$PYVER." >&2
            exit 3
        fi
        "python$PYVER" -m venv "$VENV"
        done_step "created"
    fi
    # shellcheck disable=SC1091
    source "$VENV/bin/activate"
fi
ENV_PREFIX="$(python -c 'import sys; print(sys.prefix)')"
VIRTUAL_ENV_STAMP="$ENV_PREFIX/.tpuconsole-pip-upgraded"
echo "[bootstrap] python: $(command -v python) ($(python -c 'import sys; print(sys.version.split()[0])'))"

# --- the repositories -----------------------------------------------------------------------
sync_repo() {  # sync_repo URL REF DIR: clone, or bring what is there to URL and REF
    local url="$1" ref="$2" dir="$3"
    step "repository $dir"
    if [ -d "$dir/.git" ]; then
        local before after how="" current
        before=$(git -C "$dir" rev-parse HEAD)
        current=$(git -C "$dir" remote get-url origin 2>/dev/null || echo "")
        if [ "$current" != "$url" ]; then
            git -C "$dir" remote set-url origin "$url"  # a fork given now: follow it from here
            how="origin was $current; "
        fi
        git -C "$dir" fetch -q --tags origin
        if [ -n "$ref" ]; then
            # A branch follows origin's; a tag or commit is pinned as given.
            if git -C "$dir" show-ref -q --verify "refs/remotes/origin/$ref"; then
                git -C "$dir" checkout -q -B "$ref" --track "origin/$ref"
            else
                git -C "$dir" checkout -q --detach "$ref"
            fi
        elif ! git -C "$dir" symbolic-ref -q HEAD >/dev/null; then
            # Pinned by an earlier run and no ref now: back to origin's default branch.
            local default
            default=$(git -C "$dir" symbolic-ref -q --short refs/remotes/origin/HEAD || echo origin/main)
            git -C "$dir" checkout -q -B "${default#origin/}" --track "$default"
        fi
        if git -C "$dir" symbolic-ref -q HEAD >/dev/null; then
            git -C "$dir" merge -q --ff-only "@{upstream}"
        else
            how="${how}pinned (detached) at $ref; "
        fi
        after=$(git -C "$dir" rev-parse HEAD)
        if [ "$before" = "$after" ]; then
            done_step "${how}up to date at ${after:0:12}"
        elif git -C "$dir" merge-base --is-ancestor "$before" "$after"; then
            done_step "${how}fast-forwarded ${before:0:12} -> ${after:0:12}"
        else
            done_step "${how}moved ${before:0:12} -> ${after:0:12}"
        fi
    else
        git clone -q "$url" "$dir"
        if [ -n "$ref" ]; then git -C "$dir" checkout -q "$ref"; fi
        done_step "cloned at $(git -C "$dir" rev-parse --short=12 HEAD)"
    fi
}

mkdir -p "$REPOS"
sync_repo "$SGLANG_JAX" "$SGLANG_JAX_REF" "$REPOS/sglang-jax"
if [ "$WITH_TUNIX" = 1 ]; then sync_repo "$TUNIX" "$TUNIX_REF" "$REPOS/tunix"; fi

# --- installs -------------------------------------------------------------------------------
install_repo() {  # install_repo DIR TARGET: pip install -e, skipped when this commit is in already
    local dir="$1" target="$2" stamp head
    # The stamp lives in the environment: a recreated env starts without it, and installs.
    stamp="$ENV_PREFIX/.tpuconsole-installed-$(basename "$dir")"
    head="$(git -C "$dir" rev-parse HEAD) $dir"
    step "pip install -e \"$target\" in $dir"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$head" ]; then
        done_step "already installed at ${head:0:12}"
        return
    fi
    (cd "$dir" && python -m pip install -q -e "$target")
    echo "$head" > "$stamp"
    done_step "installed"
}

if [ "$INSTALL" = 1 ]; then
    step "pip up to date"
    if [ -f "$VIRTUAL_ENV_STAMP" ]; then
        done_step "already upgraded"
    else
        python -m pip install -q -U pip
        touch "$VIRTUAL_ENV_STAMP"
        done_step "upgraded"
    fi
    install_repo "$REPOS/sglang-jax" "python[all]"
    if [ "$WITH_TUNIX" = 1 ]; then install_repo "$REPOS/tunix" "."; fi
fi

# --- the seeds' sanity line -----------------------------------------------------------------
step "JAX sanity check"
python - <<'PY'
import jax

print(
    "JAX:", jax.__version__, jax.default_backend(),
    "process %d/%d" % (jax.process_index(), jax.process_count()),
    "devices local=%d global=%d" % (jax.local_device_count(), jax.device_count()),
    flush=True,
)
PY
done_step
echo "[bootstrap] ready: activate with" \
    "$([ "$ENV_KIND" = conda ] && echo "source $PREFIX/etc/profile.d/conda.sh; conda activate $NAME" || echo "source $HOME/.venvs/$NAME/bin/activate")"
