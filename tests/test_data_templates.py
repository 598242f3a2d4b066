"""Named chat templates (data.chat_template): their text, exact tokens and one stop token per
response on a SentencePiece-style and a character tokenizer, and the template saved with a checkpoint."""

import pytest
from spm_tokenizer import sentencepiece_tokenizer

from rlhf.config import DataConfig
from rlhf.data.examples import SFTExample
from rlhf.data.stop_tokens import end_of_turn_id, stop_token_ids
from rlhf.data.templates import CHAT_TEMPLATES, chat_template_source, use_chat_template
from rlhf.data.tokenize import tokenize_sft

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 3+4?"}]
ANSWER = {"role": "assistant", "content": "Sure! It is 7."}

RENDERED = {  # CHAT + ANSWER, with BOS <s> and EOS </s>
    "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 3+4?<|im_end|>\n"
              "<|im_start|>assistant\nSure! It is 7.<|im_end|>\n",
    "llama2": "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhat is 3+4? [/INST] Sure! It is 7. </s>",
    "zephyr": "<|system|>\nBe brief.</s>\n<|user|>\nWhat is 3+4?</s>\n<|assistant|>\nSure! It is 7.</s>\n",
}
GENERATION_PROMPT_END = {"chatml": "<|im_start|>assistant\n", "llama2": "[/INST]", "zephyr": "<|assistant|>\n"}


@pytest.mark.parametrize("name", list(CHAT_TEMPLATES))
def test_named_templates_render_as_their_checkpoints_do(name):
    tokenizer = use_chat_template(sentencepiece_tokenizer(), name)
    assert tokenizer.apply_chat_template(CHAT + [ANSWER], tokenize=False) == RENDERED[name]
    assert tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True).endswith(GENERATION_PROMPT_END[name])


def end_of_turn_text(tokenizer, name):
    """The rendered conversation up to and including the end of the answer's turn."""
    rendered = tokenizer.apply_chat_template(CHAT + [ANSWER], tokenize=False)
    eot = tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer))
    return rendered[: rendered.index(eot, rendered.index(ANSWER["content"])) + len(eot)]


@pytest.mark.parametrize("name", list(CHAT_TEMPLATES))
@pytest.mark.parametrize("tokenizer_kind", ["sentencepiece", "char"])
def test_named_templates_give_exact_tokens_and_one_stop_token(name, tokenizer_kind):
    from rlhf.tiny import build_tokenizer

    tokenizer = sentencepiece_tokenizer() if tokenizer_kind == "sentencepiece" else build_tokenizer()
    use_chat_template(tokenizer, name)
    out = tokenize_sft(SFTExample(CHAT, ANSWER["content"]), tokenizer, DataConfig())
    decoded = tokenizer.decode(out.input_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    stops = stop_token_ids(tokenizer)
    # ChatML's <|im_end|> is no token of these tokenizers: the turn ends with the EOS after it.
    eot = tokenizer.eos_token_id if name == "chatml" else end_of_turn_id(tokenizer)
    assert [t for t in out.response_ids if t in stops] == [eot] == out.response_ids[-1:]
    expected = RENDERED["chatml"] + "</s>" if name == "chatml" else end_of_turn_text(tokenizer, name)
    # the text as the tokenizer renders it ('|' is <unk> to the char tokenizer), exactly the text for the other
    assert decoded == tokenizer.decode(tokenizer(expected, add_special_tokens=False)["input_ids"], skip_special_tokens=False)
    if tokenizer_kind == "sentencepiece":
        assert decoded == expected


def test_template_from_a_jinja_file(tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text(CHAT_TEMPLATES["zephyr"])
    assert chat_template_source(str(path)) == CHAT_TEMPLATES["zephyr"]
    assert chat_template_source("tokenizer") is None
    with pytest.raises(ValueError, match="neither 'tokenizer', a named template"):
        chat_template_source(str(tmp_path / "missing.jinja"))


def test_the_template_is_saved_with_the_checkpoint_tokenizer(tmp_path, tiny_assets):
    from transformers import AutoTokenizer

    from rlhf.models.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_assets["policy"], "zephyr")
    tokenizer.save_pretrained(str(tmp_path))
    saved = AutoTokenizer.from_pretrained(str(tmp_path))
    assert saved.chat_template == CHAT_TEMPLATES["zephyr"]
    out = tokenize_sft(SFTExample(CHAT, ANSWER["content"]), tokenizer, DataConfig(chat_template="zephyr"))
    assert saved.apply_chat_template(CHAT + [ANSWER])["input_ids"][: len(out.input_ids)] == out.input_ids


@pytest.mark.slow
def test_base_model_sft_with_chatml_saves_a_tokenizer_that_reproduces_the_training_text(ray_session, tiny_assets_dir, tmp_path):
    from pathlib import Path

    from transformers import AutoTokenizer

    from rlhf.models.loading import load_tokenizer
    from rlhf.run import resolve_config, run

    root = Path(tiny_assets_dir)
    overrides = [f"tiny_assets={root}", f"model.policy={root / 'policy'}", f"data.train={root / 'data' / 'sft_train.jsonl'}",
                 "data.eval=null", "data.chat_template=chatml", "data.max_prompt_len=64", "data.max_response_len=16",
                 "trainer.max_steps=2", "checkpoint.interval=0", f"logging.output_dir={tmp_path}",
                 "logging.wandb.mode=disabled", "logging.progress_bar=false"]
    run(resolve_config(str(Path(__file__).resolve().parents[1] / "configs" / "tiny" / "sft.yaml"), overrides))
    saved = AutoTokenizer.from_pretrained(str(tmp_path / "policy"))
    assert saved.chat_template == CHAT_TEMPLATES["chatml"]
    example = SFTExample(CHAT, ANSWER["content"])
    trained = tokenize_sft(example, load_tokenizer(str(root / "policy"), "chatml"), DataConfig())
    assert tokenize_sft(example, saved, DataConfig()).input_ids == trained.input_ids
