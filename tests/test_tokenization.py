import warnings

import pytest
from transformers import PreTrainedTokenizerFast

from agff_deploy.tokenization import CHAT_TEMPLATE, IMAGE_PAD, ChatFormatter, special_token_ids


@pytest.fixture(scope="module")
def formatter(tokenizer):
    return ChatFormatter(tokenizer, num_image_tokens=4, max_text_tokens=12)


def hf_ids(tokenizer, text, with_image, num_image_tokens):
    """What transformers produces from the same tokenizer with the chat template (image pads expanded)."""
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer)
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": text}]
    chat = fast.apply_chat_template(
        [{"role": "user", "content": content}], chat_template=CHAT_TEMPLATE, tokenize=False, add_generation_prompt=True
    )
    chat = chat.replace(IMAGE_PAD, IMAGE_PAD * num_image_tokens)
    return fast(chat, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("with_image", [False, True])
def test_ids_equal_transformers_chat_template_ids(tokenizer, formatter, with_image):
    for text in ["a red circle", "what colour is the star?"]:
        ids, _ = formatter.item_ids(text, 4 if with_image else None)
        assert ids == hf_ids(tokenizer, text, with_image, 4)


def test_batches_are_right_padded_with_a_mask(formatter):
    batch = formatter.encode(["a", "a beach scene with two stars"], with_image=False)
    lengths = batch.attention_mask.sum(1)
    assert lengths[0] < lengths[1] == batch.input_ids.shape[1]
    assert (batch.input_ids[0, lengths[0] :] == formatter.pad_id).all()


def test_long_text_is_truncated_with_a_warning(formatter):
    long = "a beach scene with two large green filled triangles pointing up at the right and more"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = formatter.encode(["short", long], with_image=False, names=["first", "caption.txt:2"])
    assert batch.truncated == [1]
    assert str(caught[0].message) == "caption.txt:2: longer than 12 tokens, truncated"


def test_image_items_carry_one_pad_per_image_token(tokenizer, formatter):
    ids, _ = formatter.item_ids("", image_tokens=7)
    assert ids.count(special_token_ids(tokenizer)["image_token_id"]) == 7


def test_a_batch_of_images_of_different_sizes_carries_each_images_pads(tokenizer, formatter):
    batch = formatter.encode(["", ""], with_image=True, image_tokens=[4, 9])
    assert (batch.input_ids == special_token_ids(tokenizer)["image_token_id"]).sum(1).tolist() == [4, 9]
