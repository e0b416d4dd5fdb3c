"""backbone.hf_vlm's Qwen3-VL as a tensor graph torch.export can trace, for one camera resolution
(runners/export.py uses it): `TensorQwen3VL(block, grid)`, fed by the block's processor step
(processors/hf_vlm.py VLMProcessor), which runs before the graph.

What transformers' Qwen3-VL forward does with data-dependent values, and what replaces it here
(the weights and every other op are the model's own modules, so the result equals the eager block):
- the vision tower splits the packed patches of all images by `cu_seqlens.tolist()` and attends
  within each image; every image of a graph has the same grid (the graph declares the images'
  size), so the patches are reshaped to [images, patches, ...] and attended per image in one batch;
- the learned position table is resampled and the vision rotary positions are made from
  `image_grid_thw` on every call; with a static grid they are computed once (`StaticGrid`) and kept;
- image features are merged into the text embeddings (and the deepstack features added) through
  boolean masks (`masked_scatter`, `hidden[mask] += ...`); here each token gathers the feature of
  its rank among its row's image tokens and `torch.where` keeps it on image tokens only;
- the multimodal rope positions (`get_rope_index`: a Python loop over token-type groups) are
  computed from cumulative counts of text and image tokens, which is what the loop computes for
  rows whose images all have the static grid.

The token axis stays dynamic: a prompt's length varies with its instruction. The processor (chat
template, tokenization, image resizing and patching) is Python and runs before the graph."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

EXPORTABLE_MODEL_TYPES = ("qwen3_vl",)


@dataclass(frozen=True)
class StaticGrid:
    """One image's patch grid (t, h, w as the processor's image_grid_thw row) and the merge size."""
    views: int
    t: int
    h: int
    w: int
    merge: int

    @property
    def patches(self) -> int:  # vision-tower tokens per image
        return self.t * self.h * self.w

    @property
    def tokens(self) -> int:  # LM image tokens per image (after the 2x2 merge)
        return self.patches // (self.merge * self.merge)

    @property
    def llm_grid(self) -> tuple[int, int, int]:
        return self.t, self.h // self.merge, self.w // self.merge


def static_grid(block, views: int, height: int, width: int) -> StaticGrid:
    """The grid the block's processor gives images of `height` x `width` (it resizes them itself)."""
    from .hf_vlm import encode_cpu

    images = torch.zeros(1, views, 3, height, width)
    grid = encode_cpu(block.processor, images, ["x"])["image_grid_thw"]
    t, h, w = (int(x) for x in grid[0])
    if t != 1 or any(row.tolist() != [t, h, w] for row in grid):  # an image is one temporal patch
        raise ValueError(f"the processor gives the {views} views of {height}x{width} the grids {grid.tolist()}; "
                         "the exported path takes one equal grid [1, h, w] per image")
    return StaticGrid(views, t, h, w, int(block.model.config.vision_config.spatial_merge_size))


