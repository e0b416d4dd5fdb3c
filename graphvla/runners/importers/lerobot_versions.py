"""Which LeRobot saves `graphvla import lerobot` knows: the config.json fields each policy type has in the
LeRobot releases whose saves were imported and compared with that release's own predict_action_chunk
(docs/lerobot.md, "Which LeRobot versions"; scripts/parity/lerobot_act.py --format-04 and
scripts/parity/lerobot_diffusion.py --import-04 write them). Facts only: field names, no LeRobot code.

A field outside them is refused by name (`check_fields`): it is a setting of a LeRobot release the
import has not been compared with, and the import would otherwise ignore it, perhaps changing the actions
without a word (LeRobot 0.4.4's Diffusion Policy `resize_shape` is such a setting). Fields the import knows
but whose values it cannot honour are refused by value (`REFUSED`)."""
from __future__ import annotations

# policy type -> release -> the fields that release's config class adds (the first: all of them), as
# dataclasses.fields of LeRobot's config class lists them (config.json holds these plus "type")
FIELDS = {
    "act": {
        "0.3.2": "chunk_size device dim_feedforward dim_model dropout feedforward_activation input_features "
                 "kl_weight latent_dim license n_action_steps n_decoder_layers n_encoder_layers n_heads n_obs_steps "
                 "n_vae_encoder_layers normalization_mapping optimizer_lr optimizer_lr_backbone "
                 "optimizer_weight_decay output_features pre_norm pretrained_backbone_weights private push_to_hub "
                 "replace_final_stride_with_dilation repo_id tags temporal_ensemble_coeff use_amp use_vae "
                 "vision_backbone",
        "0.4.1": "pretrained_path",
        "0.4.4": "use_peft",
        "0.5.1": "",  # none added
        "0.6.1": "pretrained_revision",
    },
    "diffusion": {
        "0.3.2": "beta_end beta_schedule beta_start clip_sample clip_sample_range crop_is_random crop_shape device "
                 "diffusion_step_embed_dim do_mask_loss_for_padding down_dims drop_n_last_frames horizon "
                 "input_features kernel_size license n_action_steps n_groups n_obs_steps noise_scheduler_type "
                 "normalization_mapping num_inference_steps num_train_timesteps optimizer_betas optimizer_eps "
                 "optimizer_lr optimizer_weight_decay output_features prediction_type pretrained_backbone_weights "
                 "private push_to_hub repo_id scheduler_name scheduler_warmup_steps spatial_softmax_num_keypoints "
                 "tags use_amp use_film_scale_modulation use_group_norm use_separate_rgb_encoder_per_camera "
                 "vision_backbone",
        "0.4.1": "pretrained_path",
        "0.4.4": "compile_mode compile_model crop_ratio resize_shape use_peft",
        "0.5.1": "",  # none added
        "0.6.1": "gradient_checkpointing pretrained_revision",
    },
    "smolvla": {
        "0.3.2": "adapt_to_pi_aloha add_image_special_tokens attention_mode chunk_size device empty_cameras "
                 "expert_width_multiplier freeze_vision_encoder input_features license load_vlm_weights "
                 "max_action_dim max_period max_state_dim min_period n_action_steps n_obs_steps "
                 "normalization_mapping num_expert_layers num_steps num_vlm_layers optimizer_betas optimizer_eps "
                 "optimizer_grad_clip_norm optimizer_lr optimizer_weight_decay output_features pad_language_to "
                 "prefix_length private push_to_hub repo_id resize_imgs_with_padding scheduler_decay_lr "
                 "scheduler_decay_steps scheduler_warmup_steps self_attn_every_n_layers tags tokenizer_max_length "
                 "train_expert_only train_state_proj use_amp use_cache use_delta_joint_actions_aloha "
                 "vlm_model_name",
        "0.4.1": "pretrained_path",
        "0.4.4": "compile_mode compile_model rtc_config use_peft",
        "0.5.1": "",  # none added; imported with patch_positions index (its transformers 5.3)
        "0.6.1": "pretrained_revision",  # index too (transformers 5.5)
    },
    "pi0": {
        "0.4.1": "action_expert_variant chunk_size compile_mode compile_model device dtype empty_cameras "
                 "gradient_checkpointing image_resolution input_features license max_action_dim max_period "
                 "max_state_dim min_period n_action_steps n_obs_steps normalization_mapping num_inference_steps "
                 "optimizer_betas optimizer_eps optimizer_grad_clip_norm optimizer_lr optimizer_weight_decay "
                 "output_features paligemma_variant pretrained_path private push_to_hub repo_id "
                 "scheduler_decay_lr scheduler_decay_steps scheduler_warmup_steps tags time_sampling_beta_alpha "
                 "time_sampling_beta_beta time_sampling_offset time_sampling_scale tokenizer_max_length use_amp",
        "0.4.4": "freeze_vision_encoder rtc_config train_expert_only use_peft",
    },
}
FIELDS["pi05"] = dict(FIELDS["pi0"])  # pi0.5's config class has pi0's fields (0.4.1, 0.4.4)

# (field, the values the import takes, what the other values mean)
REFUSED = {
    "*": (("use_peft", (False, None), "a PEFT adapter save (LeRobot 0.4.4+): merge the adapter into the policy "
                                      "and save_pretrained the merged policy"),),
    "diffusion": (("resize_shape", (None,), "LeRobot 0.4.4+ resizes every image before the crop; the graph's "
                                            "encoder does not resize"),),
}


def known_fields(kind: str) -> set:
    return {name for added in FIELDS[kind].values() for name in added.split()} | {"type"}


def releases(kind: str) -> list:
    return list(FIELDS[kind])


def check_fields(cfg: dict, kind: str) -> str | None:
    """None, or why config.json `cfg` of policy type `kind` cannot be imported (an unknown field, by name;
    a known field's value the import cannot honour)."""
    unknown = sorted(set(cfg) - known_fields(kind))
    if unknown:
        return (f"field(s) {unknown} are not in the config of LeRobot's '{kind}' in the releases whose saves "
                f"the import was compared with ({', '.join(releases(kind))}): a save of a newer LeRobot, "
                "whose settings the import would ignore; see docs/lerobot.md, 'Which LeRobot versions'")
    for name, accepted, why in REFUSED["*"] + REFUSED.get(kind, ()):
        if name in cfg and cfg[name] not in accepted:
            return f"{name} {cfg[name]!r} is not supported ({why})"
    return None
