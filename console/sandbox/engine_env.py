"""The real sgl-jax engine's environment, as the sandbox's workers and the tests find it.

`make` builds `.venv-engine` in the checkout from the machine's Python 3.12 (see
scripts/make-engine-env.sh): sglang-jax 0.1.0rc0 on JAX's CPU backend, and the tiny Llama in a
Hugging Face hub cache. TPUCONSOLE_ENGINE_ENV points elsewhere. Where it is missing, the sandbox
runs the reference engine and its runs say why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]
# The seeds' tiny model; the hub cache holds our local stand-in for it (scripts/tiny_llama.py).
TINY_LLAMA = "hf-internal-testing/tiny-random-LlamaForCausalLM"


@dataclass(frozen=True)
class EngineEnv:
    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def hub_cache(self) -> Path:
        return self.root / "hf-hub"

    @property
    def tiny_llama_repo(self) -> Path:
        """The model's folder in the hub cache, named as Hugging Face names a downloaded one."""
        return self.hub_cache / ("models--" + TINY_LLAMA.replace("/", "--"))

    @property
    def old_sglang_jax(self) -> Path:
        """PyPI's sglang-jax 0.0.2, unpacked beside the env (too old: the refusal is tested)."""
        return self.root / "sglang-jax-0.0.2"

    def ready(self) -> bool:
        """Remembered once true: every command a sandbox worker runs asks (256 at once on a pod
        slice's fan-out), and an environment that is there stays there for the session."""
        if self.root in _READY:
            return True
        if (self.root / ".installed").exists() and self.python.exists():
            _READY.add(self.root)
            return True
        return False

    def missing(self) -> str:
        """Why it cannot be used, in words for a log line; "" when it can."""
        if self.ready():
            return ""
        return f"no sgl-jax environment at {self.root}; `make` builds it where Python 3.12 exists"


_READY: set[Path] = set()


def engine_env() -> EngineEnv:
    return EngineEnv(Path(os.environ.get("TPUCONSOLE_ENGINE_ENV") or CHECKOUT / ".venv-engine"))
