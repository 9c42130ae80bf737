"""Make the tiny Llama the real sgl-jax engine runs here: a config and a tokenizer, no weights.

Run with the engine environment's Python (it has `tokenizers` and `transformers`):
`.venv-engine/bin/python scripts/tiny_llama.py HUB_CACHE`. Nothing is downloaded: the model has
the shape of the seeds' `hf-internal-testing/tiny-random-LlamaForCausalLM` (hidden 16, 4 heads,
2 layers) with two changes sgl-jax's CPU path needs, and `load_format=dummy` gives it weights.
It is written into a Hugging Face hub cache under that repository's name, so with
HF_HUB_OFFLINE=1 the seeds' model id resolves to it, as a model downloaded earlier would.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

REPO_ID = "hf-internal-testing/tiny-random-LlamaForCausalLM"
# A made-up revision: this is our stand-in, not any commit of the hub's repository.
REVISION = "0000000000000000000000000000000000000000"

# The seeds' shape, except: head_dim 128, because sgl-jax's native CPU attention pads heads to
# 128 and the seeds' implied head_dim 4 then fails (`dot_general requires contracting
# dimensions to have the same shape, got (512,) and (16,)`); and a vocabulary as small as the
# tokenizer below, instead of 32000.
CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 16,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "num_hidden_layers": 2,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
VOCAB_SIZE = 512
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0..3, as the config says
SENTENCES = [
    "Please answer: 1+1=?",
    "1+1=?",
    "The capital of France is Paris.",
    "Four engines run on four devices in one process.",
    "Once upon a time there was a tiny language model.",
    "The quick brown fox jumps over the lazy dog.",
    "0 1 2 3 4 5 6 7 8 9 + - * / = ?",
]
# sgl-jax's grammar backend (llguidance) refuses a WordLevel tokenizer; ByteLevel BPE it takes.


def write_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(SENTENCES, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    fast.save_pretrained(str(folder))
    # transformers 4.57 writes an empty `extra_special_tokens`, which makes sgl-jax rewrite the
    # config into a temporary folder (and warn) for every engine it starts; it means nothing.
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    if config.get("extra_special_tokens") == {}:
        del config["extra_special_tokens"]
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def make(hub_cache: Path) -> Path:
    """Write the model into `hub_cache` (once; a complete one is kept) and return its folder."""
    repo = hub_cache / ("models--" + REPO_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    if (snapshot / "config.json").exists():
        return snapshot
    repo.mkdir(parents=True, exist_ok=True)
    # Built aside and renamed into place, so a reader never sees half a model.
    with tempfile.TemporaryDirectory(dir=repo) as tmp:
        staging = Path(tmp) / REVISION
        staging.mkdir()
        write_tokenizer(staging)
        config = dict(CONFIG, vocab_size=VOCAB_SIZE)
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (staging / "README.md").write_text(
            f"A local stand-in for {REPO_ID}, made by tpuconsole's scripts/tiny_llama.py: its "
            "shape with head_dim 128 and a small ByteLevel BPE vocabulary; no weights (run it "
            "with load_format=dummy). Nothing here came from the hub.\n"
        )
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, snapshot)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: tiny_llama.py HUB_CACHE")
    print(make(Path(sys.argv[1])))
