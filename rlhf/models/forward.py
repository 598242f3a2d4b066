"""Forward passes over PPO-style batches: per-response-token logprobs, values and sequence scores;
and over full right-padded sequences (SFT, DPO, reward-model training): next-token logits and
summed response logprobs.

A batch holds `input_ids` and `attention_mask` of shape [B, P+R]: the prompt left-padded to P
tokens, then the response right-padded to R tokens. Outputs are aligned with the R response
positions. Position ids count real tokens only, so a left-padded prompt gets the same positions
as the unpadded sequence that the rollout engine saw (otherwise logprobs would drift from vLLM's).
"""

from __future__ import annotations

import torch

from rlhf.algorithms.logprobs import entropy_from_logits, logprobs_from_logits, sequence_logprobs


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """position_t = (number of real tokens before t), 0 on padding."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _response_slice(tensor: torch.Tensor, response_len: int) -> torch.Tensor:
    """Outputs at positions P-1 .. P+R-2 predict (or value) the response tokens P .. P+R-1."""
    return tensor[:, -response_len - 1 : -1]


def response_logprobs(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int,
    temperature: float = 1.0, with_entropy: bool = False,
):
    """log pi(y_t | x, y_<t) / temperature-scaled, for each response token; optionally the entropy too."""
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask)
    ).logits
    logits = _response_slice(logits, response_len).float()
    logps = logprobs_from_logits(logits, input_ids[:, -response_len:], temperature)
    if with_entropy:
        return logps, entropy_from_logits(logits, temperature)
    return logps


def response_values(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int) -> torch.Tensor:
    """V(s_t) for the state before each response token, from a 1-label token-classification head."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask))
    return _response_slice(out.logits[..., 0], response_len).float()


def last_real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B] index of each row's last real token (the rightmost 1 of the mask): left or right padding alike."""
    return attention_mask.shape[1] - 1 - attention_mask.flip(-1).long().argmax(-1)


def sequence_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The reward model's scalar at each row's last real token by the attention mask: [B], float32.

    The last real token is the EOS when the response ended. Transformers' own pooling in
    ``*ForSequenceClassification`` picks the last token that is not ``config.pad_token_id``, which
    is wrong whenever pad = EOS (tokenizers without a pad token: Llama-3, Mistral; the EOS is then
    skipped) or the batch was padded with another id. So the per-token output of the head module
    (``score``) is taken from the ordinary forward (through whatever wraps the model: DeepSpeed,
    peft) and read at the index the mask gives; the score therefore does not depend on padding
    side, pad id or the other rows of the batch. A token-classification model (a head output per
    token) is read the same way.
    """
    head = _score_head(model)
    per_token = []
    hook = head.register_forward_hook(lambda _module, _inputs, output: per_token.append(output))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask))
    finally:
        hook.remove()
    last = last_real_index(attention_mask).to(per_token[0].device)
    return per_token[0][torch.arange(input_ids.shape[0], device=last.device), last, 0].float()


def _score_head(model) -> torch.nn.Module:
    """The outermost module named ``score`` (the 1-label head of transformers' decoder classifiers)."""
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "score":
            return module
    raise ValueError(f"{type(model).__name__} has no 'score' head module: not a transformers decoder classifier")


# -- full sequences (SFT, DPO, reward-model training): right-padded [B, T], loss_mask on response tokens --


def next_token_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Logits [B, T-1, V] at positions 0 .. T-2, predicting ``input_ids[:, 1:]`` (the labels)."""
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask)
    ).logits
    return logits[:, :-1]


def masked_sequence_logprobs(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor
) -> torch.Tensor:
    """log p(response) = sum over the masked tokens of log pi(x_t | x_<t): [B], float32.

    ``loss_mask`` [B, T] is aligned with ``input_ids`` (1 on response tokens, see `rlhf.data.collate`).
    """
    logits = next_token_logits(model, input_ids, attention_mask)
    token_logps = logprobs_from_logits(logits, input_ids[:, 1:])
    return sequence_logprobs(token_logps, loss_mask[:, 1:])
