import open_clip
import pytest
import torch

import open_clip_spike  # noqa: F401
from open_clip_spike.energy import class_prompts, clip_teacher_energy, spikeclip_energy_report
from timm_spike.energy import EnergyReport, calibrate_bn
from timm_spike.energy.data import image_dataset


@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms('SpikeCLIP-Tiny', T=2)
    ds, desc = image_dataset('skimage', preprocess)
    images = torch.stack([ds[i][0] for i in range(4)])
    calibrate_bn(model.visual, [images])
    prompts = class_prompts(['astronaut', 'cat', 'coffee', 'rocket'], ('a photo of a {}.', 'a {}.'))
    tokens = open_clip.get_tokenizer('SpikeCLIP-Tiny')(prompts)
    return model.eval(), images, desc, prompts, tokens


def test_prompts():
    assert class_prompts(['cat', 'dog'], ('a {}.', 'the {}!')) == ['a cat.', 'the cat!', 'a dog.', 'the dog!']
    with pytest.raises(ValueError, match='class names'):
        class_prompts([])


def test_demo_teacher_macs_closed_form():
    """ViT teacher (32x32, patch 4, width 128, 3 layers, MLP x2, 4 heads, 512-d) counted on the meta device,
    including nn.MultiheadAttention's fused inference path and the SDPA of the text tower."""
    t = clip_teacher_energy('SpikeCLIP-DemoTeacher', ['a photo of a cat.'])
    W, E = 128, 512

    def block(n):  # q, k, v, out projections; q k^T and attn v; MLP
        return 4 * n * W * W + 2 * n * n * W + 2 * n * W * 2 * W
    assert t['image'].macs == 64 * W * 3 * 16 + 3 * block(65) + W * E
    assert t['text'].macs == 2 * block(20) + W * E
    assert t['image'].input_size == [3, 32, 32] and t['text'].input_size == [20]
    assert t['image'].energy_mj == pytest.approx(4.6e-9 * t['image'].macs)
    with pytest.raises(ValueError, match='Unknown teacher'):
        clip_teacher_energy('no-such-clip', ['x'])


def test_both_towers(tiny):
    model, images, desc, prompts, tokens = tiny
    teacher = clip_teacher_energy('SpikeCLIP-DemoTeacher', prompts)
    r = spikeclip_energy_report(model, [images[:2], images[2:]], tokens, model_name='SpikeCLIP-Tiny',
                                data_name=desc, teacher=teacher, batch_size=3, progress=False)
    img, txt = r.image, r.text
    assert (img.T, txt.T) == (2, 2)
    assert img.num_samples == 4 and txt.num_samples == len(prompts) == 8
    assert img.input_size == [3, 32, 32] and txt.input_size == [20]
    assert img.energy_mj > 0 and txt.energy_mj > 0
    # Text tower: [B, 20*128] spikes -> fc1 (2560 -> 512) -> spikes -> fc2 (512 -> 512), T=2; no real-input MACs.
    layers = {l.name: l for l in txt.layers}
    assert set(layers) == {'fc1', 'fc2'}
    assert layers['fc1'].dense_macs == 2 * 20 * 128 * 512 and layers['fc2'].dense_macs == 2 * 512 * 512
    for l in layers.values():
        assert l.input == 'spikes' and l.macs == 0
        assert l.sops == pytest.approx(l.firing_rate * l.dense_macs)
    assert layers['fc1'].firing_rate == pytest.approx(txt.neurons['lif1'])
    assert layers['fc2'].firing_rate == pytest.approx(txt.neurons['lif2'])
    assert txt.ann_macs == 20 * 128 * 512 + 512 * 512
    # Image tower: the first conv takes real pixels, the projection head real features, the rest spikes.
    inputs = {l.name: l.input for l in img.layers}
    assert inputs['trunk.patch_embed.stages.0.conv'] == 'real' and inputs['trunk.head'] == 'real'
    assert all(v == 'spikes' for k, v in inputs.items() if 'blocks' in k)
    assert img.teacher.model == 'SpikeCLIP-DemoTeacher'
    assert img.ratios['snn_over_teacher'] == pytest.approx(img.energy_mj / teacher['image'].energy_mj)
    assert txt.ratios['snn_over_teacher'] == pytest.approx(txt.energy_mj / teacher['text'].energy_mj)
    d = r.to_dict()
    assert d['model'] == 'SpikeCLIP-Tiny' and d['energy_mj_per_image'] == img.energy_mj
    assert d['text']['energy_mj_per_prompt'] == txt.energy_mj and 'energy_mj_per_image' not in d['text']
    assert EnergyReport.from_dict(d['text']).to_dict() == d['text']


def test_class_order_and_batching_do_not_change_text_energy(tiny):
    model, images, desc, prompts, tokens = tiny
    a = spikeclip_energy_report(model, images, tokens, batch_size=8, progress=False).text
    b = spikeclip_energy_report(model, images, tokens.flip(0), batch_size=3, progress=False).text
    assert b.energy_mj == pytest.approx(a.energy_mj, rel=1e-9)
    assert b.neurons == pytest.approx(a.neurons, rel=1e-9)


def test_errors(tiny):
    model, images, desc, prompts, tokens = tiny
    with pytest.raises(ValueError, match='Wrong input size'):
        spikeclip_energy_report(model, torch.randn(2, 3, 64, 64), tokens, progress=False)
    with pytest.raises(ValueError, match='No data'):
        spikeclip_energy_report(model, [], tokens, progress=False)
    with pytest.raises(ValueError, match='tokens'):
        spikeclip_energy_report(model, images, tokens[:0], progress=False)


