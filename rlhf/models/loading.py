"""Loading tokenizers, causal LMs (optionally with a LoRA adapter), reward models and value models.

Every loader takes a local Hugging Face-format directory (or a hub id where a hub is reachable)
and a dtype name from the config ('float32', 'bfloat16', 'float16'). Models come back on the CPU;
the worker or DeepSpeed moves them to the device.
"""

from __future__ import annotations

import torch

from rlhf.config import LoraConfig, RLHFConfig
from rlhf.data.templates import use_chat_template

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    """'bfloat16' -> torch.bfloat16 (also accepts a torch.dtype, returned as is)."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; valid: {', '.join(_DTYPES)}") from None


def device_for(cfg: RLHFConfig) -> torch.device:
    """CUDA when it is available and resources.device is not 'cpu'; else the CPU.

    resources.device='cuda' on a process that sees no GPU is an error rather than a silent
    fallback: a run sized for GPUs would crawl on the CPU.
    """
    wanted = cfg.resources.device
    if wanted == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if wanted == "cuda":
        raise RuntimeError("resources.device=cuda, but this process sees no CUDA device (check gpus_per_actor)")
    return torch.device("cpu")


def load_tokenizer(path: str, chat_template: str = "tokenizer"):
    """The tokenizer at ``path``, with a pad token (EOS, else UNK, when it has none), left padding
    and the chat template ``chat_template`` names (`rlhf.data.templates`; saved with it)."""
    from transformers import AutoTokenizer

    tokenizer = use_chat_template(AutoTokenizer.from_pretrained(path), chat_template)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    # Prompts are left-padded so that all responses start at the same column (rlhf.data.padding).
    tokenizer.padding_side = "left"
    return tokenizer


def load_causal_lm(path: str, dtype: str = "float32", lora: LoraConfig | None = None, gradient_checkpointing: bool = False):
    """A causal LM; with ``lora.enabled`` a peft model whose only trainable parameters are the adapter's."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype))
    model.config.use_cache = False  # training and scoring see whole sequences; the KV cache only costs memory
    if gradient_checkpointing:
        _enable_gradient_checkpointing(model)
    if lora is not None and lora.enabled:
        from peft import LoraConfig as PeftLoraConfig
        from peft import TaskType, get_peft_model

        peft_config = PeftLoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=lora.rank,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            bias="none",
        )
        model = get_peft_model(model, peft_config)
    return model


def load_reward_model(path: str, dtype: str = "float32", gradient_checkpointing: bool = False):
    """A sequence-classification model with one label (the score), its pad id set so batches can pool.

    ``path`` may also be a causal LM (e.g. an SFT policy, to train a reward model from): its
    backbone is reused and the score head is freshly initialised.
    """
    from transformers import AutoModelForSequenceClassification

    return _load_one_label_model(AutoModelForSequenceClassification, path, dtype, gradient_checkpointing)


def load_value_model(path: str, dtype: str = "float32", gradient_checkpointing: bool = False):
    """A token-classification model with one label: a value for every position.

    ``path`` may also be a reward model (sequence classification) directory: the critic then
    starts from the reward model's backbone. Transformers reuses every weight whose name
    matches; a head that does not match (e.g. Llama's token head has a bias, its sequence head
    none) is freshly initialised, which is reported by transformers as missing keys.
    """
    from transformers import AutoModelForTokenClassification

    return _load_one_label_model(AutoModelForTokenClassification, path, dtype, gradient_checkpointing)


def _load_one_label_model(auto_cls, path: str, dtype: str, gradient_checkpointing: bool):
    """A 1-label head model (reward or value) with its pad id set and the KV cache off (training)."""
    model = auto_cls.from_pretrained(path, num_labels=1, dtype=torch_dtype(dtype))
    _set_pad_id(model, path)
    model.config.use_cache = False
    if gradient_checkpointing:
        _enable_gradient_checkpointing(model)
    return model


def _set_pad_id(model, path: str) -> None:
    if model.config.pad_token_id is None:
        model.config.pad_token_id = load_tokenizer(path).pad_token_id


def plain_generation_config(model):
    """The model's generation config with only its special token ids, to put in place of the model's own.

    A checkpoint's sampling defaults (Llama-3: temperature 0.6, top-p 0.9; Qwen2: top-k 20,
    repetition penalty 1.05) are applied by ``generate`` to every setting the caller leaves out,
    and transformers 5 merges them even into a ``generation_config=`` argument; with this config
    as ``model.generation_config`` the caller's settings alone decide the distribution (and so
    the logprobs the trainer recomputes). Measured on the qwen2 tiny family: the hf rollout's
    logprobs were 0.14 off the trainer's with the checkpoint's config, 1e-6 with this one."""
    from transformers import GenerationConfig

    own = model.generation_config
    return GenerationConfig(bos_token_id=own.bos_token_id, eos_token_id=own.eos_token_id, pad_token_id=own.pad_token_id)


def _enable_gradient_checkpointing(model) -> None:
    # Non-reentrant checkpointing works with frozen inputs (LoRA) without enable_input_require_grads.
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