class TensorQwen3VL(nn.Module):
    """The block's predict on processor tensors: (pixel_values, input_ids, attention_mask) -> the
    block's outputs (hidden, layers, mask), with the block's own modules (module docstring)."""

    def __init__(self, block, grid: StaticGrid):
        super().__init__()
        from transformers.vision_utils import get_vision_interpolation_indices_and_weights, get_vision_position_ids

        core = block.model.model  # Qwen3VLModel
        self.visual, self.language_model = core.visual, core.language_model
        self.grid = grid
        self.image_token_id = int(block.model.config.image_token_id)
        self.block_outputs = block._outputs  # hidden/layers/mask exactly as the block selects them
        thw = torch.tensor([[grid.t, grid.h, grid.w]])
        v = self.visual
        index, weight = get_vision_interpolation_indices_and_weights(
            thw, num_grid_per_side=v.num_grid_per_side, mode=v.interpolation_mode,
            align_corners=v.interpolation_align_corners, spatial_merge_size=v.config.spatial_merge_size)
        self.register_buffer("interp_index", index, persistent=False)
        self.register_buffer("interp_weight", weight, persistent=False)
        self.register_buffer("vision_positions", get_vision_position_ids(thw, v.spatial_merge_size), persistent=False)

    # vision ------------------------------------------------------------------------------------
    def vision(self, pixel_values):
        """pixel_values [B, V * patches, F] -> (merged image features [B, V * tokens, D], deepstack list)."""
        v, g = self.visual, self.grid
        b = pixel_values.shape[0]
        images = b * g.views
        x = v.patch_embed(pixel_values.reshape(images * g.patches, -1).to(v.dtype))
        pos = (v.pos_embed(self.interp_index) * self.interp_weight[:, :, None]).sum(1)  # one image's [patches, D]
        x = (x.reshape(images, g.patches, -1) + pos.to(x.dtype)).reshape(images * g.patches, -1)
        cos, sin = v.rotary_pos_emb(x, self.vision_positions)
        deepstack = []
        for i, blk in enumerate(v.blocks):
            x = x + self.vision_attention(blk.attn, blk.norm1(x), images, cos, sin)
            x = x + blk.mlp(blk.norm2(x))
            if i in v.deepstack_visual_indexes:
                merger = v.deepstack_merger_list[v.deepstack_visual_indexes.index(i)]
                deepstack.append(merger(x).reshape(b, g.views * g.tokens, -1))
        return v.merger(x).reshape(b, g.views * g.tokens, -1), deepstack

    def vision_attention(self, attn, x, images: int, cos, sin):
        """Qwen3VLVisionAttention.forward with each image's patches as one row of a batch
        (instead of cu_seqlens splits): the same projections, rotary and attention function."""
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        from transformers.models.qwen3_vl import modeling_qwen3_vl as Q

        n = x.shape[0]
        q, k, val = (attn.qkv(x).reshape(images, self.grid.patches, 3, attn.num_heads, -1)
                     .permute(2, 0, 1, 3, 4).unbind(0))  # each [images, patches, heads, head_dim]
        q, k = Q.apply_rotary_pos_emb_vision(q, k, cos, sin)  # one image's cos/sin, broadcast over images
        q, k, val = (t.transpose(1, 2) for t in (q, k, val))
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, Q.eager_attention_forward)
        out = interface(attn, q, k, val, attention_mask=None, scaling=attn.scaling, dropout=0.0, is_causal=False)[0]
        return attn.proj(out.reshape(n, -1).contiguous())

    # text --------------------------------------------------------------------------------------
    def rope_positions(self, is_image, attention_mask):
        """[3, B, L] multimodal rope positions, as Qwen3VLModel.get_rope_index gives them: text
        tokens count on from the last position; image j's tokens sit on (s, s + row, s + col) with s
        the position after the text before it, and the next text starts max(rows, cols) later."""
        _, rows, cols = self.grid.llm_grid
        per_image = rows * cols
        valid = attention_mask.bool()
        image, text = (is_image & valid).long(), (~is_image & valid).long()
        text_before = text.cumsum(1) - text
        rank = image.cumsum(1) - image  # image tokens before this one in its row
        start = text_before + (rank // per_image) * max(rows, cols)
        within = rank % per_image
        row = torch.where(is_image, start + within // cols, start)
        col = torch.where(is_image, start + within % cols, start)
        positions = torch.stack([start, row, col])
        return torch.where(valid, positions, torch.zeros_like(positions))

    def forward(self, pixel_values, input_ids, attention_mask):
        from transformers.masking_utils import create_causal_mask

        lm = self.language_model
        features, deepstack = self.vision(pixel_values)
        is_image = input_ids == self.image_token_id
        rank = ((is_image.long().cumsum(1) - 1).clamp(0, features.shape[1] - 1)).unsqueeze(-1)

        def at_image_tokens(values):  # [B, V * tokens, D] -> [B, L, D], each image token's own feature
            return torch.gather(values, 1, rank.expand(-1, -1, values.shape[-1]))

        embeds = lm.embed_tokens(input_ids)
        hidden = torch.where(is_image[..., None], at_image_tokens(features).to(embeds.dtype), embeds)
        positions = self.rope_positions(is_image, attention_mask)
        mask = create_causal_mask(config=lm.config, inputs_embeds=hidden, attention_mask=attention_mask, cache=None,
                                  position_ids=None)
        rope = lm.rotary_emb(hidden, positions)
        states = [hidden]  # as output_hidden_states: the input of layer 0, then each layer's output
        for i, layer in enumerate(lm.layers):
            hidden = layer(hidden, attention_mask=mask, position_ids=None, cache=None, position_embeddings=rope)
            states.append(hidden)
            if i < len(deepstack):  # added after the layer's output was recorded, as in the model
                hidden = torch.where(is_image[..., None], hidden + at_image_tokens(deepstack[i]).to(hidden.dtype), hidden)
        states[-1] = lm.norm(hidden)
        return self.block_outputs(states, attention_mask)
