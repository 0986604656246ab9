"""Shared fixtures for open_clip_spike tests: tiny SpikeCLIP and teacher models, tokenizers, checkpoints.

Models are built fresh per test (cheap: well under a second) so a test may train or lock them freely.
"""
import os
from pathlib import Path

import pytest
import torch

import open_clip
from open_clip.transform import PreprocessCfg, image_transform_v2
import open_clip_spike  # noqa: F401  (registers the SpikeCLIP configs with open_clip)

TINY = 'SpikeCLIP-Tiny'
PAPER = 'SpikeCLIP-Spikingformer-4-384'
TEACHER = 'SpikeCLIP-DemoTeacher'
FASHION_MNIST = Path(__file__).parents[1] / 'fixtures' / 'fashion_mnist'  # 400 train / 200 test images, IDX .gz


@pytest.fixture
def tiny_model():
    """SpikeCLIP-Tiny in eval mode, random weights (seeded by the autouse _seed fixture)."""
    return open_clip.create_model(TINY).eval()


def calibrate_batchnorm(model, images):
    """Set every BN layer's running stats to those of one batch (in place), then switch to eval mode.

    An untrained spiking tower in eval mode is silent (BN's initial running stats leave every LIF below
    threshold), so all images get the same embedding; a trained model has real running stats.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: after one batch, exactly that batch's stats
    model.train()
    with torch.no_grad():
        model.encode_image(images)
    for bn in bns:
        bn.momentum = 0.1
    return model.eval()


@pytest.fixture
def calibrated_tiny_model(tiny_model):
    """SpikeCLIP-Tiny in eval mode with BN running stats from 10 Fashion-MNIST test images (see calibrate_batchnorm)."""
    from open_clip_spike.data import IDXDataset
    preprocess = image_transform_v2(PreprocessCfg(**tiny_model.visual.preprocess_cfg), False)
    data = IDXDataset(FASHION_MNIST, 'test', transform=preprocess)
    images = torch.stack([data[i][0] for i in range(0, 200, 20)])
    return calibrate_batchnorm(tiny_model, images)


@pytest.fixture
def tiny_tokenizer():
    return open_clip.get_tokenizer(TINY)


@pytest.fixture
def teacher_model():
    """SpikeCLIP-DemoTeacher: a small ordinary open_clip CLIP (ViT 32x32, 512-d), eval mode, random weights."""
    return open_clip.create_model(TEACHER).eval()


@pytest.fixture
def teacher_tokenizer():
    return open_clip.get_tokenizer(TEACHER)


@pytest.fixture
def images():
    """A batch of 4 normalised-looking 32x32 RGB images."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 32, 32, generator=g)


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_model):
    """(path, model): SpikeCLIP-Tiny weights saved as safetensors, and the model they came from."""
    from safetensors.torch import save_file
    path = os.fspath(tmp_path / 'spikeclip_tiny.safetensors')
    save_file(tiny_model.state_dict(), path)
    return path, tiny_model


@pytest.fixture
def teacher_checkpoint(tmp_path, teacher_model):
    """(path, model): DemoTeacher weights saved as safetensors (for --distill-pretrained <file>)."""
    from safetensors.torch import save_file
    path = os.fspath(tmp_path / 'demo_teacher.safetensors')
    save_file(teacher_model.state_dict(), path)
    return path, teacher_model
