"""Tiny Hugging Face vision-language models built offline: Qwen3-VL, Qwen2.5-VL and SmolVLM
(Idefics3) from small configs, with a byte-level BPE tokenizer trained locally on a few
sentences, the model family's image processor and a chat template. Nothing is downloaded.

`build_tiny(family)` returns (model, processor) in memory; `save_tiny(family, dir)` writes them
with `save_pretrained` so `from_pretrained(dir)` (and `backbone.hf_vlm with: {model: dir}`) loads
them back like a real checkpoint.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ...processors.hf_processor import image_text_processor

FAMILIES = ("qwen3_vl", "qwen2_5_vl", "smolvlm")

# Sentences the tokenizer is trained on: robot instructions and chat-template words, so the
# merges are realistic; any other text still encodes (byte-level alphabet, no unknown token).
CORPUS = [
    "pick up the red cube and place it in the bowl",
    "open the top drawer", "close the drawer", "push the green button down",
    "put the bowl on the plate then close it", "reach the goal", "press the button",
    "turn the faucet left", "slide the puck to the goal", "what is in the image?",
    "the robot arm moves the block to the left of the plate",
    "user assistant system", "User: Assistant:",
]

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
SMOL_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>",
                 "<global-img>", "<video>"]

# Chat templates in each family's own format: the instruction is the user turn, images come first.
QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SMOL_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>"
    "{% elif item['type'] == 'text' %} {{ item['text'] }}{% endif %}{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

TEXT_WIDTH = 64


def make_tokenizer(specials, vocab_size: int = 400):
    """A byte-level BPE tokenizer trained on CORPUS, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=specials[2], pad_token=specials[0],
                                   bos_token=None, unk_token=None, padding_side="right")


def _image_processor_class(name: str):
    """The PIL image processor (transformers 5 without torchvision), else the plain class."""
    import transformers

    return getattr(transformers, name + "Pil", None) or getattr(transformers, name)


def _token_ids(tokenizer) -> dict:
    """bos/eos/pad ids of the text model: the tokenizer's, not the full-size model's defaults."""
    return {"bos_token_id": None, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}


def _qwen3_vl(tokenizer):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor

    Qwen2VLImageProcessorPil = _image_processor_class("Qwen2VLImageProcessor")

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    config = Qwen3VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                                          "mrope_interleaved": True}, **_token_ids(tokenizer)),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16, spatial_merge_size=2,
                           temporal_patch_size=2, out_hidden_size=TEXT_WIDTH, num_position_embeddings=64,
                           deepstack_visual_indexes=[0]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    # Small images stay small: at least 4 merged tokens, at most 64, per image.
    image_processor = Qwen2VLImageProcessorPil(patch_size=16, temporal_patch_size=2, merge_size=2,
                                               size={"shortest_edge": 32 * 32 * 4, "longest_edge": 32 * 32 * 64})
    processor = image_text_processor(Qwen3VLProcessor, image_processor, tokenizer, chat_template=QWEN_TEMPLATE)
    return Qwen3VLForConditionalGeneration(config), processor


def _qwen2_5_vl(tokenizer):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    Qwen2VLImageProcessorPil = _image_processor_class("Qwen2VLImageProcessor")

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                         **_token_ids(tokenizer)),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, out_hidden_size=TEXT_WIDTH, window_size=56, fullatt_block_indexes=[1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    image_processor = Qwen2VLImageProcessorPil(patch_size=14, temporal_patch_size=2, merge_size=2,
                                               min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64)
    processor = image_text_processor(Qwen2_5_VLProcessor, image_processor, tokenizer, chat_template=QWEN_TEMPLATE)
    return Qwen2_5_VLForConditionalGeneration(config), processor


def _smolvlm(tokenizer):
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMProcessor

    SmolVLMImageProcessorPil = _image_processor_class("SmolVLMImageProcessor")

    image_size, patch, scale = 64, 16, 2
    config = SmolVLMConfig(
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, **_token_ids(tokenizer)),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=patch),
        scale_factor=scale, image_token_id=tokenizer.convert_tokens_to_ids("<image>"), tie_word_embeddings=True,
    )
    image_processor = SmolVLMImageProcessorPil(do_image_splitting=False, size={"longest_edge": image_size},
                                               max_image_size={"longest_edge": image_size})
    seq_len = (image_size // patch) ** 2 // scale**2
    processor = image_text_processor(SmolVLMProcessor, image_processor, tokenizer, chat_template=SMOL_TEMPLATE,
                                     image_seq_len=seq_len)
    return SmolVLMForConditionalGeneration(config), processor


BUILDERS = {"qwen3_vl": (_qwen3_vl, QWEN_SPECIALS), "qwen2_5_vl": (_qwen2_5_vl, QWEN_SPECIALS),
            "smolvlm": (_smolvlm, SMOL_SPECIALS)}


def build_tiny(family: str, seed: int = 0):
    """(model, processor) of a tiny model of `family` (one of FAMILIES), built in memory."""
    if family not in BUILDERS:
        raise ValueError(f"unknown tiny model family '{family}' (known: {', '.join(FAMILIES)})")
    builder, specials = BUILDERS[family]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = make_tokenizer(specials)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, processor = builder(tokenizer)
    return model.eval(), processor


def save_tiny(family: str, directory, seed: int = 0) -> Path:
    """Build a tiny model and write it (weights, config, processor, tokenizer) to `directory`."""
    directory = Path(directory)
    model, processor = build_tiny(family, seed)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
