"""Tunix GRPO on GSM8K as the seeds ran it, with Tunix's demo recipe and the multi-host lesson.

`python -u -m remote.grpo [flags]`, on every worker of the slice. Tunix prints `Train step N
training loss: X` itself (absl logging at INFO, which this script turns on); this script prints
the JAX line of its process, `Train step N reward_mean=R kl=K` (the mean reward of the rollout
that step trained on, and Tunix's KL for it), and `DONE: steps=N elapsed_sec=…`.

The model is a local directory of safetensors, loaded with Tunix's own Qwen3 loader and no
Hugging Face call; a model id is downloaded once into that directory first. The in-process
sglang-jax rollout is refused in a job of more than one process: the seeds' run died with "The
program continuator has halted unexpectedly". `--model toy` runs Tunix's test transformer on
sums of digits, so the whole loop runs on a CPU with nothing downloaded.
"""

import argparse
import dataclasses
import json
import math
import os
import sys
import time

from remote import grpo_model, grpo_tasks

TOY = "toy"
DEFAULT_MODEL = "Qwen/Qwen3-4B-Instruct-2507"

# Where a knob's default differs for the toy (a random 16-wide model on a CPU, nothing
# downloaded). Two passes over each batch (GRPO's μ = 2), so the loss shows the policy term:
# on the second pass -mean(ratio·advantage) is the move toward the better-scored completions.
DEFAULTS = {
    "rollout_engine": ("sglang_jax", "vanilla"),
    "max_new_tokens": (768, 4),
    "learning_rate": (3e-6, 1e-3),
    "num_iterations": (1, 2),
    "batch_size": (4, 2),
    "num_generations": (4, 2),
    "mini_batch_size": (4, None),
    "micro_batch_size": (2, None),
    "max_prompt_length": (256, 16),
    "metrics_dir": ("/tmp/tensorboard/grpo", ""),
    "top_k": (50, 0),  # 0: no top-k (the toy's vocabulary is smaller than 50)
    "warmup_ratio": (0.1, 0.0),
}


def _csv_ints(text):
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            "%r is not a comma-separated list of integers" % text
        ) from None


def _setting(text):
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError("%r is not KEY=VALUE" % text)
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value  # a bare word is a string
    return key.strip(), parsed


