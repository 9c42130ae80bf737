#!/usr/bin/env bash
# The real-engine environment: ENV_DIR (.venv-engine) on the machine's Python 3.12 with
# sglang-jax 0.1.0rc0 and what its Engine imports (engine-*.txt), the tiny Llama the tests and
# the sandbox run (scripts/tiny_llama.py), and PyPI's sglang-jax 0.0.2 beside it (not
# installed: the runner's refusal of too-old versions is tested against it).
# Usage: scripts/make-engine-env.sh PYTHON312 ENV_DIR. Called by make; ENV_DIR/.installed marks
# a complete environment. Where no Python 3.12 or 3.13 exists it says so and exits 0: the
# tests that need the real engine skip and say why, and the sandbox runs the reference engine.
set -euo pipefail
want="$1"
env="$2"
here="$(cd "$(dirname "$0")" && pwd)"

usable() {  # a Python sglang-jax accepts (>=3.12, <3.14) that really runs
    "$1" -c 'import sys; sys.exit(0 if (3, 12) <= sys.version_info[:2] < (3, 14) else 1)' \
        >/dev/null 2>&1
}

find_python() {
    if command -v "$want" >/dev/null 2>&1 && usable "$want"; then
        command -v "$want"
        return
    fi
    # pyenv's shim names python3.12 but refuses to run it unless 3.12 is the selected version.
    if command -v pyenv >/dev/null 2>&1; then
        local root version
        root="$(pyenv root)"
        for minor in 12 13; do  # 3.12 first, as the seeds' environments had
            for version in $(pyenv versions --bare 2>/dev/null | grep -E "^3\.$minor\.[0-9]+$" |
                sort -V -r); do
                candidate="$root/versions/$version/bin/python3.$minor"
                if [ -x "$candidate" ] && usable "$candidate"; then
                    echo "$candidate"
                    return
                fi
            done
        done
    fi
    for candidate in /usr/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.13; do
        if [ -x "$candidate" ] && usable "$candidate"; then
            echo "$candidate"
            return
        fi
    done
}

python="$(find_python || true)"
if [ -z "$python" ]; then
    cat >&2 <<EOF
make: no Python 3.12 here (tried PYTHON312=$want, pyenv's versions, /usr/bin): the real
      sgl-jax engine is not installed. Its tests skip and say why; the sandbox runs the
      reference engine instead and says so. To get it: install Python 3.12 (or point
      PYTHON312=/path/to/python3.12 at one) and run make again.
EOF
    exit 0
fi

started=$(date +%s)
echo "make: the real-engine environment $env from $python ($("$python" -V 2>&1))" >&2
rm -f "$env/.installed"
test -x "$env/bin/python" || "$python" -m venv "$env"
pip=("$env/bin/python" -m pip --quiet --disable-pip-version-check)
"${pip[@]}" install --upgrade pip
"${pip[@]}" install -r "$here/engine-requirements.txt" -c "$here/engine-constraints.txt"
"${pip[@]}" install --no-deps -r "$here/engine-no-deps.txt"
rm -rf "$env/sglang-jax-0.0.2"
"${pip[@]}" install --no-deps --target "$env/sglang-jax-0.0.2" sglang-jax==0.0.2
rm -rf "$env/hf-hub"
HF_HUB_OFFLINE=1 "$env/bin/python" "$here/tiny_llama.py" "$env/hf-hub" >/dev/null
touch "$env/.installed"
echo "make: $env ready in $(( $(date +%s) - started )) s, $(du -sh "$env" | cut -f1)" >&2
