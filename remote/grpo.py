"""Tunix GRPO on GSM8K, as the seeds ran it, with the multi-host lesson built in.

`python -u -m remote.grpo [flags]`, on every worker of the slice. Tunix prints `Train step N
training loss: X` itself (absl logging at INFO, which this script turns on); this script prints
the JAX line of its process and `DONE: steps=N elapsed_sec=…`.

An in-process sglang-jax rollout on a mesh that spans hosts, without sglang-jax's multi-node
settings, is refused before anything loads: each host's scheduler would run alone while the
program runs cross-host collectives, and the seeds' run died with "The program continuator has
halted unexpectedly". `--model toy` runs Tunix's own test transformer on a tiny local arithmetic
set, so the whole loop runs on a CPU with nothing downloaded.
"""

import argparse
import inspect
import json
import os
import random
import re
import sys
import time

TOY = "toy"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="remote.grpo", description=__doc__)
    p.add_argument("--model", default="Qwen/Qwen3-4B-Instruct-2507", help="HF id, or 'toy'")
    p.add_argument("--local-model-dir", default="", help="weights already on the VM")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rollout-devices", type=int, default=2, help="first N global devices")
    p.add_argument(
        "--rollout-engine",
        choices=["sglang_jax", "vanilla"],
        help="default sglang_jax; vanilla with --model toy",
    )
    p.add_argument("--sglang-mem-fraction-static", type=float, default=0.4)
    p.add_argument("--batch-size", type=int, default=2, help="prompts per training step")
    p.add_argument("--num-generations", type=int, default=2, help="completions per prompt")
    p.add_argument("--max-prompt-length", type=int, default=256)
    p.add_argument("--max-new-tokens", type=int, help="default 64; 4 with --model toy")
    p.add_argument("--learning-rate", type=float, help="default 1e-6; 1e-3 with --model toy")
    p.add_argument("--seed", type=int, default=0)
    # sglang-jax's multi-node mode: with these, a rollout mesh across hosts is coordinated.
    p.add_argument("--sglang-nnodes", type=int, default=1)
    p.add_argument("--sglang-node-rank", type=int, default=-1, help="default: process index")
    p.add_argument("--sglang-dist-init-addr", default="")
    args = p.parse_args(argv)
    # The toy runs on a CPU with nothing downloaded: its rollout is Tunix's own, its words are
    # few and short, and its set is tiny.
    toy = args.model == TOY
    if args.rollout_engine is None:
        args.rollout_engine = "vanilla" if toy else "sglang_jax"
    if args.max_new_tokens is None:
        args.max_new_tokens = 4 if toy else 64
    if args.learning_rate is None:
        args.learning_rate = 1e-3 if toy else 1e-6
    return args


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


def rollout_refusal(args, device_processes):
    """Why this rollout cannot run as asked, or None. `device_processes`: process of each device."""
    if args.rollout_devices < 1 or args.rollout_devices > len(device_processes):
        return "--rollout-devices must be between 1 and %d (the devices of the slice), got %d" % (
            len(device_processes),
            args.rollout_devices,
        )
    if args.sglang_nnodes > 1 and not args.sglang_dist_init_addr:
        return "--sglang-nnodes %d needs --sglang-dist-init-addr HOST:PORT (rank 0's)" % (
            args.sglang_nnodes
        )
    hosts = sorted(set(device_processes[: args.rollout_devices]))
    if args.rollout_engine != "sglang_jax" or len(hosts) == 1 or args.sglang_nnodes > 1:
        return None
    # The rollout takes the first devices: the host-local choice is the leading run of one
    # host's devices, which need not be all of that host's (ids can interleave across hosts).
    local = next(
        (i for i, p in enumerate(device_processes) if p != device_processes[0]),
        len(device_processes),
    )
    return (
        "in-process sglang-jax rollout on %d devices spans hosts (processes %s) and no "
        "multi-node settings were given. Each host's sglang-jax scheduler would run on its own "
        "while the program runs collectives across hosts; the seeds' run died with "
        '"FAILED_PRECONDITION: The program continuator has halted unexpectedly." '
        "Workarounds: (1) --rollout-engine vanilla; (2) a host-local rollout mesh, "
        "--rollout-devices %d or fewer. (sglang-jax's multi-node mode, --sglang-nnodes/"
        "--sglang-node-rank/--sglang-dist-init-addr with only node rank 0 taking requests, "
        "is the third way.)" % (args.rollout_devices, hosts, local)
    )