def parser():
    p = argparse.ArgumentParser(prog="remote.grpo", description=__doc__)
    add = p.add_argument
    model = p.add_argument_group("model")
    model.add_argument("--model", default=DEFAULT_MODEL, help="Hugging Face id, or 'toy'")
    model.add_argument(
        "--local-model-dir",
        default="",
        help="weights on the VM (config.json, *.safetensors, tokenizer); when it holds none, "
        "--model is downloaded into it once",
    )
    model.add_argument(
        "--models-dir",
        default="/tmp/models",
        help="without --local-model-dir, a model id lives in MODELS_DIR/<org>__<name>",
    )
    data = p.add_argument_group("data (Tunix's GSM8K path)")
    data.add_argument(
        "--data-source", choices=sorted(grpo_tasks.DATA_DEFAULTS), default="huggingface"
    )
    data.add_argument(
        "--dataset",
        default=None,
        help="huggingface: openai/gsm8k:main; tfds: gsm8k; local: a parquet file "
        "(question, answer) read with no network",
    )
    run = p.add_argument_group("run")
    run.add_argument("--steps", type=int, default=10, help="training steps (optimizer updates)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--metrics-dir", default=None, help="TensorBoard logs ('' for none)")
    run.add_argument("--metrics-flush-every", type=int, default=20)
    run.add_argument(
        "--checkpoint-dir",
        default="",
        help="orbax checkpoints ('' for none); one already there is resumed from. A multi-host "
        "run needs a directory every host sees (gs://…)",
    )
    run.add_argument("--save-interval-steps", type=int, default=500)
    run.add_argument("--max-to-keep", type=int, default=1)
    run.add_argument("--dry-run", action="store_true", help="print the resolved plan and stop")
    gen = p.add_argument_group("generation")
    gen.add_argument("--max-prompt-length", type=int, default=None, help="default 256")
    gen.add_argument("--max-new-tokens", type=int, default=None, help="default 768")
    gen.add_argument("--temperature", type=float, default=0.9)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=None, help="default 50; 0: none")
    gen.add_argument(
        "--kv-cache-size", type=int, default=None, help="default prompt + new tokens + 256"
    )
    algo = p.add_argument_group("GRPO")
    algo.add_argument("--num-generations", type=int, default=None, help="G; default 4")
    algo.add_argument("--num-iterations", type=int, default=None, help="μ; default 1")
    algo.add_argument("--beta", type=float, default=0.08, help="KL coefficient")
    algo.add_argument("--epsilon", type=float, default=0.2, help="ratio clipping")
    algo.add_argument("--batch-size", type=int, default=None, help="prompts per step; default 4")
    algo.add_argument("--mini-batch-size", type=int, default=None, help="prompts per update")
    algo.add_argument("--micro-batch-size", type=int, default=None, help="prompts per pass")
    opt = p.add_argument_group("optimizer: AdamW, warm-up then cosine decay, clipped gradients")
    opt.add_argument("--learning-rate", type=float, default=None, help="peak; default 3e-6")
    opt.add_argument("--b1", type=float, default=0.9)
    opt.add_argument("--b2", type=float, default=0.99)
    opt.add_argument("--weight-decay", type=float, default=0.1)
    opt.add_argument(
        "--warmup-ratio", type=float, default=None, help="share of steps warming up; default 0.1"
    )
    opt.add_argument("--max-grad-norm", type=float, default=0.1, help="0: no clipping")
    roll = p.add_argument_group("rollout")
    roll.add_argument("--rollout-engine", choices=["sglang_jax", "vanilla"], default=None)
    roll.add_argument("--rollout-devices", type=int, default=2, help="first N devices")
    sgl = p.add_argument_group("sglang-jax (single process only)")
    sgl.add_argument("--sglang-mem-fraction-static", type=float, default=0.2)
    sgl.add_argument("--sglang-context-length", type=int, default=None, help="default kv cache")
    sgl.add_argument(
        "--sglang-max-total-tokens",
        type=int,
        default=None,
        help="KV pool cap; default context length × batch × generations",
    )
    sgl.add_argument(
        "--sglang-disable-precompile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="as the seeds (their HBM ran out precompiling)",
    )
    sgl.add_argument("--sglang-precompile-bs-paddings", type=_csv_ints, default=[8])
    sgl.add_argument("--sglang-precompile-token-paddings", type=_csv_ints, default=[2048])
    sgl.add_argument("--sglang-chunked-prefill-size", type=int, default=2048)
    sgl.add_argument("--sglang-page-size", type=int, default=64)
    sgl.add_argument("--sglang-max-running-requests", type=int, default=None)
    sgl.add_argument(
        "--sglang-load-format",
        choices=["dummy", "auto", "safetensors"],
        default="dummy",
        help="dummy: the engine starts with random weights and Tunix pushes the actor's",
    )
    sgl.add_argument(
        "--sglang-setting",
        type=_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other sglang-jax engine setting (a JSON value or a word); unknown ones stop",
    )
    del add
    return p


def parse_args(argv):
    p = parser()
    args = p.parse_args(argv)
    toy = args.model == TOY
    for name, (real, toy_value) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, toy_value if toy else real)
    if args.dataset is None:
        args.dataset = grpo_tasks.DATA_DEFAULTS[args.data_source]
    problem = batch_problem(args)
    if problem:
        p.error(problem)
    if args.kv_cache_size is None:
        args.kv_cache_size = args.max_prompt_length + args.max_new_tokens + 256
    if args.sglang_context_length is None:
        args.sglang_context_length = args.kv_cache_size
    if args.sglang_max_total_tokens is None:
        args.sglang_max_total_tokens = (
            args.sglang_context_length * args.batch_size * args.num_generations
        )
    return args


