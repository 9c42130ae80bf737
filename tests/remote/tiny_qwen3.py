"""A Qwen3 model directory as Hugging Face lays one out, tiny and made here, and a GSM8K copy.

config.json with Qwen3's keys, random weights under Qwen3's tensor names in model.safetensors,
and a byte-level BPE tokenizer trained on the spot with a Qwen-style chat template: everything
remote/grpo.py reads from a downloaded Qwen/Qwen3-4B-Instruct-2507, nothing fetched.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# Shapes as in Qwen3-4B's config.json, scaled down; head_dim stays 128, as there (sgl-jax
# pads attention heads to 128 on a CPU).
HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS, HEAD_DIM = 32, 64, 2, 2, 2, 128
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Rows in GSM8K's own shape: the answer's worked solution ends in "#### N".
GSM8K = [
    ("Natalia sold 48 clips in April and half as many in May. How many in all?", "#### 72"),
    ("Weng earns 12 dollars an hour. She worked 50 minutes. How much did she earn?", "#### 10"),
    ("Betty has 50 dollars and needs 100. Her parents give 15 and 30. How much more?", "#### 5"),
    ("Julie read 12 pages today and twice as many tomorrow. How many in two days?", "#### 36"),
]


def _tokenizer(corpus: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok


def write_tiny_qwen3(directory: Path, seed: int = 0) -> Path:
    from safetensors.numpy import save_file
    from tunix.examples.data import math_dataset

    directory.mkdir(parents=True, exist_ok=True)
    corpus = [math_dataset.SYSTEM_PROMPT, *[q + " " + a for q, a in GSM8K]] * 4
    tok = _tokenizer(corpus)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "chat_template": CHAT_TEMPLATE,
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "bos_token": None,
                "model_max_length": 4096,
            }
        )
    )
    vocab = tok.get_vocab_size()
    config = {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "vocab_size": vocab,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_theta": 5000000,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "torch_dtype": "float32",
        "bos_token_id": None,
        "eos_token_id": tok.token_to_id("<|im_end|>"),
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    tensors = {
        "model.embed_tokens.weight": w(vocab, HIDDEN),
        "model.norm.weight": np.ones(HIDDEN, np.float32),
    }
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        tensors |= {
            p + "self_attn.q_proj.weight": w(HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.k_proj.weight": w(KV_HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.v_proj.weight": w(KV_HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.o_proj.weight": w(HIDDEN, HEADS * HEAD_DIM),
            p + "self_attn.q_norm.weight": np.ones(HEAD_DIM, np.float32),
            p + "self_attn.k_norm.weight": np.ones(HEAD_DIM, np.float32),
            p + "mlp.gate_proj.weight": w(INTERMEDIATE, HIDDEN),
            p + "mlp.up_proj.weight": w(INTERMEDIATE, HIDDEN),
            p + "mlp.down_proj.weight": w(HIDDEN, INTERMEDIATE),
            p + "input_layernorm.weight": np.ones(HIDDEN, np.float32),
            p + "post_attention_layernorm.weight": np.ones(HIDDEN, np.float32),
        }
    tensors["lm_head.weight"] = w(vocab, HIDDEN)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def write_gsm8k_parquet(path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    questions, answers = zip(*GSM8K, strict=True)
    pq.write_table(pa.table({"question": list(questions), "answer": list(answers)}), str(path))
    return path
