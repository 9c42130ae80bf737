"""What remote/grpo.py trains on and how it is scored: GSM8K as Tunix's GRPO demo, and a toy.

GSM8K: Tunix's own data path (its system prompt asks for <reasoning>…</reasoning> then
<answer>…</answer>, put through the tokenizer's chat template) and the demo's four rewards,
rewritten here with the same scores. The toy: sums of two digits in a word vocabulary, scored
so that a random model earns something from its first step.
"""

import random
import re

# --- GSM8K, the demo's recipe (google/tunix scripts/grpo_demo_llama3_qwen2.py) -------------

REASONING = ("<reasoning>", "</reasoning>")
ANSWER = ("<answer>", "</answer>")

# The whole completion is reasoning, then the answer, with only blanks around (line-wise).
_FORMAT = re.compile(
    r"^\s*<reasoning>.+?</reasoning>.*?<answer>(.+?)</answer>\s*$", re.MULTILINE | re.DOTALL
)
# The last number written after an <answer> tag.
_ANSWER_NUMBER = re.compile(
    r"<answer>.*?([+-]?(?:\d[\d,]*)(?:\.\d+)?|[+-]?\.\d+)", re.MULTILINE | re.DOTALL
)


def match_format_exactly(prompts, completions, **kwargs):
    """3 when the completion is in the asked shape, else 0."""
    return [3.0 if _FORMAT.search(c) else 0.0 for c in completions]


def match_format_approximately(prompts, completions, **kwargs):
    """+0.5 for each of the four tags seen exactly once, -0.5 for each seen 0 or 2+ times."""
    tags = (*REASONING, *ANSWER)
    return [sum(0.5 if c.count(t) == 1 else -0.5 for t in tags) for c in completions]


def _guess(completion):
    found = _ANSWER_NUMBER.findall(completion)
    return found[-1] if found else None


def check_answer(prompts, completions, answer, **kwargs):
    """3 for the answer as written, 1.5 up to blanks, 0.5/0.25 within 10%/20%, else -1."""
    scores = []
    for completion, truth in zip(completions, answer, strict=False):
        truth = str(truth)
        guess = _guess(completion)
        if guess is None:
            scores.append(0.0)
        elif guess == truth:
            scores.append(3.0)
        elif guess.strip() == truth.strip():
            scores.append(1.5)
        else:
            scores.append(_closeness(guess, truth))
    return scores


def _closeness(guess, truth):
    try:
        ratio = float(guess) / float(truth)
    except (ValueError, ZeroDivisionError):
        return -0.5  # not comparable as numbers
    if 0.9 <= ratio <= 1.1:
        return 0.5
    if 0.8 <= ratio <= 1.2:
        return 0.25
    return -1.0


def check_numbers(prompts, completions, answer, **kwargs):
    """1.5 when the answer's number equals the truth as numbers (commas ignored), else 0."""
    scores = []
    for completion, truth in zip(completions, answer, strict=False):
        guess = _guess(completion)
        try:
            same = guess is not None and float(guess.replace(",", "")) == float(
                str(truth).replace(",", "").strip()
            )
        except ValueError:
            same = False
        scores.append(1.5 if same else 0.0)
    return scores


GSM8K_REWARDS = [match_format_exactly, match_format_approximately, check_answer, check_numbers]

DATA_DEFAULTS = {"huggingface": "openai/gsm8k:main", "tfds": "gsm8k", "local": ""}


def gsm8k_rows(source, dataset, tokenizer, count, max_prompt_length, say):
    """`count` rows of Tunix's GSM8K data path, prompts no longer than the rollout takes.

    `local` reads a parquet copy (columns question, answer) and needs no network; `huggingface`
    and `tfds` download once into their caches.
    """
    from tunix.examples.data import math_dataset

    data = math_dataset.create_dataset(
        source,
        dataset,
        tokenizer=tokenizer,
        tfds_download=True,
        split="train",
        apply_chat_template_to_dataset=True,
    )
    rows, skipped = [], 0
    for item in data:
        prompt = str(item["prompts"])
        if len(tokenizer.encode(prompt)) > max_prompt_length:
            skipped += 1
            continue
        rows.append({"prompts": prompt, "question": item["question"], "answer": item["answer"]})
        if len(rows) >= count:
            break
    if skipped:
        say("DATA: skipped %d prompts longer than %d tokens" % (skipped, max_prompt_length))
    if not rows:
        raise ValueError(
            "no GSM8K prompt of %s fits --max-prompt-length %d" % (dataset, max_prompt_length)
        )
    return rows


# --- the toy: a word vocabulary Tunix's ToyTransformer can score on ------------------------


def toy_words():
    return ["<pad>", "<s>", "</s>", "what", "is", "+", "?"] + [str(i) for i in range(19)]


def toy_rows(count, seed):
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        a, b = rng.randrange(10), rng.randrange(10)
        question = "what is %d + %d ?" % (a, b)
        rows.append({"prompts": question, "question": question, "answer": str(a + b)})
    return rows


def _numbers(completion):
    return [w for w in completion.split() if w.isdigit()]


def toy_number_words(prompts, completions, **kwargs):
    """The share of the completion's words that are numbers: dense, so a random model scores."""
    return [len(_numbers(c)) / len(c.split()) if c.split() else 0.0 for c in completions]


def toy_sum(prompts, completions, answer, **kwargs):
    """2 when the first number is the sum, 1 when the sum appears later, else 0."""
    scores = []
    for completion, truth in zip(completions, answer, strict=False):
        numbers = _numbers(completion)
        if numbers and numbers[0] == str(truth):
            scores.append(2.0)
        elif str(truth) in numbers:
            scores.append(1.0)
        else:
            scores.append(0.0)
    return scores


TOY_REWARDS = [toy_number_words, toy_sum]
