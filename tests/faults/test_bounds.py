"""Resource bombs in a model folder: a config's types are checked by key and its size estimated on the meta device
before anything is built (``timm_spike.bounds``, ``open_clip_spike.factory.check_model_config``)."""
import copy
import json
import shutil
import time

import open_clip
import pytest
import timm
import torch

import open_clip_spike  # noqa: F401
from open_clip_spike.factory import MODEL_CLASSES, check_model_config
from open_clip_spike.hub import write_hub_folder
from timm_spike.bounds import ConfigTypeError, ModelTooLargeError, estimate_size

from fault_helpers import FASHION_MNIST
from test_bad_input import _one_line_error

TINY = 'SpikeCLIP-Tiny'


@pytest.fixture(scope='module')
def hub_folder(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp('bounds') / 'repo'
    write_hub_folder(d, open_clip.create_model(TINY).eval(), TINY, verify=False)
    return d


def _edit(src, dst, file, path, value):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / file).read_text())
    node = cfg
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    (dst / file).write_text(json.dumps(cfg))
    return dst


DEPTH = ('model_cfg', 'vision_cfg', 'timm_model_kwargs', 'depth')


def test_estimate_is_the_parameter_count():
    cfg = {k: v for k, v in open_clip.get_model_config(TINY).items() if k not in ('model_class', 'custom_text')}
    cfg['vision_cfg']['timm_model_kwargs']['depth'] = 5  # extrapolated from depths 1 and 2
    with torch.device('meta'):
        real = MODEL_CLASSES['SpikeCLIP'](**copy.deepcopy(cfg))
    params, _ = estimate_size(lambda c: MODEL_CLASSES['SpikeCLIP'](**c), cfg)
    assert params == sum(p.numel() for p in real.parameters())


@pytest.mark.parametrize('command', ['zeroshot', 'energy'])
@pytest.mark.parametrize('path, value, what', [
    (DEPTH, 10_000, 'vision depth 10,000'),
    (('model_cfg', 'text_cfg', 'hidden_dim'), 10 ** 7, 'text hidden_dim 10**7'),
])
def test_huge_config_is_refused_before_building(hub_folder, tmp_path, capsys, fault_log, command, path, value, what):
    where = 'spikeclip zeroshot --model local-dir:' if command == 'zeroshot' else 'spikeclip energy local-dir:'
    fault_log.tried(f'{what} in open_clip_config.json', where)
    d = _edit(hub_folder, tmp_path / 'bomb', 'open_clip_config.json', path, value)
    start = time.perf_counter()
    if command == 'zeroshot':
        from open_clip_spike.cli.zeroshot import main
        rc = main(['--model', f'local-dir:{d}', '--dataset', str(FASHION_MNIST), '--no-progress'])
    else:
        from open_clip_spike.cli.energy import main
        rc = main([f'local-dir:{d}', '--out', str(tmp_path / 'e'), '--no-progress'])
    assert rc == 2
    assert time.perf_counter() - start < 5  # the check itself: 0.1-0.2 s (was a 60-80 s build, 8-9 GB)
    _one_line_error(capsys, 'over the limit of 1e+09', '$SPIKECLIP_MAX_PARAMS')
    fault_log.survived()


def test_string_for_a_number_names_the_key(hub_folder, tmp_path, fault_log):
    fault_log.tried('"depth": "4" in open_clip_config.json and config.json',
                    "open_clip / timm create_model('local-dir:')")
    d = _edit(hub_folder, tmp_path / 'str', 'open_clip_config.json', DEPTH, '4')
    with pytest.raises(ConfigTypeError, match=r"vision_cfg\.timm_model_kwargs\.depth must be an integer, got '4'"):
        open_clip.create_model(f'local-dir:{d}')
    d = _edit(hub_folder, tmp_path / 'str-timm', 'config.json', ('model_args', 'depth'), '4')
    with pytest.raises(ConfigTypeError, match=r"config\.json model_args: depth must be a number, got '4'"):
        timm.create_model(f'local-dir:{d}', pretrained=True)
    fault_log.survived()


def test_huge_timm_config_is_refused(hub_folder, tmp_path, fault_log):
    fault_log.tried('depth 10,000 in config.json', "timm.create_model('local-dir:')")
    d = _edit(hub_folder, tmp_path / 'timm', 'config.json', ('model_args', 'depth'), 10_000)
    start = time.perf_counter()
    with pytest.raises(ModelTooLargeError, match=f'{d}/config.json .* over the limit of 1e\\+09'):
        timm.create_model(f'local-dir:{d}', pretrained=True)
    assert time.perf_counter() - start < 5
    fault_log.survived()


def test_limits_can_be_raised_or_lowered(monkeypatch):
    cfg = open_clip.get_model_config(TINY)
    params, acts = check_model_config(copy.deepcopy(cfg))
    assert params == sum(p.numel() for p in open_clip.create_model(TINY).parameters())
    assert acts > 0
    with pytest.raises(ModelTooLargeError, match='over the limit of 1e\\+06'):
        check_model_config(copy.deepcopy(cfg), max_params=10 ** 6)
    monkeypatch.setenv('SPIKECLIP_MAX_ACTIVATION_BYTES', '1e5')
    with pytest.raises(ModelTooLargeError, match='GiB of layer outputs per sample, over the limit'):
        open_clip.create_model(TINY)
    monkeypatch.setenv('SPIKECLIP_MAX_ACTIVATION_BYTES', str(acts))
    open_clip.create_model(TINY)
