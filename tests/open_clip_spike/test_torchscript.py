"""check_torchscript: the reason a SpikeCLIP cannot be scripted, given before open_clip's silent fallback."""
import warnings

import pytest
import torch

import open_clip
from open_clip_spike import list_spikeclip_models
from open_clip_spike.torchscript import check_torchscript, torchscript_blocker


def test_spiking_model_is_refused_with_the_module_that_blocks(tiny_model):
    reason = check_torchscript(tiny_model)
    assert reason is not None and reason.startswith('TorchScript cannot compile spiking layers: ')
    assert 'visual.trunk.patch_embed.stages.0.conv (spikingjelly.activation_based.layer' in reason
    assert 'Drop --torchscript' in reason and '\n' not in reason
    # the text tower alone is refused for its own neurons
    assert torchscript_blocker(tiny_model.text) == 'lif1 (timm_spike.layers.neuron.StatelessLIFNode)'


def test_the_refusal_is_true(tiny_model):
    # what the check predicts: torch.jit.script fails inside spikingjelly (a new model: a failed attempt leaves
    # half-compiled classes behind)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # torch.jit.script is deprecated
        with pytest.raises(Exception, match='(?s)spikingjelly|variable number of arguments|Tuple\\[str\\]'):
            torch.jit.script(tiny_model.text)


@pytest.mark.parametrize('name', [n for n in list_spikeclip_models() if n != 'SpikeCLIP-DemoTeacher'])
def test_every_spiking_config_is_refused_by_name(name):
    # by name: built from the config on the meta device, no weights, no download
    assert check_torchscript(name).startswith('TorchScript cannot compile spiking layers: visual.')


def test_ann_and_unknown_names_are_left_to_open_clip(teacher_model):
    assert check_torchscript(teacher_model) is None
    assert check_torchscript('SpikeCLIP-DemoTeacher') is None  # an ordinary open_clip CLIP
    assert check_torchscript('ViT-B-32') is None
    assert check_torchscript('no-such-model') is None
    assert torchscript_blocker(torch.nn.Linear(2, 2)) is None
