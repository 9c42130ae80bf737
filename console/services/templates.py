"""Job templates: typed parameters with defaults, validation and help, rendering one argv.

The presets are the seeds' own runs, flag for flag. A parameter left unset is not passed, so the
runner's default applies (its value is in the help); everything passed is quoted word by word.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from console.models import FleetError, Rendered


@dataclass(frozen=True)
class Param:
    name: str  # the key users set: `--set context_length=1024`
    kind: str  # str | int | float | bool | choice
    help: str
    flag: str = ""  # the runner's flag; "" for the template's own options
    runner_default: Any = None  # what the runner uses when the flag is not passed
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None

    def parse(self, raw: Any) -> Any:
        """A value from a form or `--set`, checked; FleetError says what is wrong."""
        if raw is None or raw == "":
            return None
        text = str(raw)
        if "\0" in text:
            raise FleetError(
                f"{self.name}: a NUL character cannot be passed to a program.", field=self.name
            )
        try:
            if self.kind == "int":
                value: Any = int(text)
            elif self.kind == "float":
                value = float(text)
            elif self.kind == "bool":
                if text.lower() not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                    raise ValueError
                value = text.lower() in {"1", "true", "yes", "on"}
            else:
                value = text
        except ValueError:
            raise FleetError(
                f"{self.name}: {text!r} is not a valid {self.kind}.", self.help, field=self.name
            ) from None
        if self.choices and value not in self.choices:
            raise FleetError(
                f"{self.name}: {value!r} is not one of {', '.join(self.choices)}.", field=self.name
            )
        if self.minimum is not None and value < self.minimum:
            raise FleetError(f"{self.name}: {value} is below {self.minimum}.", field=self.name)
        if self.maximum is not None and value > self.maximum:
            raise FleetError(f"{self.name}: {value} is above {self.maximum}.", field=self.name)
        return value


@dataclass(frozen=True)
class Template:
    name: str
    title: str
    program: tuple[str, ...]
    params: tuple[Param, ...]
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    single_host: bool = False  # refuses process_count != 1 (the multi-engine test)
    uses_sglang: bool = False
    ships_runners: bool = False  # its program is in remote/, which travels with the launch
    uses_tpu: bool = True  # stale TPU state on the workers matters to it
    # program: `program` and the flags; script: the `command` parameter as typed;
    # upload: no command, a folder to the workers (the sync template)
    runs: str = "program"
    common: bool = True  # takes COMMON_PARAMS (bootstrap makes the env they would activate)

    @property
    def all_params(self) -> tuple[Param, ...]:
        return (*self.params, *COMMON_PARAMS) if self.common else self.params

    def param(self, name: str) -> Param:
        for p in self.all_params:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.all_params)
        raise FleetError(f"{self.name} has no parameter {name!r}.", f"Known: {known}.")

    def values(
        self, preset: str = "", overrides: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        if preset and preset not in self.presets:
            raise FleetError(
                f"{self.name} has no preset {preset!r}.",
                f"Presets: {', '.join(self.presets) or 'none'}.",
            )
        raw = {**(self.presets.get(preset, {})), **(overrides or {})}
        return {name: self.param(name).parse(value) for name, value in raw.items()}

    def render(self, values: Mapping[str, Any]) -> Rendered:
        if self.runs == "upload":
            return _sync(values)
        if self.runs == "script":
            command = str(values.get("command") or "").strip()
            if not command:
                raise FleetError(
                    f"{self.name}: give the command to run.",
                    "Example: command=nvidia-smi",
                    field="command",
                )
            return replace(_with_environment((), values), script=command)
        argv = list(self.program)
        for p in self.params:
            value = values.get(p.name)
            if value is None or not p.flag:
                continue
            if p.kind == "bool":
                if value:
                    argv.append(p.flag)
            else:
                argv += _flag_and_value(p.flag, str(value))
        rendered = _with_environment(tuple(argv), values)
        if not self.ships_runners:
            return rendered
        return replace(rendered, prelude=(RUNNERS_PRELUDE, *rendered.prelude), ship_runners=True)


def _flag_and_value(flag: str, value: str) -> list[str]:
    """`--flag value`, or `--flag=value` when the value starts with a dash.

    argparse takes a separate `-5+3=?` for an option of its own and refuses the command line;
    joined with `=` it is the flag's value whatever it holds (remote/bootstrap.sh reads both).
    """
    return [f"{flag}={value}"] if value.startswith("-") else [flag, value]


# Where remote/ lands on a worker, and how its runners are found there (`python -m remote.x`).
RUNNERS_DIR = "~/.tpuconsole/runners/remote"
RUNNERS_PRELUDE = 'export PYTHONPATH="$HOME/.tpuconsole/runners${PYTHONPATH:+:$PYTHONPATH}"'


def _sync(values: Mapping[str, Any]) -> Rendered:
    local = str(values.get("local_dir") or "").strip()
    if not local:
        raise FleetError(
            "sync: give the local folder to upload.",
            "Example: local_dir=~/plugins",
            field="local_dir",
        )
    remote = str(values.get("remote_dir") or "").strip() or default_remote_dir(local)
    return Rendered((), {}, upload=(local, remote))


def default_remote_dir(local: str) -> str:
    """The same place under the worker's home: ~/x for ~/x here, else ~/<folder name>.

    Never an absolute path by default: on a VM that would need root, and in the sandbox it
    would be this machine's own folder.
    """
    path = Path(local).expanduser().resolve()
    try:
        return "~/" + path.relative_to(Path.home().resolve()).as_posix()
    except ValueError:
        return "~/" + path.name


COMMON_PARAMS: tuple[Param, ...] = (
    Param("compile_cache", "str", "JAX_COMPILATION_CACHE_DIR, created first (empty: none)"),
    Param("conda_env", "str", "conda environment to activate (as the seeds: sglang-jax, tunix)"),
    Param(
        "conda_prefix",
        "str",
        "where conda is (default ~/miniconda3, where bootstrap puts it; the seeds: /root/…)",
    ),
    Param("venv", "str", "or a virtualenv folder to activate instead of conda"),
    Param("workdir", "str", "folder to run in (empty: the home folder)"),
)


def _conda_base(prefix: str | None) -> str:
    """Shell text for conda's folder: the worker's ~/miniconda3 unless told otherwise."""
    if not prefix or prefix in {"~", "~/"}:
        return '"$HOME/miniconda3"' if not prefix else '"$HOME"'
    if prefix.startswith("~/"):
        return '"$HOME"/' + shlex.quote(prefix[2:].rstrip("/"))
    return shlex.quote(prefix.rstrip("/"))


def _with_environment(argv: tuple[str, ...], values: Mapping[str, Any]) -> Rendered:
    prelude: list[str] = []
    env: dict[str, str] = {}
    if values.get("conda_env"):
        prelude += [
            f"source {_conda_base(values.get('conda_prefix'))}/etc/profile.d/conda.sh",
            f"conda activate {shlex.quote(values['conda_env'])}",
        ]
    elif values.get("venv"):
        prelude.append(f"source {shlex.quote(values['venv'].rstrip('/') + '/bin/activate')}")
    if values.get("workdir"):
        prelude.append(f"cd {shlex.quote(values['workdir'])}")
    if values.get("compile_cache"):
        env["JAX_COMPILATION_CACHE_DIR"] = values["compile_cache"]
        prelude.append('mkdir -p "$JAX_COMPILATION_CACHE_DIR"')
    return Rendered(argv, env, tuple(prelude))


MULTI_ENGINE = Template(
    "multi-engine",
    "sgl-jax multi-engine thread test (one engine per device, one process)",
    ("python", "-u", "-m", "remote.multi_engine"),
    (
        Param("model", "str", "Hugging Face model id", "--model", "Qwen/Qwen3-4B-Instruct-2507"),
        Param("num_engines", "int", "engines, one per device", "--num-engines", 4, minimum=1),
        Param(
            "load_format",
            "choice",
            "weights: dummy loads none",
            "--load-format",
            "dummy",
            choices=("auto", "safetensors", "pt", "dummy"),
        ),
        Param("context_length", "int", "context length", "--context-length", 2048, minimum=1),
        Param("max_total_tokens", "int", "KV cache tokens", "--max-total-tokens", 2048, minimum=1),
        Param(
            "max_prefill_tokens", "int", "prefill tokens", "--max-prefill-tokens", 2048, minimum=1
        ),
        Param("page_size", "int", "KV page size", "--page-size", 64, minimum=1),
        Param(
            "max_running_requests",
            "int",
            "requests per engine",
            "--max-running-requests",
            4,
            minimum=1,
        ),
        Param("max_new_tokens", "int", "tokens to generate", "--max-new-tokens", 16, minimum=1),
        Param("prompt", "str", "the prompt", "--prompt", "Please answer: 1+1=?"),
        Param(
            "concurrency", "int", "threads for the timed generates", "--concurrency", 4, minimum=1
        ),
        Param(
            "warmup_sequential",
            "bool",
            "one generate per engine before the timed part",
            "--warmup-sequential",
            False,
        ),
        Param(
            "engine_per_thread",
            "bool",
            "build each engine in its own thread",
            "--engine-per-thread",
            False,
        ),
        Param(
            "mem_fraction_static",
            "float",
            "memory fraction for the KV cache",
            "--mem-fraction-static",
            0.7,
            minimum=0.05,
            maximum=0.99,
        ),
        Param(
            "engine",
            "choice",
            "sgl-jax, or reference: a small JAX decoder, to compare (a sandbox without sgl-jax "
            "uses it and says so)",
            "--engine",
            "sgl-jax",
            choices=("sgl-jax", "reference"),
        ),
    ),
    presets={
        "qwen3-4b": {
            "model": "Qwen/Qwen3-4B-Instruct-2507",
            "num_engines": 4,
            "load_format": "dummy",
            "context_length": 1024,
            "max_total_tokens": 1024,
            "max_prefill_tokens": 1024,
            "page_size": 16,
            "max_running_requests": 1,
            "prompt": "1+1=?",
        },
        "tiny-llama": {
            "model": "hf-internal-testing/tiny-random-LlamaForCausalLM",
            "num_engines": 4,
            "load_format": "dummy",
            "context_length": 128,
            "max_total_tokens": 128,
            "max_prefill_tokens": 128,
            "page_size": 8,
            "max_running_requests": 1,
            "max_new_tokens": 1,
            "prompt": "1+1=?",
            "concurrency": 1,
        },
    },
    single_host=True,
    uses_sglang=True,
    ships_runners=True,
)

GRPO = Template(
    "grpo",
    "Tunix GRPO on GSM8K (Tunix's demo recipe; sglang-jax or vanilla rollout)",
    ("python", "-u", "-m", "remote.grpo"),
    (
        Param("steps", "int", "training steps", "--steps", 10, minimum=1),
        Param(
            "rollout_devices",
            "int",
            "devices for the rollout engine (the first N)",
            "--rollout-devices",
            2,
            minimum=1,
        ),
        Param(
            "rollout_engine",
            "choice",
            "rollout engine: in-process sglang-jax (single-host only) or Tunix's own",
            "--rollout-engine",
            "sglang_jax",
            choices=("sglang_jax", "vanilla"),
        ),
        Param(
            "local_model_dir",
            "str",
            "model directory on the VM (config.json, *.safetensors); empty: the model id, "
            "downloaded once to /tmp/models/<org>__<name>",
            "--local-model-dir",
        ),
        Param(
            "sglang_mem_fraction_static",
            "float",
            "sglang-jax memory fraction (of memory free at start-up)",
            "--sglang-mem-fraction-static",
            0.2,
            minimum=0.05,
            maximum=0.99,
        ),
        Param(
            "model",
            "str",
            "Hugging Face model id, or 'toy' (Tunix's test transformer, nothing downloaded)",
            "--model",
            "Qwen/Qwen3-4B-Instruct-2507",
        ),
        Param(
            "data_source",
            "choice",
            "GSM8K from (local: a parquet copy, no network)",
            "--data-source",
            "huggingface",
            choices=("huggingface", "tfds", "local"),
        ),
        Param(
            "dataset",
            "str",
            "openai/gsm8k:main, gsm8k (tfds) or a parquet path (local)",
            "--dataset",
        ),
        Param("batch_size", "int", "prompts per training step", "--batch-size", 4, minimum=1),
        Param(
            "num_generations",
            "int",
            "completions per prompt (the GRPO group)",
            "--num-generations",
            4,
            minimum=2,
        ),
        Param("max_new_tokens", "int", "tokens per completion", "--max-new-tokens", 768, minimum=1),
        Param("learning_rate", "float", "peak learning rate", "--learning-rate", 3e-6, minimum=0),
        Param("beta", "float", "KL coefficient β", "--beta", 0.08, minimum=0),
        Param(
            "sglang_context_length",
            "int",
            "sglang-jax context length (default: prompt + new tokens + 256)",
            "--sglang-context-length",
            minimum=1,
        ),
        Param(
            "sglang_max_total_tokens",
            "int",
            "sglang-jax KV pool cap (default: context × batch × generations)",
            "--sglang-max-total-tokens",
            minimum=1,
        ),
        Param(
            "metrics_dir",
            "str",
            "TensorBoard logs on the VM",
            "--metrics-dir",
            "/tmp/tensorboard/grpo",
        ),
        Param(
            "checkpoint_dir",
            "str",
            "orbax checkpoints (resumed when present; multi-host: gs://… every host sees)",
            "--checkpoint-dir",
        ),
        Param(
            "save_interval_steps",
            "int",
            "a checkpoint every N steps (with checkpoint_dir)",
            "--save-interval-steps",
            500,
            minimum=1,
        ),
    ),
    presets={
        "toy": {"model": "toy", "steps": 4, "rollout_engine": "vanilla"},
        "single-host-sglang": {
            "steps": 10,
            "rollout_devices": 2,
            "sglang_mem_fraction_static": 0.8,
        },
        "multi-host-vanilla": {
            "steps": 10,
            "rollout_devices": 8,
            "rollout_engine": "vanilla",
            "local_model_dir": "/tmp/models/Qwen__Qwen3-4B-Instruct-2507",
        },
    },
    uses_sglang=True,
    ships_runners=True,
)

BOOTSTRAP = Template(
    "bootstrap",
    "environment setup as the seeds: conda or venv, sglang-jax and tunix, the JAX line",
    ("bash", ".tpuconsole/runners/remote/bootstrap.sh"),
    (
        Param(
            "env", "choice", "conda (as the seeds) or venv", "--env", "conda",
            choices=("conda", "venv"),
        ),
        Param("name", "str", "environment name", "--name", "sglang-jax"),
        Param("python", "str", "Python version (sglang-jax needs 3.12)", "--python", "3.12"),
        Param("prefix", "str", "where Miniconda goes", "--prefix", "~/miniconda3"),
        Param("repos", "str", "where the repositories are cloned", "--repos", "~"),
        Param(
            "sglang_jax", "str", "sglang-jax git URL", "--sglang-jax",
            "https://github.com/sgl-project/sglang-jax.git",
        ),
        Param("sglang_jax_ref", "str", "branch, tag or commit", "--sglang-jax-ref"),
        Param("tunix", "str", "tunix git URL", "--tunix", "https://github.com/google/tunix.git"),
        Param("tunix_ref", "str", "branch, tag or commit", "--tunix-ref"),
        Param("no_tunix", "bool", "sglang-jax only", "--no-tunix", False),
        Param("skip_install", "bool", "clone or update only, no pip", "--skip-install", False),
        Param(
            "accept_conda_tos",
            "bool",
            "accept Anaconda's channel terms (Miniconda 25.5+ asks)",
            "--accept-conda-tos",
            False,
        ),
    ),
    presets={
        "seeds-sglang-jax": {"env": "conda", "name": "sglang-jax", "no_tunix": True},
        "seeds-tunix": {"env": "conda", "name": "tunix"},
    },
    ships_runners=True,
    common=False,
)  # fmt: skip

SYNC = Template(
    "sync",
    "upload a local folder (your plugins) to the same path on every worker",
    (),
    (
        Param("local_dir", "str", "the folder here"),
        Param("remote_dir", "str", "where on the workers (default: the same path under ~)"),
    ),
    uses_tpu=False,
    common=False,
    runs="upload",
)

CUSTOM = Template(
    "custom",
    "any command, detached, with the common options",
    (),
    (Param("command", "str", "shell text, run with bash on each worker"),),
    runs="script",
)

TEMPLATES = {t.name: t for t in (MULTI_ENGINE, GRPO, BOOTSTRAP, SYNC, CUSTOM)}


def template(name: str) -> Template:
    if name not in TEMPLATES:
        raise FleetError(f"No template {name!r}.", f"Templates: {', '.join(TEMPLATES)}.")
    return TEMPLATES[name]


def parse_sets(items: list[str]) -> dict[str, str]:
    """`--set key=value` pairs; dashes in keys are accepted as underscores."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise FleetError(f"--set {item!r} is not key=value.", "Example: --set steps=20")
        out[key.strip().replace("-", "_")] = value
    return out
