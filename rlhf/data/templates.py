"""Named chat templates for models without one (``data.chat_template``), and using the chosen one.

``data.chat_template`` is ``tokenizer`` (the tokenizer's own template, the default), one of the
names below, or a path to a Jinja file. The chosen template replaces the tokenizer's, so the
rollout engines, the data path and every saved checkpoint's tokenizer use the same one.

=========  =========================================================================================
name       a conversation [system, user, assistant] renders as
=========  =========================================================================================
chatml     ``<|im_start|>system\\nS<|im_end|>\\n<|im_start|>user\\nU<|im_end|>\\n``
           ``<|im_start|>assistant\\nA<|im_end|>\\n`` (generation prompt ``<|im_start|>assistant\\n``)
llama2     ``<s>[INST] <<SYS>>\\nS\\n<</SYS>>\\n\\nU [/INST] A </s>`` (BOS and EOS are the
           tokenizer's, no BOS when it has none; no generation prompt: the prompt ends with ``[/INST]``)
zephyr     ``<|system|>\\nS</s>\\n<|user|>\\nU</s>\\n<|assistant|>\\nA</s>\\n`` (``</s>`` is the
           tokenizer's EOS; generation prompt ``<|assistant|>\\n``)
=========  =========================================================================================

These reproduce the templates of the Hugging Face checkpoints of those names (Qwen/OpenHermes
ChatML, Llama-2-chat, Zephyr-beta). On a tokenizer without ``<|im_end|>`` as a token ChatML's
end of turn is plain text, so the response ends with the tokenizer's EOS after it.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "llama2": (
        "{% set bos = bos_token if bos_token is defined else '' %}"  # a tokenizer without BOS (Qwen) has none
        "{% if messages[0]['role'] == 'system' %}"
        "{% set system = '<<SYS>>\n' + messages[0]['content'] + '\n<</SYS>>\n\n' %}{% set turns = messages[1:] %}"
        "{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
        "{% for message in turns %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('llama2 template: turns must alternate user/assistant/user/...') }}{% endif %}"
        "{% if message['role'] == 'user' %}"
        "{{ bos + '[INST] ' + (system if loop.first else '') + message['content'] | trim + ' [/INST]' }}"
        "{% else %}{{ ' ' + message['content'] | trim + ' ' + eos_token }}{% endif %}"
        "{% endfor %}"
    ),
    "zephyr": (
        "{% for message in messages %}"
        "{% if message['role'] not in ('system', 'user', 'assistant') %}"
        "{{ raise_exception('zephyr template: unknown role ' + message['role']) }}{% endif %}"
        "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    ),
}
TOKENIZER = "tokenizer"


def chat_template_source(choice: str) -> str | None:
    """The Jinja text ``choice`` names (None for ``tokenizer``: keep the tokenizer's own)."""
    if choice == TOKENIZER:
        return None
    if choice in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[choice]
    path = Path(choice)
    if not path.is_file():
        raise ValueError(f"data.chat_template: {choice!r} is neither {TOKENIZER!r}, a named template "
                         f"({', '.join(CHAT_TEMPLATES)}) nor an existing Jinja file")
    return path.read_text(encoding="utf-8")


def use_chat_template(tokenizer, choice: str):
    """Give ``tokenizer`` the template ``choice`` names (in place; returned for chaining)."""
    source = chat_template_source(choice)
    if source is not None:
        tokenizer.chat_template = source
    return tokenizer