def batch_problem(args):
    """Tunix's rules for the batch sizes, said with our flag names before anything loads."""
    mini = args.mini_batch_size or args.batch_size
    micro = args.micro_batch_size or mini
    if args.data_source == "local" and not args.dataset and args.model != TOY:
        return "--data-source local needs --dataset PATH.parquet"
    if args.steps < 1:
        return "--steps must be at least 1"
    if args.num_generations < 2:
        return "--num-generations must be at least 2 (GRPO compares a group of completions)"
    if args.rollout_engine == "sglang_jax" and args.num_iterations > 1:
        # Tunix 0.1.7 (and its head, 2026-12) asks the sglang-jax rollout for the old policy's
        # log-probabilities when μ > 1, and SglangJaxRollout.get_per_token_logps calls
        # common.compute_per_token_logps without its `state` argument: a TypeError mid-run.
        return (
            "--num-iterations %d needs --rollout-engine vanilla: with sglang_jax, Tunix's "
            "SglangJaxRollout.get_per_token_logps fails (compute_per_token_logps() missing "
            "'state')" % args.num_iterations
        )
    if args.batch_size % mini:
        return "--mini-batch-size %d must divide --batch-size %d" % (mini, args.batch_size)
    if mini % micro:
        return "--micro-batch-size %d must divide --mini-batch-size %d" % (micro, mini)
    return None


def steps_per_batch(args):
    """Optimizer updates per rollout batch: one per mini batch, μ passes over it."""
    return (args.batch_size // (args.mini_batch_size or args.batch_size)) * args.num_iterations


def say(text):
    print(text, flush=True)


def start_jax():
    """Join the other processes when told how (CPU tests), else as the platform decides (TPU)."""
    import jax

    address = os.environ.get("TPUCONSOLE_COORDINATOR")
    if address:
        if os.environ.get("JAX_PLATFORMS") == "cpu":
            # CPU processes reach each other's devices through gloo's collectives.
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=address,
            num_processes=int(os.environ["TPUCONSOLE_NUM_PROCESSES"]),
            process_id=int(os.environ["TPUCONSOLE_PROCESS_ID"]),
        )
    return jax


def jax_line(jax):
    return "JAX: " + json.dumps(
        {
            "backend": jax.default_backend(),
            "process_index": jax.process_index(),
            "process_count": jax.process_count(),
            "local_device_count": jax.local_device_count(),
            "device_count": jax.device_count(),
        }
    )


MULTI_PROCESS_REFUSAL = (
    "the in-process sglang-jax rollout cannot run in a job of %d processes (a multi-host "
    "slice). Tunix starts sglang-jax inside each process with the device ids of its rollout "
    "mesh and none of sglang-jax's multi-node settings, so each host's scheduler runs alone "
    "while the program needs every host in step; the seeds' run died with "
    '"FAILED_PRECONDITION: The program continuator has halted unexpectedly." A smaller rollout '
    "mesh does not help (sglang-jax looks device ids up in the global list, so every host "
    "would build its engine on host 0's devices), nor does sglang-jax's multi-node mode in "
    "process (rank 1 waits in a health-check server and hands Tunix no scheduler). Two ways "
    "work: (1) --rollout-engine vanilla, Tunix's own sampler (the seeds' multi-host run); "
    "(2) sglang-jax as separate single-host servers, one per VM outside this job, called over "
    "HTTP."
)


# Engine settings --sglang-setting may not carry: Tunix derives them from the rollout mesh, or
# they would make the in-process engine span hosts, which is what failed; or a flag has them.
NOT_A_SETTING = {
    "nnodes": "sglang-jax's multi-node mode does not work in process",
    "node_rank": "sglang-jax's multi-node mode does not work in process",
    "dist_init_addr": "sglang-jax's multi-node mode does not work in process",
    "device_indexes": "Tunix takes them from the rollout mesh (--rollout-devices)",
    "tp_size": "Tunix takes it from the rollout mesh (--rollout-devices)",
    "enable_single_process": "Tunix runs the engine in this process",
    "model_path": "it is the model directory (--local-model-dir)",
    "context_length": "use --sglang-context-length",
    "mem_fraction_static": "use --sglang-mem-fraction-static",
    "load_format": "use --sglang-load-format",
    "page_size": "use --sglang-page-size",
    "chunked_prefill_size": "use --sglang-chunked-prefill-size",
    "precompile_bs_paddings": "use --sglang-precompile-bs-paddings",
    "precompile_token_paddings": "use --sglang-precompile-token-paddings",
    "max_running_requests": "use --sglang-max-running-requests",
    "disable_precompile": "use --[no-]sglang-disable-precompile",
    "max_total_tokens": "use --sglang-max-total-tokens",
}


