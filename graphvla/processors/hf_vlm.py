"""backbone.hf_vlm's processor step: the model's own processor and chat template (the images of
all views, then the instruction, as the user turn) on a batch of images in [0, 1] and texts, and
the answers of co-training text tokenized (`answers`: [B, L] ids, -1 padded; a training target).

Every port it makes is batch first, so a batch can be cut into rows (the every-k caches run a
row alone) and rows stacked (the server batches clients): the processor's flat per-image tensors
(Qwen's pixel_values [B x patches, D], image_grid_thw [B x V, 3]) are reshaped to [B, ..., D] and
the block flattens them back (`flat`). Token rows are padded on the right. The processor's files
are the step's assets (save_pretrained), loaded back with processors/hf_processor.load_processor.
A `suffix` (backbone.hf_vlm's action placeholders: "Please predict the next N robot actions: ...")
is appended to every instruction, then a `template` (with.prompt_template, "... {instruction} ...")
wraps it, before the chat template; both are saved with the step's settings."""
from __future__ import annotations

import warnings

import torch

from .base import register_step
from .block import BlockStep
from .hf_processor import load_processor

IGNORE = -100  # label of tokens without loss (prompt, image, padding)
PAD = -1  # padding of answer rows


def user_text(instruction: str, suffix: str = "", template: str | None = None) -> str:
    """The user turn's text: the instruction and `suffix`, put in place of {instruction} in `template`."""
    text = instruction + suffix
    return template.replace("{instruction}", text) if template else text


def chat_prompts(processor, text, views: int) -> list[str]:
    """The chat-template prompt of each sample: V images then the instruction, as the user turn."""
    content = [{"type": "image"} for _ in range(views)]
    out = []
    for t in text:
        messages = [{"role": "user", "content": content + [{"type": "text", "text": t}]}]
        out.append(processor.tokenizer.apply_chat_template(
            messages, chat_template=processor.chat_template, add_generation_prompt=True, tokenize=False))
    return out


def encode_cpu(processor, images, text, answers=None, padding_side="right", tail=None) -> dict:
    """The processor's outputs (chat template, image tokens, pixel values) on CPU, with the answers
    appended (each followed by `tail`, see append_answers). Images in [0, 1], or uint8 (see
    pil_uint8: the processor then rescales them)."""
    pictures = [[img for img in row] for row in images]
    out = dict(processor(text=chat_prompts(processor, text, images.shape[1]), images=pictures, return_tensors="pt",
                         padding=True, padding_side=padding_side, do_rescale=images.dtype == torch.uint8))
    return append_answers(processor.tokenizer, out, answers, tail) if answers is not None else out


def pil_uint8(processor, images):
    """`images` (float, [0, 1]) as the uint8 values Qwen-VL's PIL image processor makes of them
    itself, where that is what it does: it resizes every image through PIL, converting a float
    image to uint8 first (float64 x * 255 to float32, truncated) and back (rescale by 1/255) after.
    Handing it those uint8 values with do_rescale gives the same pixel values without its per-image
    float checks and conversions (about 0.1 ms an image on one core). Anything else (another image
    processor, no resize, another rescale factor, or an image whose every value is 0 or 1, which
    transformers would treat as integers) is returned as it is."""
    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    except ImportError:  # another transformers: its own path
        return images
    ip = getattr(processor, "image_processor", None)
    if not (isinstance(ip, Qwen2VLImageProcessorPil) and ip.do_resize and ip.rescale_factor == 1 / 255):
        return images
    if ((images <= 1e-8) | (images == 1)).flatten(2).all(-1).any():  # np.allclose(image, image.astype(int))
        return images
    return (images.double() * 255).float().to(torch.uint8)


