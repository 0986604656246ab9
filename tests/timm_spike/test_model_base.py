"""The one model base (timm_spike.models._base.SpikingNet): every family derives from it, keeps timm's API in one
place, and the refactor onto it left the models' parameters and outputs as they were."""
import hashlib

import pytest
import timm
import torch
import torch.nn as nn

import timm_spike  # noqa: F401  (registers the models)
from timm_spike.models import QKFormer, SEWResNet, SpikeDrivenTransformer, Spikformer, Spikingformer
from timm_spike.models import SpikingNet, describe_mismatches, state_dict_mismatches

FAMILIES = (Spikingformer, Spikformer, SpikeDrivenTransformer, QKFormer, SEWResNet)
API = ('forward', 'forward_features', 'forward_features_seq', 'forward_head', 'forward_intermediates',
       'prune_intermediate_layers', 'reset_classifier', 'get_classifier', 'set_grad_checkpointing',
       'no_weight_decay')

# name -> (small config, digest of the state dict's names and shapes, and for the models whose neurons fire on
# this input: sum and absolute sum of the logits, sum of the batch-first features), recorded from the models
# before they moved onto the base (T=2, seed 0, BN variances 0.05, a seeded 2x3x32x32 input).
CASES = {
    'spikingformer_4_256': (dict(depth=2), '48fad067081128ef', (0.02758, 1.18734, 4.6757)),
    'spikformer_4_384': (dict(embed_dim=64, depth=1, num_heads=4), 'c2038ba78a634b52', None),
    'sdt_2_512': (dict(embed_dim=64, depth=1, num_heads=4), '5584aa2644b665c2', None),
    'qkformer_4_384': (dict(embed_dim=64, depths=(1, 1, 1), num_heads=4), '5fb1e1c78c14f4ef',
                       (0.00199, 0.04881, 41.0)),
    'sew_resnet18_cifar': (dict(layers=(1, 1, 1, 1)), 'b4deaf526e9ad855', (0.10102, 1.05137, 3369.5)),
}


@pytest.mark.parametrize('cls', FAMILIES, ids=lambda c: c.__name__)
def test_every_family_takes_the_api_from_the_base(cls):
    assert issubclass(cls, SpikingNet)
    for name in API:  # written once: no family (nor the zoo's base) defines its own copy
        owner = next(k for k in cls.__mro__ if name in vars(k))
        assert owner is SpikingNet, f'{cls.__name__}.{name} is defined again in {owner.__name__}'


@pytest.mark.parametrize('name', CASES)
def test_parameters_and_outputs_as_before_the_base(name):
    kw, keys_digest, stats = CASES[name]
    torch.manual_seed(0)
    model = timm.create_model(name, T=2, **kw).eval()
    names = '\n'.join(f'{k}:{tuple(v.shape)}' for k, v in model.state_dict().items())
    assert hashlib.sha256(names.encode()).hexdigest()[:16] == keys_digest
    if stats is None:
        return
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_var.fill_(0.05)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out, feats = model(x), model.forward_features(x)
    got = (float(out.sum()), float(out.abs().sum()), float(feats.sum()))
    assert got == pytest.approx(stats, rel=1e-3, abs=1e-4)


def test_state_dict_mismatches_name_the_keys():
    model = nn.Sequential(nn.Linear(2, 3))
    sd = {'0.weight': torch.zeros(4, 2), 'extra': torch.zeros(1)}
    bad = state_dict_mismatches(model, sd)
    assert bad == dict(missing=['0.bias'], unexpected=['extra'],
                       shape=['0.weight: checkpoint (4, 2) vs model (3, 2)'])
    assert describe_mismatches(bad) == ('shape mismatches: 0.weight: checkpoint (4, 2) vs model (3, 2); '
                                        'missing keys: 0.bias; unexpected keys: extra')
    assert describe_mismatches(dict(missing=list('abc'), unexpected=[], shape=[]), n=2) == \
        'missing keys: a, b, ... (3 in all)'
    assert describe_mismatches(state_dict_mismatches(model, model.state_dict())) == ''


def test_shape_mismatches_name_every_part_first():
    own = {'visual.a': torch.zeros(1), 'visual.b': torch.zeros(1), 'text.a': torch.zeros(1), 'scale': torch.zeros(1)}
    bad = state_dict_mismatches(own, {k: torch.zeros(2) for k in own})
    assert [s.split(':')[0] for s in bad['shape']] == ['visual.a', 'text.a', 'scale', 'visual.b']
