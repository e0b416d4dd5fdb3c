"""How far LeRobot 0.3.2's pi0 is from 0.4.1's (the fixture's reference): 0.3.2's own PI0FlowMatching on
the 0.4.1 fixture's tiny weights (renamed to 0.3.2's key layout), the same inputs, noise and time.
Prints figures only (docs/lerobot.md quotes them); writes nothing. Run with stock transformers 4.53.2
beside the 0.3.2 venv (0.3.2's pi0 calls Gemma's modules the stock way):

    /tmp/lerobot-venvs/lerobot-0.3.2/bin/pip install --no-deps --target /tmp/tf4532-stock \
        transformers==4.53.2 "tokenizers>=0.21,<0.22"
    PYTHONPATH=/tmp/tf4532-stock /tmp/lerobot-venvs/lerobot-0.3.2/bin/python scripts/parity/lerobot_pi0_032.py

0.3.2 casts PaliGemma and the expert's layers to bfloat16 (its to_bfloat16_like_physical_intelligence)
and its activations with them; its tokenizer (a Hub download) is not needed: tokens are given."""
import sys, json
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from check_lerobot import _torchvision_without_compiled_ops; _torchvision_without_compiled_ops()
import transformers.utils.import_utils as iu; iu._kernels_available = False
import torch
from types import SimpleNamespace
from safetensors.torch import load_file
from transformers import GemmaConfig, PaliGemmaConfig, SiglipVisionConfig
from lerobot.policies.pi0 import modeling_pi0 as mp, paligemma_with_expert as pwe
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.policies.pi0.configuration_pi0 import PI0Config
F = str(Path(__file__).resolve().parents[2] / 'tests' / 'fixtures' / 'lerobot' / 'pi0') + '/'
info = json.load(open(F + 'case.json')); case = load_file(F + 'case.safetensors'); sd = load_file(F + 'model.safetensors')
V, T, E = info['vision'], info['vlm'], info['expert']
mp.AutoTokenizer = SimpleNamespace(from_pretrained=lambda *a, **k: None)
orig = pwe.PaliGemmaWithExpertConfig.__init__
def init(self, *a, **k):
    orig(self, *a, **k)
    text = GemmaConfig(hidden_size=T['width'], intermediate_size=T['mlp_dim'], num_hidden_layers=T['depth'], num_attention_heads=8,
                       num_key_value_heads=1, head_dim=T['head_dim'], vocab_size=64, hidden_activation='gelu_pytorch_tanh')
    vis = SiglipVisionConfig(hidden_size=V['hidden_size'], intermediate_size=V['intermediate_size'], num_hidden_layers=V['num_hidden_layers'],
                             num_attention_heads=V['num_attention_heads'], patch_size=V['patch_size'], image_size=V['image_size'], projection_dim=T['width'],
                             vision_use_head=False)
    self.paligemma_config = PaliGemmaConfig(text_config=text.to_dict(), vision_config=vis.to_dict(), projection_dim=T['width'], hidden_size=T['width'], vocab_size=64, image_token_index=63)
    self.paligemma_config.text_config.head_dim = T['head_dim']
    self.paligemma_config.vision_config.projection_dim = T['width']
    self.gemma_expert_config = GemmaConfig(hidden_size=E['width'], intermediate_size=E['mlp_dim'], num_hidden_layers=E['depth'], num_attention_heads=8,
                                           num_key_value_heads=1, head_dim=E['head_dim'], vocab_size=64, hidden_activation='gelu_pytorch_tanh')
pwe.PaliGemmaWithExpertConfig.__init__ = init
cams = ("observation.images.top", "observation.images.wrist")
fi = {k: PolicyFeature(FeatureType.VISUAL, (3, 12, 20)) for k in cams}; fi["observation.state"] = PolicyFeature(FeatureType.STATE, (4,))
cfg = PI0Config(input_features=fi, output_features={"action": PolicyFeature(FeatureType.ACTION, (3,))}, chunk_size=5, n_action_steps=5,
                max_state_dim=6, max_action_dim=6, resize_imgs_with_padding=(16, 16), proj_width=E['width'], device='cpu')
from lerobot.configs.types import NormalizationMode
cfg.normalization_mapping = {k: NormalizationMode.IDENTITY for k in ("VISUAL", "STATE", "ACTION")}
policy = mp.PI0Policy(cfg)
P = 'model.paligemma_with_expert.'
new = {}
for k, v in sd.items():
    k2 = (k.replace(P + 'paligemma.model.language_model.', P + 'paligemma.language_model.model.')
           .replace(P + 'paligemma.model.vision_tower.', P + 'paligemma.vision_tower.')
           .replace(P + 'paligemma.model.multi_modal_projector.', P + 'paligemma.multi_modal_projector.')
           .replace(P + 'paligemma.lm_head.', P + 'paligemma.language_model.lm_head.'))
    new[k2] = v
tr = mp.PI0Policy._transform_state_dict_keys(new)
want = policy.state_dict()
missing = [k for k in want if k not in tr]; extra = [k for k in tr if k not in want]
assert not missing and not extra, (missing[:5], extra[:5])
policy.load_state_dict({k: tr[k].to(want[k].dtype) if k in tr else want[k] for k in want}, strict=True)
policy.eval()
print('dtype of a layer', policy.model.paligemma_with_expert.paligemma.language_model.layers[0].self_attn.q_proj.weight.dtype)
imgs = [case['image0'], case['image1']]
batch = {cams[0]: imgs[0], cams[1]: imgs[1], "observation.state": case['state'], "action": case['actions']}
m = policy.model
with torch.no_grad():
    images, masks = policy.prepare_images(batch)
    state = policy.prepare_state(batch)
    losses = m.forward(images, masks, case['tokens'], case['tokens_mask'], state, policy.prepare_action(batch), case['train_noise'], case['train_time'])
    loss_real = losses[:, :, :3].float().mean().item()
    loss_all = losses.float().mean().item()
    acts = m.sample_actions(images, masks, case['tokens'], case['tokens_mask'], state, noise=case['infer_noise'].clone())[:, :, :3].float()
print('0.4.1 loss', case['loss'].item(), '0.3.2 loss over real dims', loss_real, 'over all 6 dims (its reduction)', loss_all)
print('chunk max |diff| vs 0.4.1', (acts - case['chunk']).abs().max().item(), 'max |chunk|', case['chunk'].abs().max().item())
