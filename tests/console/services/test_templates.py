"""Templates render the seeds' runs flag for flag, and any value reaches the program intact."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from console.models import FleetError, Rendered
from console.services.templates import GRPO, MULTI_ENGINE, parse_sets, template
from remote import multi_engine

# The commands the seeds ran (shared/seeds/*), after their `python -u -m <runner>` part.
SEED_MULTI = {
    ("qwen3-4b", ()): "--model Qwen/Qwen3-4B-Instruct-2507 --num-engines 4 --load-format dummy "
    "--context-length 1024 --max-total-tokens 1024 --max-prefill-tokens 1024 --page-size 16 "
    '--max-running-requests 1 --prompt "1+1=?"',
    ("qwen3-4b", (("concurrency", "1"),)): "--model Qwen/Qwen3-4B-Instruct-2507 --num-engines 4 "
    "--load-format dummy --context-length 1024 --max-total-tokens 1024 --max-prefill-tokens 1024 "
    '--page-size 16 --max-running-requests 1 --prompt "1+1=?" --concurrency 1',
    ("tiny-llama", ()): "--model hf-internal-testing/tiny-random-LlamaForCausalLM --num-engines 4 "
    "--load-format dummy --context-length 128 --max-total-tokens 128 --max-prefill-tokens 128 "
    '--page-size 8 --max-running-requests 1 --max-new-tokens 1 --prompt "1+1=?" --concurrency 1',
    (
        "tiny-llama",
        (("concurrency", "4"), ("engine_per_thread", "true")),
    ): "--model hf-internal-testing/tiny-random-LlamaForCausalLM --num-engines 4 "
    "--load-format dummy --context-length 128 --max-total-tokens 128 "
    "--max-prefill-tokens 128 --page-size 8 "
    '--max-running-requests 1 --max-new-tokens 1 --prompt "1+1=?" --concurrency 4 '
    "--engine-per-thread",
    (
        "tiny-llama",
        (("concurrency", "4"), ("warmup_sequential", "true")),
    ): "--model hf-internal-testing/tiny-random-LlamaForCausalLM --num-engines 4 "
    "--load-format dummy --context-length 128 --max-total-tokens 128 "
    "--max-prefill-tokens 128 --page-size 8 "
    '--max-running-requests 1 --max-new-tokens 1 --prompt "1+1=?" --concurrency 4 '
    "--warmup-sequential",
}
SEED_GRPO = {
    "single-host-sglang": "--steps 10 --rollout-devices 2 --sglang-mem-fraction-static 0.8",
    "multi-host-vanilla": "--steps 10 --rollout-devices 8 --rollout-engine vanilla "
    "--local-model-dir /tmp/models/Qwen__Qwen3-4B-Instruct-2507",
}


@pytest.mark.parametrize(("preset", "overrides"), list(SEED_MULTI))
def test_multi_engine_presets_are_the_seeds_runs_flag_for_flag(preset, overrides) -> None:
    rendered = MULTI_ENGINE.render(MULTI_ENGINE.values(preset, dict(overrides)))
    assert rendered.argv[:4] == ("python", "-u", "-m", "remote.multi_engine")
    assert list(rendered.argv[4:]) == shlex.split(SEED_MULTI[(preset, overrides)])


@pytest.mark.parametrize("preset", list(SEED_GRPO))
def test_grpo_presets_are_the_seeds_runs_flag_for_flag_and_the_runner_takes_them(
    preset: str,
) -> None:
    rendered = GRPO.render(GRPO.values(preset))
    assert list(rendered.argv[4:]) == shlex.split(SEED_GRPO[preset])
    # The rendered command as a worker runs it, with --dry-run: the runner's own parse.
    probe = Rendered((sys.executable, *rendered.argv[1:], "--dry-run"), {}, ())
    out = subprocess.run(["bash", "-c", probe.shell()], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout.removeprefix("PLAN: "))
    assert plan["model_dir"] == "/tmp/models/Qwen__Qwen3-4B-Instruct-2507"
    assert plan["steps"] == 10


def test_every_grpo_parameter_is_a_flag_the_runner_accepts() -> None:
    from remote import grpo

    values = {p.name: p.runner_default for p in GRPO.params if p.runner_default is not None}
    values |= {"local_model_dir": "/m", "dataset": "/d.parquet", "checkpoint_dir": "/c"}
    values |= {"sglang_context_length": 1024, "sglang_max_total_tokens": 4096}
    argv = GRPO.render(GRPO.values("", {k: str(v) for k, v in values.items()})).argv
    args = grpo.parse_args(list(argv[4:]))
    for p in GRPO.params:
        assert getattr(args, p.name) == p.parse(str(values[p.name])), p.name


def test_environment_as_the_seeds_set_it() -> None:
    values = MULTI_ENGINE.values(
        "qwen3-4b",
        {
            "conda_env": "sglang-jax",
            "conda_prefix": "/root/miniconda3",
            "compile_cache": "/tmp/jit_cache_multi",
        },
    )
    rendered = MULTI_ENGINE.render(values)
    assert rendered.env == {"JAX_COMPILATION_CACHE_DIR": "/tmp/jit_cache_multi"}
    assert rendered.ship_runners  # remote/ travels with the launch and is found there
    assert rendered.prelude == (
        'export PYTHONPATH="$HOME/.tpuconsole/runners${PYTHONPATH:+:$PYTHONPATH}"',
        "source /root/miniconda3/etc/profile.d/conda.sh",
        "conda activate sglang-jax",
        'mkdir -p "$JAX_COMPILATION_CACHE_DIR"',
    )


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("num_engines", "four", "not a valid int"),
        ("num_engines", "0", "below 1"),
        ("load_format", "gguf", "not one of"),
        ("mem_fraction_static", "1.5", "above"),
        ("warmup_sequential", "maybe", "not a valid bool"),
        ("nope", "1", "no parameter"),
    ],
)
def test_bad_values_are_refused_with_the_reason(name: str, value: str, message: str) -> None:
    with pytest.raises(FleetError, match=message):
        MULTI_ENGINE.values("", {name: value})


def test_set_pairs_and_unknown_templates() -> None:
    assert parse_sets(["max-new-tokens=8", "prompt=a=b"]) == {
        "max_new_tokens": "8",
        "prompt": "a=b",
    }
    with pytest.raises(FleetError, match="not key=value"):
        parse_sets(["oops"])
    with pytest.raises(FleetError, match="Templates: multi-engine, grpo"):
        template("bert")


ECHO = (sys.executable, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))")
PRINTABLE = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40
)


# Exactly "--" is the one value argparse (3.11/3.12) drops from `--flag=--`: no command line
# can give it to the runner, so it is left out here.
RUNNER_VALUE = PRINTABLE.filter(lambda t: t not in ("", "--"))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompt=RUNNER_VALUE, model=RUNNER_VALUE, workdir=PRINTABLE)
def test_any_value_reaches_the_program_exactly(prompt: str, model: str, workdir: str) -> None:
    values = MULTI_ENGINE.values("", {"prompt": prompt, "model": model})
    rendered = MULTI_ENGINE.render(values)
    probe = Rendered((*ECHO, *rendered.argv[4:]), rendered.env, rendered.prelude)
    out = subprocess.run(["bash", "-c", probe.shell()], capture_output=True, check=True)
    received = multi_engine.parse_args(json.loads(out.stdout))  # as the runner reads its argv
    assert (received.prompt, received.model) == (prompt, model)
    if workdir:  # a folder name with quotes, spaces or $ is still one word to cd
        quoted = MULTI_ENGINE.render(MULTI_ENGINE.values("", {"workdir": workdir}))
        assert shlex.split(quoted.prelude[-1]) == ["cd", workdir]


@pytest.mark.parametrize("prompt", ["-5+3=?", "-", "--model x", "-h", "-1"])
def test_a_value_that_starts_with_a_dash_reaches_the_runner_as_the_value(prompt: str) -> None:
    rendered = MULTI_ENGINE.render(MULTI_ENGINE.values("tiny-llama", {"prompt": prompt}))
    assert f"--prompt={prompt}" in rendered.argv
    assert shlex.quote(f"--prompt={prompt}") in rendered.shell()  # what preflight shows
    # The shell text the worker runs, with a program that hands its argv to the runner's parser.
    probe = Rendered((*ECHO, *rendered.argv[4:]), rendered.env, rendered.prelude)
    out = subprocess.run(["bash", "-c", probe.shell()], capture_output=True, check=True)
    args = multi_engine.parse_args(json.loads(out.stdout))
    assert args.prompt == prompt and args.model.startswith("hf-internal-testing/")


def test_bootstrap_custom_and_sync_render_what_they_will_do() -> None:
    from console.services.templates import BOOTSTRAP, CUSTOM, SYNC

    boot = BOOTSTRAP.render(BOOTSTRAP.values("seeds-tunix", {"python": "3.12"}))
    assert boot.argv == (
        "bash", ".tpuconsole/runners/remote/bootstrap.sh",
        "--env", "conda", "--name", "tunix", "--python", "3.12",
    )  # fmt: skip
    assert boot.ship_runners
    with pytest.raises(FleetError, match="no parameter 'conda_env'"):
        BOOTSTRAP.values("", {"conda_env": "x"})  # it makes the env; it does not activate one

    custom = CUSTOM.render(CUSTOM.values("", {"command": "cd /tmp && ls | wc -l", "venv": "/e"}))
    assert custom.shell() == "source /e/bin/activate\ncd /tmp && ls | wc -l"
    assert not custom.ship_runners
    with pytest.raises(FleetError, match="give the command"):
        CUSTOM.render({})

    sync = SYNC.render(SYNC.values("", {"local_dir": "/opt/x/plugins"}))
    assert sync.upload == ("/opt/x/plugins", "~/plugins")
    assert "upload /opt/x/plugins -> ~/plugins" in sync.shell()


def test_conda_is_found_where_bootstrap_put_it_unless_told_otherwise() -> None:
    def first(values: dict) -> str:
        return GRPO.render(GRPO.values("", values)).prelude[1]

    assert first({"conda_env": "tunix"}) == 'source "$HOME/miniconda3"/etc/profile.d/conda.sh'
    assert first({"conda_env": "t", "conda_prefix": "~/conda x"}) == (
        "source \"$HOME\"/'conda x'/etc/profile.d/conda.sh"
    )
