"""Where remote/grpo.py's model comes from: a local directory of safetensors, read by Tunix.

A model id is downloaded once into a directory (anonymously, or with HF_TOKEN; never a login
prompt), and from then on the directory is all that is read: the process goes offline first.
"""

import json
import os
from pathlib import Path

WEIGHTS = "*.safetensors"
# Tunix's own downloader skips `original/` (the non-HF checkpoint some repos carry).
SKIP_ON_DOWNLOAD = ["original/*"]


class ModelError(Exception):
    """What went wrong getting the model, in one sentence with what to do."""


def default_dir(models_dir, model_id):
    """`/tmp/models/Qwen__Qwen3-4B-Instruct-2507`: the layout the seeds' multi-host run used."""
    return str(Path(models_dir).expanduser() / model_id.replace("/", "__"))


def has_weights(directory):
    """A config and every safetensors file its index names (or at least one, with no index).

    huggingface_hub writes a file under its final name only once it is complete, so a download
    cut short leaves a directory this says no to, and the next run resumes it.
    """
    path = Path(directory).expanduser()
    if not (path / "config.json").is_file():
        return False
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        return bool(shards) and all((path / s).is_file() for s in shards)
    return any(path.glob(WEIGHTS))


def go_offline():
    """No Hugging Face call from here on, in this process and in any it starts.

    The environment variables are read when huggingface_hub is first imported; when it already
    was (a download just ran), its module constant is what transformers asks at each call.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import sys

    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


def download(model_id, directory, say):
    """The repository's files into `directory`, once; a missing token is no reason to wait."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )
    except ImportError as exc:  # pragma: no cover - huggingface_hub comes with Tunix
        raise ModelError(
            "huggingface_hub is missing (%s); install tunix's requirements" % exc
        ) from None
    token = os.environ.get("HF_TOKEN") or None
    say(
        "MODEL: downloading %s to %s (%s; once: later runs read the directory)"
        % (model_id, directory, "with HF_TOKEN" if token else "anonymously, HF_TOKEN is unset")
    )
    try:
        snapshot_download(
            repo_id=model_id, local_dir=directory, token=token, ignore_patterns=SKIP_ON_DOWNLOAD
        )
    except GatedRepoError:
        raise ModelError(
            "%s is gated: set HF_TOKEN to a token of an account that accepted its terms, or copy "
            "the weights to --local-model-dir" % model_id
        ) from None
    except RepositoryNotFoundError:
        raise ModelError(
            "%s is not on the Hugging Face Hub (or needs a token: set HF_TOKEN)" % model_id
        ) from None
    except LocalEntryNotFoundError as exc:
        raise ModelError(
            "could not download %s (%s): check the VM's network, or copy the weights to "
            "--local-model-dir" % (model_id, _first_line(exc))
        ) from None
    except Exception as exc:  # noqa: BLE001 - network errors come in many classes
        raise ModelError(
            "could not download %s (%s: %s): check the VM's network, or copy the weights to "
            "--local-model-dir" % (model_id, type(exc).__name__, _first_line(exc))
        ) from None
    if not has_weights(directory):
        raise ModelError(
            "%s downloaded to %s but it holds no config.json and safetensors weights"
            % (model_id, directory)
        )


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def resolve(model_id, local_dir, models_dir, say):
    """The directory to load: given and complete, else downloaded into (given or default)."""
    directory = local_dir or default_dir(models_dir, model_id)
    directory = str(Path(directory).expanduser())
    if has_weights(directory):
        return directory
    if "/" not in model_id:
        raise ModelError(
            "%s holds no model (config.json and *.safetensors) and %r is not a Hugging Face "
            "id to download" % (directory, model_id)
        )
    download(model_id, directory, say)
    return directory


# --- Qwen3 from its directory, with Tunix's own loader ---------------------------------------


def qwen3_config(directory):
    """Tunix's Qwen3 ModelConfig from the directory's own config.json.

    The directory is the truth about its weights: the GRPO demo maps Qwen3-4B-Instruct-2507 to
    Tunix's qwen3_4b preset, whose rope_theta (1e6) is not that model's (5e6).
    """
    from tunix.models.qwen3 import model as qwen3

    hf = json.loads((Path(directory) / "config.json").read_text())
    kind = hf.get("model_type", "")
    if kind not in ("qwen3", "qwen3_moe"):
        raise ModelError(
            "%s is a %r model; remote/grpo.py loads Qwen3 (model_type qwen3 or qwen3_moe)"
            % (directory, kind)
        )
    experts = hf.get("num_experts") if kind == "qwen3_moe" else None
    return qwen3.ModelConfig(
        num_layers=hf["num_hidden_layers"],
        vocab_size=hf["vocab_size"],
        embed_dim=hf["hidden_size"],
        hidden_dim=hf["moe_intermediate_size"] if experts else hf["intermediate_size"],
        num_heads=hf["num_attention_heads"],
        head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
        num_kv_heads=hf["num_key_value_heads"],
        rope_theta=int(hf.get("rope_theta", 1_000_000)),
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        use_tied_embedding=bool(hf.get("tie_word_embeddings", False)),
        num_experts=experts,
        num_experts_per_tok=hf.get("num_experts_per_tok") if experts else None,
    )


def load_qwen3(directory, mesh):
    """Actor and reference from the same files, as the demo builds them."""
    from tunix.models.qwen3 import params as qwen3_params

    config = qwen3_config(directory)
    actor = qwen3_params.create_model_from_safe_tensors(directory, config, mesh)
    reference = qwen3_params.create_model_from_safe_tensors(directory, config, mesh)
    return actor, reference


def load_tokenizer(directory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory, local_files_only=True)