# --- rewards: the GSM8K convention, "#### <number>" at the end of the answer ----------------

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_FINAL = re.compile(r"####\s*(-?[\d,]+(?:\.\d+)?)")


def final_number(text):
    m = _FINAL.search(text)
    return m.group(1).replace(",", "") if m else None


def reward_format(prompts, completions, **kwargs):
    """1 when the completion ends in a "#### <number>" answer, else 0."""
    return [1.0 if final_number(c) is not None else 0.0 for c in completions]


def reward_correct(prompts, completions, answer, **kwargs):
    """2 for the right final number, 0.5 for the right number anywhere, else 0."""
    scores = []
    for completion, expected in zip(completions, answer, strict=False):
        want = final_number(str(expected)) or str(expected).strip()
        got = final_number(completion)
        if got is not None and _same(got, want):
            scores.append(2.0)
        elif any(_same(n, want) for n in _NUMBER.findall(completion)):
            scores.append(0.5)
        else:
            scores.append(0.0)
    return scores


def _same(a, b):
    try:
        return float(a) == float(b)
    except ValueError:
        return False


# --- the toy: Tunix's test transformer and a word-level arithmetic vocabulary ---------------


def toy_words():
    return ["<pad>", "<s>", "</s>", "what", "is", "+", "?", "####"] + [str(i) for i in range(19)]


def toy_dataset(count, seed):
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        a, b = rng.randrange(10), rng.randrange(10)
        rows.append({"question": "what is %d + %d ?" % (a, b), "answer": "#### %d" % (a + b)})
    return rows


def toy_model(mesh):
    from flax import nnx
    from tunix.tests import test_common

    vocab = test_common.MockVocab({w: i for i, w in enumerate(toy_words())})
    config = test_common.ModelConfig(vocab_size=vocab.GetPieceSize())
    with mesh:
        actor = test_common.ToyTransformer(config=config, rngs=nnx.Rngs(0))
        reference = test_common.ToyTransformer(config=config, rngs=nnx.Rngs(0))
    return actor, reference, vocab


# --- the real thing: a Hugging Face model and GSM8K ----------------------------------------

GSM8K_PROMPT = (
    "Solve the problem. Think briefly, then give the final answer on its own line as "
    "'#### <number>'.\n\nProblem: {question}\n"
)


def gsm8k_rows(split, count):
    from datasets import load_dataset

    data = load_dataset("openai/gsm8k", "main", split=split)
    return [
        {"question": row["question"], "answer": row["answer"]}
        for row in data.select(range(min(count, len(data))))
    ]


def hf_model(args, mesh):
    from transformers import AutoTokenizer
    from tunix.models import automodel

    where = args.local_model_dir or None
    actor, path = automodel.AutoModel.from_pretrained(args.model, mesh, model_download_path=where)
    reference, _ = automodel.AutoModel.from_pretrained(args.model, mesh, model_download_path=where)
    tokenizer = AutoTokenizer.from_pretrained(path or where or args.model)
    return actor, reference, tokenizer


def batches(rows, batch_size, template):
    """Endless batches in Tunix's input shape: a dict of lists with `prompts`."""
    import numpy as np

    i = 0
    while True:
        chunk = [rows[(i + k) % len(rows)] for k in range(batch_size)]
        i += batch_size
        yield {
            "prompts": np.array([template.format(question=r["question"]) for r in chunk]),
            "answer": np.array([r["answer"] for r in chunk]),
        }


def _accepts(fn, name):
    return name in inspect.signature(fn).parameters