def rollout_refusal(args, process_count, device_count):
    """Why this rollout cannot run as asked, or None."""
    if args.rollout_devices < 1 or args.rollout_devices > device_count:
        return "--rollout-devices must be between 1 and %d (the devices of the job), got %d" % (
            device_count,
            args.rollout_devices,
        )
    for key, _ in args.sglang_setting:
        if key in NOT_A_SETTING:
            return "--sglang-setting %s is not accepted: %s" % (key, NOT_A_SETTING[key])
    if args.rollout_engine == "sglang_jax" and process_count > 1:
        return MULTI_PROCESS_REFUSAL % process_count
    return None


# --- the learner ---------------------------------------------------------------------------


def optimizer(args):
    """The demo's: AdamW on a warm-up-then-cosine schedule, after clipping the global norm."""
    import optax

    schedule = optax.schedules.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=args.learning_rate,
        warmup_steps=int(args.warmup_ratio * args.steps),
        decay_steps=args.steps,
        end_value=0.0,
    )
    adamw = optax.adamw(
        learning_rate=schedule, b1=args.b1, b2=args.b2, weight_decay=args.weight_decay
    )
    if args.max_grad_norm > 0:
        return optax.chain(optax.clip_by_global_norm(args.max_grad_norm), adamw)
    return adamw


def sglang_fields(args, model_dir):
    """RolloutConfig's sglang-jax fields; the settings it has no field for go to the engine."""
    fields = {
        "rollout_sglang_jax_model_version": model_dir,
        "rollout_sglang_jax_context_length": args.sglang_context_length,
        "rollout_sglang_jax_mem_fraction_static": args.sglang_mem_fraction_static,
        # Tunix's sampler sets load_format from its own field after this flag, so the two agree.
        "rollout_sglang_jax_init_with_random_weights": args.sglang_load_format == "dummy",
        "rollout_sglang_jax_load_format": args.sglang_load_format,
        "rollout_sglang_jax_disable_radix_cache": True,
        "rollout_sglang_jax_enable_deterministic_sampling": False,
        "rollout_sglang_jax_precompile_bs_paddings": args.sglang_precompile_bs_paddings,
        "rollout_sglang_jax_precompile_token_paddings": args.sglang_precompile_token_paddings,
        "rollout_sglang_jax_chunked_prefill_size": args.sglang_chunked_prefill_size,
        "rollout_sglang_jax_page_size": args.sglang_page_size,
        "rollout_sglang_jax_max_running_requests": args.sglang_max_running_requests,
    }
    engine = {
        "disable_precompile": args.sglang_disable_precompile,
        "max_total_tokens": args.sglang_max_total_tokens,
    }
    engine.update(dict(args.sglang_setting))
    fields["rollout_sglang_jax_kwargs"] = engine
    return fields


def rollout_config(args, model_dir, config_class=None):
    """Tunix's RolloutConfig; a field this Tunix does not have is an error naming it."""
    if config_class is None:
        from tunix.rl.rollout.base_rollout import RolloutConfig as config_class
    wanted = {
        "max_tokens_to_generate": args.max_new_tokens,
        "max_prompt_length": args.max_prompt_length,
        "kv_cache_size": args.kv_cache_size,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k or None,
    }
    if args.rollout_engine == "sglang_jax":
        wanted.update(sglang_fields(args, model_dir))
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(wanted) - known)
    if unknown:
        raise ValueError(
            "this Tunix's RolloutConfig has no field %s; the setting would be dropped"
            % ", ".join(unknown)
        )
    return config_class(**wanted)


