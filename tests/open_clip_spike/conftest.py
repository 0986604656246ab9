"""Shared fixtures for open_clip_spike tests: tiny SpikeCLIP and teacher models, tokenizers, checkpoints.

Models are built fresh per test (cheap: well under a second) so a test may train or lock them freely.
"""
import os

import pytest
import torch

import open_clip
import open_clip_spike  # noqa: F401  (registers the SpikeCLIP configs with open_clip)

TINY = 'SpikeCLIP-Tiny'
PAPER = 'SpikeCLIP-Spikingformer-4-384'
TEACHER = 'SpikeCLIP-DemoTeacher'


@pytest.fixture
def tiny_model():
    """SpikeCLIP-Tiny in eval mode, random weights (seeded by the autouse _seed fixture)."""
    return open_clip.create_model(TINY).eval()


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
