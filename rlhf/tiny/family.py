"""What a tiny model family is: a tokenizer recipe, an architecture, a model config and a generation config.

Every family shares one backbone shape (`MODEL_SHAPE`: 2 layers, hidden 128, head dimension 64,
which vLLM's CPU attention accepts) so that all of them build in seconds and run on the CPU;
they differ where real checkpoints differ: tokenizer, special tokens, chat template,
architecture details (q/k/v bias, sliding window) and tied embeddings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

MODEL_SHAPE = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,  # head_dim 64: vLLM's CPU attention rejects 16
    max_position_embeddings=256,
)


@dataclass(frozen=True)
class Family:
    """One tiny model family.

    ``build_tokenizer(out_dir)`` returns the tokenizer (saved to ``out_dir`` when given);
    ``architecture`` is the transformers class prefix (``"Llama"`` -> ``LlamaForCausalLM``,
    ``LlamaForSequenceClassification``, ``LlamaForTokenClassification``);
    ``model_config(tokenizer, **overrides)`` the config shared by policy, reward and critic;
    ``generation_config(tokenizer)`` the policy's ``GenerationConfig`` keyword arguments.
    """

    name: str
    build_tokenizer: Callable[[str | os.PathLike | None], object]
    architecture: str
    model_config: Callable[..., object]
    generation_config: Callable[[object], dict]

    def model_class(self, head: str):
        """The transformers class for ``head`` in ("ForCausalLM", "ForSequenceClassification", "ForTokenClassification")."""
        import transformers

        return getattr(transformers, self.architecture + head)
