"""A SentencePiece-style test tokenizer (Metaspace) whose vocabulary merges across the prompt/response seam."""

INST_TEMPLATE = (  # Mistral-v0.1-style: [INST] and [/INST] are plain text there, not special tokens
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}"
)


def sentencepiece_tokenizer(append_eos: bool = False):
    """A SentencePiece-style (Metaspace, '▁' prepended at the start) BPE trained so that the
    prompt's last piece and the answer merge: '[/INST]Sure!' is one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    alphabet = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!?.,+=[]/:'<>|_\n▁")
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=alphabet,
                                  show_progress=False)
    backend.train_from_iterator(["[INST] What is 3+4? [/INST]Sure! It is 7.", "[INST] Hi [/INST]Sure!"] * 50, trainer)
    bos, eos = backend.token_to_id("<s>"), backend.token_to_id("</s>")
    single = "<s> $A </s>" if append_eos else "<s> $A"
    backend.post_processor = processors.TemplateProcessing(single=single, special_tokens=[("<s>", bos), ("</s>", eos)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   clean_up_tokenization_spaces=False, chat_template=INST_TEMPLATE)