def text_answers(tokenizer, texts) -> list[list[int]]:
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def append_answers(tokenizer, enc, answers, tail=None):
    """`enc` (right-padded) with the answers (token-id lists) appended after each prompt, then
    `tail` (default: the end token), and `labels` on them only."""
    end = tokenizer.eos_token_id
    tail = ([end] if end is not None else []) if tail is None else list(tail)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    rows = []
    for i, answer in enumerate(answers):
        n = int(mask[i].sum())
        if bool(mask[i, n:].any()) or (n and not bool(mask[i, :n].all())):
            raise ValueError("the tokenizer must pad on the right to append answers")
        rows.append((ids[i, :n].tolist(), list(answer) + tail))
    length = max(len(p) + len(a) for p, a in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    new_ids = torch.full((len(rows), length), pad, dtype=ids.dtype)
    labels = torch.full((len(rows), length), IGNORE, dtype=torch.long)
    new_mask = torch.zeros((len(rows), length), dtype=mask.dtype)
    for i, (prompt, answer) in enumerate(rows):
        n, m = len(prompt), len(answer)
        new_ids[i, : n + m] = torch.tensor(prompt + answer, dtype=ids.dtype)
        labels[i, n : n + m] = torch.tensor(answer)
        new_mask[i, : n + m] = 1
    enc = dict(enc)
    enc["input_ids"], enc["attention_mask"], enc["labels"] = new_ids, new_mask, labels
    for key in ("mm_token_type_ids", "token_type_ids"):
        if key in enc:  # extra per-token columns: answers are text (0)
            old = enc[key]
            new = torch.zeros((len(rows), length), dtype=old.dtype)
            for i, (prompt, _) in enumerate(rows):
                new[i, : len(prompt)] = old[i, : len(prompt)]
            enc[key] = new
    return enc


def chat_answer_tail(processor) -> list[int]:
    """The token ids the chat template writes after an assistant turn's text when the whole
    conversation is rendered with its generation prompt (starVLA's QwenFast trains on exactly
    that: "<|im_end|>\\n<|im_start|>assistant\\n" for Qwen). Raises ValueError when the template
    does not render an assistant turn as the generation prompt followed by its text."""
    mark = "\u2063ANSWER\u2063"
    user = [{"role": "user", "content": [{"type": "text", "text": "u"}]}]
    turn = user + [{"role": "assistant", "content": [{"type": "text", "text": mark}]}]
    render = lambda messages: processor.tokenizer.apply_chat_template(  # noqa: E731
        messages, chat_template=processor.chat_template, add_generation_prompt=True, tokenize=False)
    prompt, whole = render(user), render(turn)
    if whole.count(mark) != 1 or not whole.startswith(prompt + mark):
        raise ValueError("the chat template does not render an assistant turn as its generation prompt followed by "
                         f"the answer (rendered {whole!r})")
    return processor.tokenizer(whole[len(prompt + mark):], add_special_tokens=False)["input_ids"]


def padded_rows(rows, pad: int = PAD) -> torch.Tensor:
    """Lists of ids -> [B, longest] int64, `pad` after each row."""
    out = torch.full((len(rows), max([len(r) for r in rows] + [1])), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def batch_first(enc: dict, batch: int, flat) -> dict:
    """The processor's tensors with the flat per-image ones (`flat`) reshaped to [B, ...]."""
    return {k: (v.reshape(batch, v.shape[0] // batch, *v.shape[1:]) if k in flat else v) for k, v in enc.items()}


@register_step
class VLMProcessor(BlockStep):
    """backbone.hf_vlm: `images` [B, V, C, H, W] in [0, 1] and `text` (B instructions) -> the
    processor's tensors (input_ids, attention_mask, pixel_values, ...: `makes`), and with
    `target_text` the answers' token ids `answers` [B, L] (-1 padded)."""

    kind = "hf_vlm_processor"
    optional = ("target_text",)

    def __init__(self, block, sources, makes, processor, flat=(), suffix="", template=None):
        super().__init__(block, sources, makes)
        self.processor, self.flat, self.suffix, self.template = processor, tuple(flat), suffix, template

    def _loaded(self):
        if self.processor is None:
            raise RuntimeError(f"block '{self.block}': its processor was not loaded (the graph was compiled on meta "
                               "without a tokenizer on disk, for its shapes only); compile it on a device with "
                               "with.model, with.processor or with.tiny to run or save this step")
        return self.processor

    def run(self, images, text, target_text=None):
        self._loaded()
        if len(text) != images.shape[0]:
            raise ValueError(f"{len(text)} instructions for a batch of {images.shape[0]} images")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = pil_uint8(self.processor, images.detach().float().cpu().clamp(0, 1))
            enc = encode_cpu(self.processor, pixels, [user_text(t, self.suffix, self.template) for t in text])
        out = batch_first(enc, images.shape[0], self.flat)
        if target_text is not None:
            out["answers"] = padded_rows(text_answers(self.processor.tokenizer, target_text))
        return out

    def settings(self):
        out = {"flat": list(self.flat), "class": type(self.processor).__name__}
        if self.suffix:
            out["suffix"] = self.suffix
        if self.template:
            out["template"] = self.template
        return out

    def save_assets(self, folder):
        processor = self._loaded()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            processor.save_pretrained(str(folder))

    @classmethod
    def from_settings(cls, config, folder, block, sources, makes):
        return cls(block, sources, makes, load_processor(folder), config.get("flat", ()), config.get("suffix", ""),
                   config.get("template"))