def build_learner(args, jax, devices):
    """Tunix's GRPO learner over a training mesh of all devices and a rollout mesh of the first N.

    Tunix renamed RLCluster to RLEngine (and the learner's keyword with it); both spellings work.
    """
    import numpy as np
    import optax
    from tunix.rl import rl_cluster as rl
    from tunix.rl.grpo import grpo_learner
    from tunix.rl.rollout import base_rollout

    train_mesh = jax.sharding.Mesh(np.array(devices).reshape(len(devices), 1), ("fsdp", "tp"))
    rollout = devices[: args.rollout_devices]
    rollout_mesh = jax.sharding.Mesh(np.array(rollout).reshape(1, len(rollout)), ("fsdp", "tp"))
    if jax.default_backend() == "cpu":
        # Tunix forbids host transfers while syncing weights on a CPU, and between two CPU
        # meshes there is no other path: the roles share one mesh there.
        say("NOTE: CPU backend: rollout shares the training mesh of %d devices" % len(devices))
        rollout_mesh = train_mesh
    if args.model == TOY:
        actor, reference, tokenizer = toy_model(train_mesh)
    else:
        actor, reference, tokenizer = hf_model(args, train_mesh)
    rollout_config = base_rollout.RolloutConfig(
        max_tokens_to_generate=args.max_new_tokens,
        max_prompt_length=args.max_prompt_length,
        kv_cache_size=args.max_prompt_length + args.max_new_tokens + 64,
        temperature=0.9,
    )
    if args.rollout_engine == "sglang_jax":
        rollout_config = _with_sglang_settings(args, rollout_config)
    config = rl.ClusterConfig(
        role_to_mesh={
            rl.Role.ACTOR: train_mesh,
            rl.Role.REFERENCE: train_mesh,
            rl.Role.ROLLOUT: rollout_mesh,
        },
        rollout_engine=args.rollout_engine,
        offload_to_cpu=False,
        training_config=rl.RLTrainingConfig(
            actor_optimizer=optax.adamw(args.learning_rate),
            eval_every_n_steps=args.steps + 1,
            max_steps=args.steps,
        ),
        rollout_config=rollout_config,
    )
    cluster_class = getattr(rl, "RLEngine", None) or rl.RLCluster
    cluster = cluster_class(
        actor=actor, reference=reference, tokenizer=tokenizer, cluster_config=config
    )
    algo = grpo_learner.GRPOConfig(num_generations=args.num_generations, num_iterations=1)
    learner_class = grpo_learner.GRPOLearner
    keyword = "rl_engine" if _accepts(learner_class.__init__, "rl_engine") else "rl_cluster"
    return learner_class(
        **{keyword: cluster}, algo_config=algo, reward_fns=[reward_format, reward_correct]
    )


def _with_sglang_settings(args, config):
    import dataclasses

    fields = {f.name for f in dataclasses.fields(config)}
    wanted = {
        "rollout_sglang_jax_mem_fraction_static": args.sglang_mem_fraction_static,
        "rollout_sglang_jax_model_version": args.local_model_dir or args.model,
        "rollout_sglang_jax_init_with_random_weights": False,
    }
    if args.sglang_nnodes > 1:
        import jax

        rank = args.sglang_node_rank if args.sglang_node_rank >= 0 else jax.process_index()
        wanted["rollout_sglang_jax_kwargs"] = {
            "nnodes": args.sglang_nnodes,
            "node_rank": rank,
            "dist_init_addr": args.sglang_dist_init_addr,
        }
    return dataclasses.replace(config, **{k: v for k, v in wanted.items() if k in fields})


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    started = time.perf_counter()
    jax = start_jax()
    say(jax_line(jax))
    devices = jax.devices()
    refusal = rollout_refusal(args, [d.process_index for d in devices])
    if refusal:
        say("ERROR: " + refusal)
        return 2
    from absl import logging

    logging.set_verbosity(logging.INFO)
    if args.model == TOY:
        rows, template = toy_dataset(64, args.seed), "{question}"
    else:
        rows, template = gsm8k_rows("train", args.steps * args.batch_size), GSM8K_PROMPT
    learner = build_learner(args, jax, devices)
    say(
        "GRPO: model=%s steps=%d rollout_engine=%s rollout_devices=%d process_index=%d"
        % (args.model, args.steps, args.rollout_engine, args.rollout_devices, jax.process_index())
    )
    data = batches(rows, args.batch_size, template)
    learner.train(_take(data, args.steps))
    say("DONE: steps=%d elapsed_sec=%.3f" % (args.steps, time.perf_counter() - started))
    return 0


def _take(iterator, count):
    for _ in range(count):
        yield next(iterator)


if __name__ == "__main__":
    from remote.process_end import run_and_exit

    run_and_exit(main)
