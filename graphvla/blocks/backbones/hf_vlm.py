"""`backbone.hf_vlm`: any Hugging Face image-text-to-text model (Qwen3-VL, Qwen2.5-VL, SmolVLM /
Idefics3, ...) through transformers' Auto classes, with the model's own processor and chat template.

The instruction is the user turn, preceded by the image(s) of all views. Outputs follow the
backbone contract: `hidden` (last layer), `layers` (the decoder layers chosen by `with.layers`),
`mask` and, when `target_text` is wired, `lm_loss` on the answer tokens only (co-training).

With `with.action_vocab: N` the LM also speaks actions (pi0-FAST, starVLA's Qwen-FAST): N action
tokens are appended to its vocabulary (the embeddings are resized; id = old vocabulary size + i),
`target_tokens` (FAST ids from `fast.encode`) become the answer that `lm_loss` is taken on, and
at inference `generated` holds the action tokens the LM decodes greedily after the prompt, with
every other token masked out except the end of turn (for `fast.decode`). starVLA's QwenFast
(graphs/starvla/qwen3vl-fast.yaml) sets three more: `with.action_token_base` (the tokenizer's id of
action token 0, <robot_action_0> of starVLA's "-Action" checkpoints: 151669 on Qwen3-VL, 151665 on
Qwen2.5-VL; when the embeddings end before base + N they grow by N, as starVLA's tool grows them), `with.answer_end:
chat_template` (after the action tokens come, with loss, the tokens the chat template writes after
an assistant turn followed by its generation prompt, as starVLA renders the whole conversation with
add_generation_prompt) and `with.decode: free` (greedy decoding over the whole vocabulary until one
of the generation config's end tokens; `generated` keeps the action tokens in order and drops the
others, as starVLA's predict_action extracts them).

With `with.action_placeholders: N` (starVLA's QwenOFT) every instruction ends with
" Please predict the next N robot actions: <action>PP...P<action>." (P = `with.placeholder`, N
times, no spaces), written by the processor step, and `action_hidden` [B, N, D] holds the last
layer's hidden states at the last N positions of P's token (its first token id if the tokenizer
splits it), in sequence order: one query per action step for a head such as head.mlp_resnet.
`with.prompt_template` ("Your task is {instruction}. ...", starVLA's datasets.vla_data.CoT_prompt)
puts the instruction (with that suffix) in place of {instruction}.
The processor and chat template run in the block's processor step (processors/hf_vlm.py
VLMProcessor) in the preprocess pipeline: the compiled graphs take its tensors (NODE_input_ids,
NODE_attention_mask, NODE_pixel_values, ...; NODE_answers for co-training text) in place of the
images and the instruction, and forward/predict run the model on them; action-token answers are
appended in forward (from target_tokens), generation re-pads the prompts on the left.
On the meta device (compile) no weight is read: the model is built from its config and
`meta_forward` returns meta tensors whose token count comes from the real processor (or, when
no tokenizer is on disk, from the image processor's resize rule).
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch

from ... import hub
from ...processors.block import bind
from ...processors.hf_vlm import (  # noqa: F401 - chat_prompts: its home moved
    VLMProcessor, append_answers, chat_answer_tail, chat_prompts, encode_cpu, text_answers, user_text)
from ..base import Block, InPort, OutPort, ParamError, PortError, StepPorts, parameters_are_placeholders
from ..registry import register
from . import hf_config
from ...processors.hf_processor import load_processor

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
VISION_TOWERS = ("visual", "vision_tower", "vision_model")
TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")  # per-token columns
STEP_READS = ("images", "text", "target_text")
PLACEHOLDER = "\U0001F50D"  # starVLA QwenOFT's action placeholder (a magnifying-glass emoji)


def placeholder_suffix(count: int, placeholder: str) -> str:
    """What starVLA's QwenOFT appends to each instruction (placeholders side by side: a space
    between them would tokenize differently)."""
    return f" Please predict the next {count} robot actions: <action>{placeholder * count}<action>."


@register
class HFVLM(Block):
    type_name = "backbone.hf_vlm"
    description = "Hugging Face VLM (Qwen3-VL, Qwen2.5-VL, SmolVLM, ...): images + instruction -> hidden states of its layers."
    in_ports = {
        "images": InPort("image", ndim=5, doc="images [B, V, C, H, W] in [0, 1]"),
        "text": InPort("text", doc="instruction, the user turn"),
        "target_text": InPort("text", optional=True, target=True, doc="answers: the LM loss is taken on them"),
    }
    out_ports = {
        "hidden": OutPort("hidden", doc="last layer [B, T, D]"),
        "layers": OutPort("layers", doc="selected layers [B, L, T, D]"),
        "mask": OutPort("mask", doc="[B, T] True on real tokens"),
        "lm_loss": OutPort("loss", train_only=True, doc="next-token loss on the answer tokens"),
        "logits": OutPort("hidden", train_only=True, doc="[B, T, vocab] with target_text (for aux.lm_loss)"),
        "labels": OutPort("tokens", train_only=True, doc="[B, T] answer token ids, -100 elsewhere"),
    }
    params_schema = {
        "type": "object",
        "properties": {
            "model": {"type": "string", "description": "folder of a checkpoint (from_pretrained), relative to the spec's folder, "
                                                        "or a Hugging Face Hub id org/name[@revision] (read through the Hub cache)"},
            "config": {"oneOf": [{"type": "string"}, {"type": "object"}],
                       "description": "a config dict (with model_type) or the name of a bundled config "
                                      "(qwen3_vl_4b, qwen2_5_vl_3b); used for compile when with.model has no weights on disk"},
            "tiny": {"enum": ["qwen3_vl", "qwen2_5_vl", "smolvlm"], "description": "a tiny model built offline (tests, CPU)"},
            "processor": {"type": "string", "description": "folder (or Hub id org/name[@revision]) of the processor/tokenizer "
                                                            "when it is not with.model"},
            "layers": {"type": "array", "items": {"type": "integer"}, "minItems": 1,
                       "description": "decoder layers exposed on `layers` (0 = first, -1 = last); default all"},
            "dtype": {"enum": list(DTYPES), "default": "float32", "description": "dtype of the model's weights"},
            "output_dtype": {"enum": list(DTYPES), "default": "float32", "description": "dtype of hidden/layers for the heads"},
            "attn_implementation": {"type": "string", "description": "e.g. sdpa, eager, flash_attention_2 (passed only if set)"},
            "gradient_checkpointing": {"type": "boolean", "default": False},
            "freeze_vision": {"type": "boolean", "default": False, "description": "freeze the vision tower only"},
            "seed": {"type": "integer", "default": 0, "description": "weight init seed of with.tiny / with.config models"},
            "action_vocab": {"type": "integer", "minimum": 1,
                             "description": "add this many action tokens to the LM's vocabulary: enables the "
                                            "target_tokens input and the generated output (FAST through the VLM)"},
            "action_token_base": {"type": "integer", "minimum": 0,
                                  "description": "token id of action token 0 (default: right after the embedding rows); "
                                                 "starVLA's -Action checkpoints: 151669 (Qwen3-VL), 151665 (Qwen2.5-VL)"},
            "answer_end": {"enum": ["eos", "chat_template"], "default": "eos",
                           "description": "what follows the action tokens in training, with loss: the end token, or "
                                          "what the chat template writes after an assistant turn plus its generation "
                                          "prompt (starVLA's QwenFast)"},
            "decode": {"enum": ["constrained", "free"], "default": "constrained",
                       "description": "constrained: only action tokens and the end token can be generated; free: "
                                      "any token, until an end token of the generation config, action tokens kept "
                                      "in order (starVLA's QwenFast)"},
            "max_new_tokens": {"type": "integer", "minimum": 1, "default": 256,
                               "description": "longest generated action-token sequence, the end token included"},
            "action_placeholders": {"type": "integer", "minimum": 1,
                                    "description": "append N action placeholder tokens to the prompt and expose their "
                                                   "last-layer hidden states on action_hidden [B, N, D] (starVLA QwenOFT)"},
            "placeholder": {"type": "string", "minLength": 1, "default": PLACEHOLDER,
                            "description": "the placeholder text with.action_placeholders repeats (starVLA's is U+1F50D)"},
            "prompt_template": {"type": "string", "description": "the user turn's text, with {instruction} where the "
                                                                 "instruction goes (starVLA's CoT_prompt)"},
        },
        "additionalProperties": False,
    }

    ACTION_IN = {"target_tokens": InPort("tokens", optional=True, target=True, ndim=2,
                                         doc="[B, L] action-token ids in [0, action_vocab), -1 = padding: the answer")}
    ACTION_OUT = {"generated": OutPort("tokens", infer_only=True,
                                       doc="[B, max_new_tokens] generated action-token ids, -1 after the end")}

    PLACEHOLDER_OUT = {"action_hidden": OutPort("hidden", doc="[B, N, D] last-layer hidden states at the N action placeholders")}

    @classmethod
    def ports_for(cls, params):
        if params.get("action_placeholders") is not None:
            return cls.in_ports, {**cls.out_ports, **cls.PLACEHOLDER_OUT}
        if params.get("action_vocab") is None:
            return cls.in_ports, cls.out_ports
        return {**cls.in_ports, **cls.ACTION_IN}, {**cls.out_ports, **cls.ACTION_OUT}

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        self.expect_ndim("images", 5)
        if "target_text" in inputs and "target_tokens" in inputs:
            raise PortError("target_tokens", "wire target_text (language answers) or target_tokens (actions) on one node, "
                                             "not both; co-train with a second node that shares this one")
        p = self.params
        if sum(k in p for k in ("model", "tiny")) + (("config" in p) and "model" not in p) != 1:
            raise ParamError("model", "give exactly one of with.model (a checkpoint folder, optionally with a config for "
                                      "compile), with.config or with.tiny")
        if "action_vocab" in p and "action_placeholders" in p:
            raise ParamError("action_placeholders", "with.action_vocab (actions as generated tokens) and "
                                                    "with.action_placeholders (actions read at placeholder tokens) "
                                                    "are two ways to get actions: give one")
        self.model_dir = self._model_dir(ctx) if "model" in p else None
        self.processor_dir = ctx.resolve_path(p["processor"], "processor") if "processor" in p else None
        self.model, self.processor, self.settings = self._load(ctx)
        self.config = self.model.config
        text_config = self.config.get_text_config() if hasattr(self.config, "get_text_config") else self.config
        self.width = text_config.hidden_size
        self.num_layers = text_config.num_hidden_layers
        self.layer_ids = self._layer_ids(p.get("layers"))
        self.encoding_keys, self.flat_keys = self._encoding_layout()
        for key in ("action_token_base", "answer_end", "decode"):
            if key in p and "action_vocab" not in p and p[key] != self.params_schema["properties"][key].get("default"):
                raise ParamError(key, "applies to action tokens: set with.action_vocab too")
        self.action_base = self._add_action_tokens(p.get("action_vocab"), ctx.meta or parameters_are_placeholders())
        self.answer_tail = None  # what append_answers puts after each answer (None: the end token)
        if p["answer_end"] == "chat_template" and self.processor is not None:
            try:
                self.answer_tail = chat_answer_tail(self.processor)
            except ValueError as e:
                raise ParamError("answer_end", str(e)) from None
        self.placeholders = p.get("action_placeholders")
        self.suffix = placeholder_suffix(self.placeholders, p["placeholder"]) if self.placeholders else ""
        self.placeholder_id = self._placeholder_id()
        self.template = p.get("prompt_template")
        if self.template is not None and "{instruction}" not in self.template:
            raise ParamError("prompt_template", f"{self.template!r} has no {{instruction}}: the instruction would be lost")
        if p["freeze_vision"]:
            vision_tower(self.model).requires_grad_(False)
        if p["gradient_checkpointing"] and not ctx.meta:
            self.model.gradient_checkpointing_enable()
            self.model.config.use_cache = False

    # loading -------------------------------------------------------------------------------
    def _model_dir(self, ctx) -> Path:
        """with.model as a folder: a path, or a Hub id through the Hub cache (graphvla/hub.py). On
        meta with a with.config, a Hub id is read from the cache only (never downloaded): when the
        cache lacks it, the graph compiles from the config."""
        value = self.params["model"]
        if ctx.meta and "config" in self.params and hub.is_hub_value(value, ctx.spec_dir):
            return hub.cached_snapshot(value) or ctx.spec_dir / value
        try:
            return ctx.resolve_path(value, "model")
        except ParamError as e:
            if "config" not in self.params:
                raise
            raise ParamError("model", f"{e}; a config alone can compile the graph but not train it") from None

    def _load(self, ctx):
        p = self.params
        dtype = DTYPES[p["dtype"]]
        has_weights = self.model_dir is not None and (self.model_dir / "config.json").exists()
        if "tiny" in p:
            from .tiny_hf import build_tiny

            model, processor = build_tiny(p["tiny"], seed=p["seed"])
            return model.to(dtype), processor, {}
        if self.model_dir is not None and not has_weights and ("config" not in p or not ctx.meta):
            raise ParamError("model", f"no checkpoint at {self.model_dir} (config.json missing)"
                             + ("" if ctx.meta else "; a config alone can compile the graph but not train it"))
        if has_weights and not ctx.meta and not parameters_are_placeholders():
            return self._from_pretrained(dtype)
        # meta (compile), a checkpoint's weights to come (load_policy) or an explicit config: build
        # from the config, never read weights
        source = self.model_dir if has_weights else _config_source(p["config"])
        try:
            config = hf_config.make_config(source)
        except (ValueError, OSError) as e:
            raise ParamError("config", str(e)) from None
        from transformers import AutoModelForImageTextToText

        kwargs = {"attn_implementation": p["attn_implementation"]} if "attn_implementation" in p else {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(p["seed"])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = AutoModelForImageTextToText.from_config(config, dtype=dtype, **kwargs)
        processor, settings = self._processor_for(source, has_weights, ctx)
        return model, processor, settings

    def _from_pretrained(self, dtype):
        from transformers import AutoModelForImageTextToText

        kwargs = {"attn_implementation": self.params["attn_implementation"]} if "attn_implementation" in self.params else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForImageTextToText.from_pretrained(self.model_dir, dtype=dtype, **kwargs)
        processor = load_processor(self.processor_dir or self.model_dir)
        return model, processor, {}

    def _processor_for(self, source, has_weights, ctx):
        """The processor when its files exist; else only the image settings (meta shapes)."""
        folder = self.processor_dir or (self.model_dir if has_weights else None)
        if folder is not None and (folder / "tokenizer_config.json").exists():
            return load_processor(folder), {}
        if not ctx.meta:
            raise ParamError("processor", "building from with.config needs a tokenizer: set with.processor to a folder "
                                          "with one, or use with.model / with.tiny")
        if isinstance(source, str):
            source = hf_config.bundled_dir(source)
        return None, hf_config.image_processor_settings(source) if isinstance(source, Path) else {}

    def _add_action_tokens(self, count, meta) -> int | None:
        """Resize the embeddings (and the tied LM head) for `count` action tokens placed after the
        existing rows; returns the id of action token 0. New rows start at the old rows' mean and
        covariance (transformers' mean_resizing), seeded; on meta nothing is sampled."""
        if count is None:
            return None
        from transformers.utils import logging as hf_logging

        rows = self.model.get_input_embeddings().weight.shape[0]
        base = self.params.get("action_token_base", rows)
        if base + count <= rows:  # the checkpoint has the rows already (a starVLA -Action model)
            return base
        # with an explicit base below the rows, the rows grow by `count` as starVLA's
        # add_special_tokens_to_qwen does (151936 + 2048 on Qwen3-VL), so checkpoints line up
        size = max(base, rows) + count
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # transformers logs a note about mean_resizing on every call
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.params["seed"])
                self.model.resize_token_embeddings(size, mean_resizing=not meta)
        finally:
            hf_logging.set_verbosity(verbosity)
        return base

    def _placeholder_id(self) -> int | None:
        """The token id the placeholders are found by: the first of the placeholder's tokens (None
        without placeholders, or on meta without a tokenizer)."""
        if not self.placeholders or self.processor is None:
            return None
        ids = self.processor.tokenizer(self.params["placeholder"], add_special_tokens=False)["input_ids"]
        if not ids:
            raise ParamError("placeholder", f"{self.params['placeholder']!r} tokenizes to nothing")
        return int(ids[0])

    def _layer_ids(self, layers):
        if layers is None:
            return list(range(self.num_layers))
        out = []
        for i in layers:
            if not -self.num_layers <= i < self.num_layers:
                raise ParamError("layers", f"layer {i} does not exist: the model has {self.num_layers} decoder layers")
            out.append(i % self.num_layers)
        return out

    # inputs --------------------------------------------------------------------------------
    def _on_model(self, enc: dict) -> dict:
        device = self.model.device
        dtype = self.model.dtype
        return {k: (t.to(device, dtype) if torch.is_floating_point(t) else t.to(device)) if isinstance(t, torch.Tensor) else t
                for k, t in enc.items()}

    def answer_ids(self, target_text=None, target_tokens=None) -> list[list[int]] | None:
        """Token ids of the answers: the tokenized text, or action tokens shifted into the LM's vocabulary."""
        if target_text is not None:
            if self.processor is None:  # meta compile without a tokenizer on disk: about 4 bytes per token
                return [[0] * math.ceil(len(t.encode()) / 4) for t in target_text]
            return text_answers(self.processor.tokenizer, target_text)
        if target_tokens is None:
            return None
        if target_tokens.device.type == "meta":  # shape probing: the longest possible answer
            return [[self.action_base] * target_tokens.shape[1]] * target_tokens.shape[0]
        return action_answer_ids(target_tokens, *self._action_answers())

    def _action_answers(self) -> tuple:
        """(block id, id of action token 0, action_vocab, max_new_tokens): what action_answer_ids needs."""
        return self.block_id, self.action_base, self.params["action_vocab"], self.params["max_new_tokens"]

    # the processor step -------------------------------------------------------------------
    def _encoding_layout(self) -> tuple[tuple, tuple]:
        """(the processor's output keys, those that are flat per image, not batch first): from the
        processor on two blank images of the graph's size, or by model family without one (meta)."""
        if self.processor is None:
            qwen = str(getattr(self.config, "model_type", "")).startswith("qwen")
            if qwen:
                return ("input_ids", "attention_mask", "pixel_values", "image_grid_thw"), ("pixel_values", "image_grid_thw")
            return ("input_ids", "attention_mask", "pixel_values"), ()
        shape = self.port_info["images"].shape if "images" in self.port_info else None
        _, views, _, h, w = shape if shape is not None and len(shape) == 5 else (2, 1, 3, 32, 32)
        with torch.device("cpu"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            enc = encode_cpu(self.processor, torch.zeros(2, views, 3, h, w), ["a", "b"])
        return tuple(enc), tuple(k for k, v in enc.items() if v.shape[0] != 2)

    def step_ports(self, wired):
        """The step reads images, text and target_text; the processor's tensors (and with
        target_text the answers) are what forward and predict take. target_tokens stays an edge:
        fast.encode's tokens, shifted into the vocabulary in forward."""
        made = {k: OutPort("any", doc=f"the processor's {k}, batch first") for k in self.encoding_keys}
        if "target_text" in wired:
            made["answers"] = OutPort("tokens", train_only=True, doc="[B, L] answer token ids, -1 padded")
        return StepPorts(STEP_READS, made)

    def processor_step(self, node=None, sources=None):
        step = bind(VLMProcessor, self, node, sources, STEP_READS, self.encoding_keys, self.processor, self.flat_keys,
                    self.suffix, self.template)
        if "target_text" in step.sources:
            step = VLMProcessor(step.block, step.sources, self.encoding_keys + ("answers",), self.processor, self.flat_keys,
                                self.suffix, self.template)
        return step

    def model_inputs(self, encoding: dict) -> dict:
        """The step's tensors as the model takes them: flat per-image tensors flattened back, token
        columns cut to the longest row (a row cut from a batch is then exactly what the processor
        makes for it alone), on the model's device and dtype."""
        enc = {k: (v.reshape(-1, *v.shape[2:]) if k in self.flat_keys else v) for k, v in encoding.items() if v is not None}
        longest = int(enc["attention_mask"].sum(dim=1).max()) if enc["attention_mask"].numel() else 0
        if longest < enc["attention_mask"].shape[1]:
            enc = {k: (v[:, :longest] if k in TOKEN_KEYS else v) for k, v in enc.items()}
        return enc

    # forward -------------------------------------------------------------------------------
    def forward(self, answers=None, target_tokens=None, **encoding):
        enc = self.model_inputs(encoding)
        answer_ids = None
        if answers is not None:
            answer_ids = [[i for i in row if i >= 0] for row in answers.tolist()]
        elif target_tokens is not None:
            answer_ids = action_answer_ids(target_tokens, *self._action_answers())
        if answer_ids is not None:  # on the CPU, where the processor made the token columns
            enc = append_answers(self.processor.tokenizer, {k: (v.cpu() if k in TOKEN_KEYS else v) for k, v in enc.items()},
                                 answer_ids, self.answer_tail)
        enc = self._on_model(enc)
        out = self.model(**enc, output_hidden_states=True, use_cache=False)
        result = self._outputs(out.hidden_states, enc["attention_mask"])
        if self.placeholders:
            result["action_hidden"] = self.placeholder_states(result["hidden"], enc["input_ids"])
        if answer_ids is not None:
            result["lm_loss"] = out.loss.float()
            result["logits"] = out.logits
            result["labels"] = enc["labels"]
        return result

    def predict(self, **encoding):
        if self.action_base is None:
            return self.forward(**encoding)
        return self.generate_actions(encoding)

    @torch.no_grad()
    def generate_actions(self, encoding: dict) -> dict:
        """Greedy decoding of action tokens after the prompt (transformers' generate, so the KV
        cache and Qwen's multimodal rope positions are the model's own), the prompts padded on the
        left so that each ends where decoding starts. Returns the usual outputs of the prompt (from
        the prefill) plus `generated`."""
        from transformers import LogitsProcessorList

        tok = self.processor.tokenizer
        enc = self._on_model(left_padded(self.model_inputs(encoding)))
        n, limit = self.params["action_vocab"], self.params["max_new_tokens"]
        if self.params["decode"] == "free":
            return self._generate_free(enc, n, limit)
        allowed = torch.full((self.action_base + n,), float("-inf"))
        allowed[self.action_base:] = 0
        allowed[tok.eos_token_id] = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # generation_config flags that greedy decoding ignores
            out = self.model.generate(
                **enc, max_new_tokens=limit, do_sample=False, use_cache=True, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                logits_processor=LogitsProcessorList([OnlyTokens(allowed)]),
                return_dict_in_generate=True, output_hidden_states=True)
        new = out.sequences[:, enc["input_ids"].shape[1]:]
        ended = torch.cumsum((new == tok.eos_token_id).int(), dim=1) > 0
        generated = torch.where(ended | (new < self.action_base), -1, new - self.action_base)
        generated = torch.nn.functional.pad(generated, (0, limit - generated.shape[1]), value=-1)
        result = self._outputs(out.hidden_states[0], enc["attention_mask"])
        result["generated"] = generated
        return result

    def _generate_free(self, enc: dict, n: int, limit: int) -> dict:
        """with.decode: free (starVLA's QwenFast predict_action): greedy over the whole vocabulary
        until an end token of the model's generation config (the tokenizer's when it has none) or
        `limit` new tokens; `generated` holds the action tokens among them in order, -1 after."""
        tok, config = self.processor.tokenizer, self.model.generation_config
        eos = config.eos_token_id if config.eos_token_id is not None else tok.eos_token_id
        pad = config.pad_token_id if config.pad_token_id is not None else tok.pad_token_id
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # generation_config flags that greedy decoding ignores
            out = self.model.generate(**enc, max_new_tokens=limit, do_sample=False, use_cache=True, eos_token_id=eos,
                                      pad_token_id=pad if pad is not None else (eos[0] if isinstance(eos, list) else eos),
                                      return_dict_in_generate=True, output_hidden_states=True)
        new = out.sequences[:, enc["input_ids"].shape[1]:]
        rows = [[t - self.action_base for t in row if self.action_base <= t < self.action_base + n] for row in new.tolist()]
        generated = torch.full((len(rows), limit), -1, dtype=torch.long, device=new.device)
        for i, row in enumerate(rows):
            generated[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        result = self._outputs(out.hidden_states[0], enc["attention_mask"])
        result["generated"] = generated
        return result

    def placeholder_states(self, hidden, input_ids):
        """[B, T, D] -> [B, N, D]: the hidden states at the last N placeholder tokens of each row, in
        sequence order (starVLA's QwenOFT gather)."""
        n = self.placeholders
        found = input_ids == self.placeholder_id
        counts = found.sum(dim=1)
        if bool((counts < n).any()):
            rows = (counts < n).nonzero().flatten().tolist()
            raise ValueError(f"{self.block_id}: rows {rows} hold {counts[counts < n].tolist()} action placeholder tokens, "
                             f"fewer than with.action_placeholders = {n} (was the prompt cut short?)")
        positions = torch.arange(found.shape[1], device=found.device).expand_as(found)
        last = torch.where(found, positions, -1).topk(n, dim=1).values.sort(dim=1).values
        return hidden.gather(1, last.to(hidden.device).unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))

    def _outputs(self, hidden_states, attention_mask):
        dtype = DTYPES[self.params["output_dtype"]]
        # hidden_states[0] is the embedding output; layer i's output is hidden_states[i + 1]
        layers = torch.stack([hidden_states[i + 1] for i in self.layer_ids], dim=1).to(dtype)
        return {"hidden": hidden_states[-1].to(dtype), "layers": layers, "mask": attention_mask.bool()}

    def meta_forward(self, images, text, target_text=None, target_tokens=None):
        b, v, _, h, w = images.shape
        length = self.token_count(text, v, h, w, self.answer_ids(target_text, target_tokens))
        dtype = DTYPES[self.params["output_dtype"]]
        out = {
            "hidden": torch.empty(b, length, self.width, dtype=dtype, device="meta"),
            "layers": torch.empty(b, len(self.layer_ids), length, self.width, dtype=dtype, device="meta"),
            "mask": torch.empty(b, length, dtype=torch.bool, device="meta"),
        }
        if self.action_base is not None:
            out["generated"] = torch.empty(b, self.params["max_new_tokens"], dtype=torch.long, device="meta")
        if self.placeholders:
            out["action_hidden"] = torch.empty(b, self.placeholders, self.width, dtype=dtype, device="meta")
        if target_text is not None or target_tokens is not None:
            out["lm_loss"] = torch.empty((), device="meta")
            out["logits"] = torch.empty(b, length, self.config.get_text_config().vocab_size, device="meta")
            out["labels"] = torch.empty(b, length, dtype=torch.long, device="meta")
        return out

    def token_count(self, text, views, height, width, answers=None) -> int:
        """Sequence length of the padded batch: from the real processor on dummy images when it is
        available, else from the image processor's resize rule plus an estimate for the text."""
        if self.processor is not None:
            with torch.device("cpu"), warnings.catch_warnings():  # the processor makes real (CPU) tensors
                warnings.simplefilter("ignore")
                images = torch.zeros(len(text), views, 3, height, width)
                enc = self._encode_cpu(images, [user_text(t, self.suffix, self.template) for t in text], answers)
            return int(enc["input_ids"].shape[1])
        per_image = hf_config.tokens_per_image(self.settings, self.config, height, width)
        template = 8 + 2 * views  # role markers, vision start/end tokens, generation prompt
        longest = max(len(user_text(t, self.suffix, self.template).encode()) for t in text)
        end = len(self.answer_tail) if self.answer_tail is not None else 1
        answer = max((len(a) + end for a in answers), default=0) if answers is not None else 0
        return views * per_image + template + math.ceil(longest / 4) + answer

    def _encode_cpu(self, images, text, answers, padding_side="right"):
        """Processor outputs on CPU, not moved to the model's device (which may be meta)."""
        return encode_cpu(self.processor, images, text, answers, padding_side, self.answer_tail)


def action_answer_ids(target_tokens, block_id, base, vocab, limit) -> list[list[int]]:
    """FAST ids [B, L] (-1 padded) -> answer token ids in the LM's vocabulary (action token i is
    base + i), checked against with.action_vocab and with.max_new_tokens."""
    rows = [[i for i in row if i >= 0] for row in target_tokens.tolist()]
    for row in rows:
        if any(i >= vocab for i in row):
            raise ValueError(f"{block_id}: target_tokens has id {max(row)} but with.action_vocab is {vocab}; "
                             "raise with.action_vocab to the FAST tokenizer's vocabulary size")
        if len(row) + 1 > limit:
            raise ValueError(f"{block_id}: a target needs {len(row)} action tokens plus the end token but "
                             f"with.max_new_tokens is {limit}, so it could never be generated; raise it")
    return [[base + i for i in row] for row in rows]


def left_padded(enc: dict) -> dict:
    """Right-padded processor tensors padded on the left instead (what the processor makes with
    padding_side='left': each row's pad columns, which hold the pad values already, moved first)."""
    mask = enc["attention_mask"]
    shifts = (mask.shape[1] - mask.sum(dim=1)).tolist()
    out = dict(enc)
    for key in TOKEN_KEYS:
        if key in enc:
            out[key] = torch.stack([torch.roll(row, int(k)) for row, k in zip(enc[key], shifts)])
    return out


class OnlyTokens:
    """A logits processor that keeps the scores where `allowed` is 0 and masks the rest (-inf)."""

    def __init__(self, allowed: torch.Tensor):
        self.allowed = allowed

    def __call__(self, input_ids, scores):
        a = self.allowed
        if a.device != scores.device or a.dtype != scores.dtype or a.shape[0] != scores.shape[-1]:
            # once per generation, not per token: move to the logits' device and dtype, and mask
            # the columns of LM heads wider than the vocabulary
            a = a.to(scores.device, scores.dtype)
            if scores.shape[-1] > a.shape[0]:
                a = torch.nn.functional.pad(a, (0, scores.shape[-1] - a.shape[0]), value=float("-inf"))
            self.allowed = a
        return scores + a


def _config_source(value):
    return value if isinstance(value, dict) else str(value)


def vision_tower(model):
    """The vision encoder (and its merger/projector when it lives inside it) of a HF VLM."""
    for root in (getattr(model, "model", None), model):
        for name in VISION_TOWERS:
            if root is not None and isinstance(getattr(root, name, None), torch.nn.Module):
                return getattr(root, name)
    raise ValueError(f"cannot find the vision tower of {type(model).__name__} (looked for {', '.join(VISION_TOWERS)})")