def check_engine_settings(settings, server_args_class=None):
    """Every engine keyword is a field of sglang-jax's ServerArgs, checked before loading."""
    if server_args_class is None:
        try:
            from sgl_jax.srt.server_args import ServerArgs as server_args_class
        except ImportError as exc:
            raise ImportError(
                "the sglang_jax rollout needs sglang-jax in this environment (%s); install it "
                "(pip install sglang-jax, Python 3.12+) or use --rollout-engine vanilla" % exc
            ) from None
    known = {f.name for f in dataclasses.fields(server_args_class)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(
            "sglang-jax has no engine setting %s (not a field of its ServerArgs)"
            % ", ".join(unknown)
        )


def training_config(args):
    from tunix.rl import rl_cluster as rl

    extra = {}
    if args.metrics_dir:
        from tunix.sft import metrics_logger

        extra["metrics_logging_options"] = metrics_logger.MetricsLoggerOptions(
            log_dir=args.metrics_dir, flush_every_n_steps=args.metrics_flush_every
        )
    if args.checkpoint_dir:
        from orbax import checkpoint as ocp

        extra["checkpoint_root_directory"] = args.checkpoint_dir
        extra["checkpointing_options"] = ocp.CheckpointManagerOptions(
            save_interval_steps=args.save_interval_steps, max_to_keep=args.max_to_keep
        )
    return rl.RLTrainingConfig(
        actor_optimizer=optimizer(args),
        eval_every_n_steps=args.steps + 1,
        max_steps=args.steps,
        mini_batch_size=args.mini_batch_size,
        train_micro_batch_size=args.micro_batch_size,
        **extra,
    )


def meshes(args, jax, devices):
    """Training on every device (FSDP); the rollout on the first N, or with it on a CPU."""
    import numpy as np

    train = jax.sharding.Mesh(np.array(devices).reshape(len(devices), 1), ("fsdp", "tp"))
    if jax.default_backend() == "cpu":
        # Tunix forbids host transfers while syncing weights on a CPU, and between two CPU
        # meshes there is no other path: the roles share one mesh there.
        say("NOTE: CPU backend: rollout shares the training mesh of %d devices" % len(devices))
        return train, train
    chosen = devices[: args.rollout_devices]
    return train, jax.sharding.Mesh(np.array(chosen).reshape(1, len(chosen)), ("fsdp", "tp"))


def build_learner(args, train_mesh, rollout_mesh, models, tokenizer, step_log):
    """Tunix's GRPO learner. RLCluster is RLEngine at Tunix's head; both spellings work."""
    import inspect

    from tunix.rl import rl_cluster as rl
    from tunix.rl.grpo import grpo_learner

    actor, reference, model_dir = models
    config = rl.ClusterConfig(
        role_to_mesh={
            rl.Role.ACTOR: train_mesh,
            rl.Role.REFERENCE: train_mesh,
            rl.Role.ROLLOUT: rollout_mesh,
        },
        rollout_engine=args.rollout_engine,
        offload_to_cpu=False,
        training_config=training_config(args),
        rollout_config=rollout_config(args, model_dir),
    )
    cluster_class = getattr(rl, "RLEngine", None) or rl.RLCluster
    cluster = cluster_class(
        actor=actor, reference=reference, tokenizer=tokenizer, cluster_config=config
    )
    algo = grpo_learner.GRPOConfig(
        num_generations=args.num_generations,
        num_iterations=args.num_iterations,
        beta=args.beta,
        epsilon=args.epsilon,
    )
    learner_class = grpo_learner.GRPOLearner
    parameters = inspect.signature(learner_class.__init__).parameters
    keyword = "rl_engine" if "rl_engine" in parameters else "rl_cluster"
    rewards = grpo_tasks.TOY_REWARDS if args.model == TOY else grpo_tasks.GSM8K_REWARDS
    return learner_class(
        **{keyword: cluster},
        algo_config=algo,
        reward_fns=rewards,
        metric_fns=[step_log.metric_fn],
    )


ENGINE_FIELDS = (
    "model_path",
    "load_format",
    "context_length",
    "mem_fraction_static",
    "max_total_tokens",
    "disable_precompile",
    "precompile_bs_paddings",
    "precompile_token_paddings",
    "chunked_prefill_size",
    "page_size",
    "max_running_requests",
    "tp_size",
    "device_indexes",
    "enable_single_process",
)


def engine_settings(learner):
    """What the sglang-jax engine Tunix built was given: read back from the engine itself."""
    server_args = learner.rl_cluster.rollout._sampler.engine.server_args
    return {name: getattr(server_args, name, None) for name in ENGINE_FIELDS}


class StepLog:
    """`Train step N reward_mean=R kl=K`: the rewards of the batch step N trained on.

    Each batch carries its number in a `batch` column, which Tunix hands to metric functions
    with the rewards, so a rollout done ahead of training (Tunix prefetches when the rollout
    has its own mesh) is still counted for the right steps. The line is printed when Tunix
    records the step's KL, right after its loss line.
    """

    def __init__(self, steps_per_batch):
        self.steps_per_batch = steps_per_batch
        self.sums = {}
        self.counts = {}
        self.printed = set()

    def metric_fn(self, prompts, completions, rewards, advantages, batch=None, **kwargs):
        import numpy as np

        if batch is None:
            return {}
        for number, reward in zip(
            np.asarray(batch).tolist(), np.asarray(rewards).tolist(), strict=False
        ):
            self.sums[number] = self.sums.get(number, 0.0) + float(reward)
            self.counts[number] = self.counts.get(number, 0) + 1
        return {}

    def reward_mean(self, step):
        number = (step - 1) // self.steps_per_batch + 1
        if not self.counts.get(number):
            return None
        return self.sums[number] / self.counts[number]

    def on_scalar(self, event, value, step=None, **kwargs):
        if event != "actor/train/kl" or step is None or step in self.printed:
            return
        mean = self.reward_mean(int(step))
        if mean is None:
            return
        self.printed.add(step)
        say("Train step %d reward_mean=%.6f kl=%.6f" % (step, mean, float(value)))


def batches(rows, batch_size):
    """Endless batches in Tunix's input shape (a dict of arrays with `prompts`), numbered."""
    import numpy as np

    number, i = 0, 0
    while True:
        number += 1
        chunk = [rows[(i + k) % len(rows)] for k in range(batch_size)]
        i += batch_size
        batch = {
            key: np.array([r[key] for r in chunk]) for key in ("prompts", "question", "answer")
        }
        batch["batch"] = np.array([number] * batch_size)
        yield batch


# --- the run -------------------------------------------------------------------------------


def plan(args):
    """What the flags resolved to, before anything heavy: `--dry-run` prints it."""
    toy = args.model == TOY
    return {
        "model": args.model,
        "model_dir": None
        if toy
        else str(args.local_model_dir or grpo_model.default_dir(args.models_dir, args.model)),
        "data": None if toy else {"source": args.data_source, "dataset": args.dataset},
        "steps": args.steps,
        "rollout_engine": args.rollout_engine,
        "rollout_devices": args.rollout_devices,
        "generation": {
            "max_prompt_length": args.max_prompt_length,
            "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "top_k": args.top_k,
            "kv_cache_size": args.kv_cache_size,
        },
        "grpo": {
            "num_generations": args.num_generations,
            "num_iterations": args.num_iterations,
            "beta": args.beta,
            "epsilon": args.epsilon,
            "batch_size": args.batch_size,
            "mini_batch_size": args.mini_batch_size,
            "micro_batch_size": args.micro_batch_size,
        },
        "optimizer": {
            "learning_rate": args.learning_rate,
            "b1": args.b1,
            "b2": args.b2,
            "weight_decay": args.weight_decay,
            "warmup_steps": int(args.warmup_ratio * args.steps),
            "max_grad_norm": args.max_grad_norm,
        },
        "rewards": [
            f.__name__ for f in (grpo_tasks.TOY_REWARDS if toy else grpo_tasks.GSM8K_REWARDS)
        ],
        "metrics_dir": args.metrics_dir,
        "checkpoint_dir": args.checkpoint_dir,
        "sglang_jax": sglang_fields(args, "<model_dir>")
        if args.rollout_engine == "sglang_jax"
        else None,
    }


def load(args, train_mesh):
    """(actor, reference, model dir), tokenizer and rows; offline once the files are here."""
    if args.model == TOY:
        from flax import nnx
        from tunix.tests import test_common

        vocab = test_common.MockVocab({w: i for i, w in enumerate(grpo_tasks.toy_words())})
        config = test_common.ModelConfig(vocab_size=vocab.GetPieceSize())
        with train_mesh:
            actor = test_common.ToyTransformer(config=config, rngs=nnx.Rngs(args.seed))
            reference = test_common.ToyTransformer(config=config, rngs=nnx.Rngs(args.seed))
        rows = grpo_tasks.toy_rows(64, args.seed)
        return (actor, reference, ""), vocab, rows
    model_dir = grpo_model.resolve(args.model, args.local_model_dir, args.models_dir, say)
    if args.data_source != "huggingface":
        grpo_model.go_offline()
    tokenizer = grpo_model.load_tokenizer(model_dir)
    rows = grpo_tasks.gsm8k_rows(
        args.data_source,
        args.dataset,
        tokenizer,
        args.steps * args.batch_size,
        args.max_prompt_length,
        say,
    )
    grpo_model.go_offline()
    say("MODEL: loading %s with Tunix's Qwen3 safetensors loader" % model_dir)
    actor, reference = grpo_model.load_qwen3(model_dir, train_mesh)
    return (actor, reference, model_dir), tokenizer, rows


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.dry_run:
        say("PLAN: " + json.dumps(plan(args), sort_keys=True))
        return 0
    started = time.perf_counter()
    jax = start_jax()
    say(jax_line(jax))
    devices = jax.devices()
    refusal = rollout_refusal(args, jax.process_count(), len(devices))
    if refusal:
        say("ERROR: " + refusal)
        if jax.process_count() > 1:
            # Leave together: process 0 hosts the coordination service, and the others die
            # with a fatal JAX error instead of this refusal if it goes first.
            jax.distributed.shutdown()
        return 2
    try:
        if args.rollout_engine == "sglang_jax":
            check_engine_settings(sglang_fields(args, "")["rollout_sglang_jax_kwargs"])
        rollout_config(args, "")
    except (ValueError, ImportError) as exc:
        say("ERROR: %s" % exc)
        return 2
    from absl import logging

    logging.set_verbosity(logging.INFO)
    train_mesh, rollout_mesh = meshes(args, jax, devices)
    try:
        models, tokenizer, rows = load(args, train_mesh)
    except (grpo_model.ModelError, ValueError) as exc:
        say("ERROR: %s" % exc)
        return 2
    step_log = StepLog(steps_per_batch(args))
    jax.monitoring.register_scalar_listener(step_log.on_scalar)
    learner = build_learner(args, train_mesh, rollout_mesh, models, tokenizer, step_log)
    if args.rollout_engine == "sglang_jax":
        say("SGLANG_JAX: " + json.dumps(engine_settings(learner), sort_keys=True))
    say(
        "GRPO: model=%s steps=%d rollout_engine=%s rollout_devices=%d process_index=%d"
        % (args.model, args.steps, args.rollout_engine, args.rollout_devices, jax.process_index())
    )
    batch_count = math.ceil(args.steps / steps_per_batch(args))
    learner.train(_take(batches(rows, args.batch_size), batch_count))
    say("DONE: steps=%d elapsed_sec=%.3f" % (args.steps, time.perf_counter() - started))
    return 0


def _take(iterator, count):
    for _ in range(count):
        yield next(iterator)


if __name__ == "__main__":
    from remote.process_end import run_and_exit

    run_and_exit(main)
