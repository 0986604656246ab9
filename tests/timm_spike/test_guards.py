"""Input guards of every timm_spike image model: a wrong input is an error that says what and where, never a
plausible embedding (timm_spike.layers.guards)."""
import pytest
import timm
import torch

import timm_spike  # noqa: F401
from timm_spike.layers.guards import MAX_TIME_STEPS, finite_checks

TINY = {
    'spikingformer_clip': dict(embed_dim=32, depth=1, num_heads=4),
    'sew_resnet18_cifar': dict(),
}


@pytest.fixture(scope='module', params=sorted(TINY))
def model(request):
    torch.manual_seed(0)
    return timm.create_model(request.param, T=2, **TINY[request.param]).eval()


def test_non_finite_images_are_refused_with_count_and_samples(model):
    x = torch.randn(3, 3, 32, 32)
    x[1, 0, 0, :4] = float('nan')
    x[2, 1, 5, 5] = float('inf')
    with pytest.raises(ValueError, match=r'5 non-finite values \(4 NaN, 1 inf\).* in 2 of 3 samples \(index 1, 2\)'):
        model(x)
    with finite_checks(False):  # the documented way out: the model then computes on what it got
        assert model(x).shape[0] == 3


def test_integer_images_are_refused_and_other_floats_converted(model):
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match='torch.uint8 is not floating point.*preprocessed'):
        model((x * 255).to(torch.uint8))
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(model(x.double()), ref)  # converted to the model's float32, same result
        assert model(x.half()).dtype == torch.float32


def test_a_sequence_of_another_length_than_T_is_refused(model):
    with pytest.raises(ValueError, match='runs T=2 time steps, but the input has 3'):
        model(torch.randn(3, 2, 3, 32, 32))
    assert model(torch.randn(2, 2, 3, 32, 32)).shape[0] == 2


@pytest.mark.parametrize('name', sorted(TINY))
def test_time_steps_are_bounded_before_any_allocation(name):
    with pytest.raises(ValueError, match=f'exceeds the supported maximum of {MAX_TIME_STEPS}'):
        timm.create_model(name, T=10 ** 6, **TINY[name])
    with pytest.raises(ValueError, match='integer >= 1'):
        timm.create_model(name, T=0, **TINY[name])


def test_a_checkpoint_of_another_dtype_is_refused_with_the_key(tmp_path):
    from safetensors.torch import save_file
    kw = TINY['spikingformer_clip']
    sd = timm.create_model('spikingformer_clip', **kw).state_dict()
    sd['head.weight'] = sd['head.weight'].to(torch.int32)
    save_file(sd, str(tmp_path / 'w.safetensors'))
    with pytest.raises(ValueError, match=r'head\.weight: int32 vs model float32'):
        timm.create_model('spikingformer_clip', pretrained=True, **kw,
                          pretrained_cfg_overlay=dict(file=str(tmp_path / 'w.safetensors')))
