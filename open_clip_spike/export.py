"""Export SpikeCLIP's towers for deployment: ``torch.export`` programs and ONNX files (one per tower).

Each tower is a module of its own that takes tensors and returns embeddings, the contract of open_clip's
``encode_image`` / ``encode_text``:

- ``ImageTower``: preprocessed images ``[B, 3, H, W]`` (float) -> image embeddings ``[B, embed_dim]``;
- ``TextTower``: token ids ``[B, context_length]`` (int64, from the model's tokenizer) -> text embeddings.

Both are L2-normalised when built with ``normalize=True`` (what zero-shot classification compares). The graphs
hold the spiking network for the model's T (see ``timm_spike.export``); tokenizing and image preprocessing stay
outside, as they do for open_clip's own models. See docs/export.md.
"""
import os
import tempfile
from typing import Dict, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from timm_spike.export import export_program, onnx_max_abs_diff, save_onnx
from timm_spike.layers.guards import check_image
from timm_spike.utils import atomic_write

__all__ = ['ImageTower', 'TextTower', 'TOWERS', 'tower_module', 'example_inputs', 'export_towers',
           'onnx_paths', 'save_towers_onnx', 'CHECK_PROMPTS']

TOWERS = ('image', 'text', 'both')
CHECK_PROMPTS = ('a photo of a cat.', 'a diagram of a spiking neuron.')  # the text tower's default check input


class ImageTower(nn.Module):
    """The image tower of a SpikeCLIP as a module: images -> embeddings (``model.encode_image``)."""

    def __init__(self, model: nn.Module, normalize: bool = False):
        super().__init__()
        self.visual = model.visual
        self.T = int(model.T)
        self.normalize = bool(normalize)
        self.image_size = _image_size(model)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        p = next(self.visual.parameters(), None)
        image = check_image(image, T=self.T, dtype=None if p is None else p.dtype)
        features = self.visual(image)
        return F.normalize(features, dim=-1) if self.normalize else features


class TextTower(nn.Module):
    """The text tower of a SpikeCLIP as a module: token ids -> embeddings (``model.encode_text``)."""

    def __init__(self, model: nn.Module, normalize: bool = False):
        super().__init__()
        self.text = model.text
        self.context_length = int(model.context_length)
        self.normalize = bool(normalize)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        features = self.text(text)
        return F.normalize(features, dim=-1) if self.normalize else features


def _image_size(model: nn.Module):
    size = getattr(model.visual, 'image_size', None)
    if size is None:
        size = getattr(getattr(model, 'vision_cfg', None), 'image_size', 224)
    return (size, size) if isinstance(size, int) else tuple(size)


def _check_spikeclip(model: nn.Module) -> None:
    if not (hasattr(model, 'visual') and hasattr(model, 'text') and hasattr(model, 'T')):
        raise ValueError(f'{type(model).__name__} is not a SpikeCLIP (no visual / text towers with a T); '
                         f'export a timm_spike backbone with timm_spike.export')


def tower_module(model: nn.Module, tower: str, normalize: bool = False) -> nn.Module:
    """``ImageTower`` or ``TextTower`` of a SpikeCLIP (sharing its parameters)."""
    _check_spikeclip(model)
    if tower == 'image':
        return ImageTower(model, normalize)
    if tower == 'text':
        return TextTower(model, normalize)
    raise ValueError(f"Unknown tower {tower!r}; choose 'image' or 'text'")


def example_inputs(model: nn.Module, tower: str, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A check input for a tower: ``batch`` images drawn from N(0, 1) (normalised pixels), or ``batch`` prompts
    (``CHECK_PROMPTS``, repeated) tokenized with open_clip's CLIP tokenizer at the model's context length."""
    _check_spikeclip(model)
    if batch < 1:
        raise ValueError(f'batch must be >= 1, got {batch}')
    device = next(model.parameters()).device
    if tower == 'image':
        g = torch.Generator().manual_seed(seed)
        p = next(model.visual.parameters())
        return torch.randn(batch, 3, *_image_size(model), generator=g).to(device, p.dtype)
    if tower == 'text':
        import open_clip
        prompts = [CHECK_PROMPTS[i % len(CHECK_PROMPTS)] for i in range(batch)]
        tokens = open_clip.tokenize(prompts, context_length=int(model.context_length))
        if int(tokens.max()) >= int(model.vocab_size):
            raise ValueError(f'the text tower has a vocabulary of {model.vocab_size} tokens, fewer than the CLIP '
                             f'tokenizer\'s; pass token ids of its own tokenizer')
        return tokens.to(device)
    raise ValueError(f"Unknown tower {tower!r}; choose 'image' or 'text'")


def _towers(towers: str):
    if towers not in TOWERS:
        raise ValueError(f'Unknown tower {towers!r}; choose one of {TOWERS}')
    return ('image', 'text') if towers == 'both' else (towers,)


def export_towers(model: nn.Module, towers: str = 'both', normalize: bool = False, batch: int = 2,
                  dynamic_batch: bool = True) -> Dict[str, torch.export.ExportedProgram]:
    """``torch.export`` programs of a SpikeCLIP's towers ({'image': ..., 'text': ...}, the requested ones)."""
    return {t: export_program(tower_module(model, t, normalize), example_inputs(model, t, batch),
                              dynamic_batch=dynamic_batch) for t in _towers(towers)}


def onnx_paths(out: Union[str, os.PathLike], towers: str = 'both') -> Dict[str, str]:
    """File names for the exported towers: ``out`` itself for one tower, ``X.image.onnx`` / ``X.text.onnx`` for
    both."""
    out = os.fspath(out)
    if towers != 'both':
        return {_towers(towers)[0]: out}
    stem = out[:-5] if out.endswith('.onnx') else out
    return {'image': f'{stem}.image.onnx', 'text': f'{stem}.text.onnx'}


def save_towers_onnx(model: nn.Module, out: Union[str, os.PathLike], towers: str = 'both', normalize: bool = False,
                     batch: int = 2, dynamic_batch: bool = True, check: bool = True,
                     opset_version: Optional[int] = None) -> Dict[str, Dict[str, object]]:
    """Write a SpikeCLIP's towers as ONNX files and compare onnxruntime's outputs with eager PyTorch's.

    Every requested tower is exported before the first file is written; each file is written atomically, so a
    failure leaves no partial file. Inputs are named ``image`` / ``text``, outputs ``image_features`` /
    ``text_features``; the batch dimension is dynamic unless ``dynamic_batch=False``.

    Args:
        model: An ``open_clip_spike.SpikeCLIP`` (on the CPU).
        out: Output path (see ``onnx_paths``).
        towers: 'image', 'text' or 'both'.
        normalize: L2-normalise the embeddings inside the graph.
        batch: Batch of the example (and check) inputs (``example_inputs``); 2 or more with ``dynamic_batch``.
        dynamic_batch: Keep the batch dimension symbolic.
        check: Run each file with onnxruntime on the check input and report the largest difference from eager.
        opset_version: ONNX opset (default: the exporter's).

    Returns:
        {tower: {'path': file written, 'max_abs_diff': float or None}}.
    """
    want = _towers(towers)
    paths = onnx_paths(out, towers)
    modules = {t: tower_module(model, t, normalize) for t in want}
    inputs = {t: example_inputs(model, t, batch) for t in want}
    result: Dict[str, Dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix='spikeclip-onnx-') as tmp:
        staged = {}
        for t in want:  # export every tower before writing any file where the user asked
            staged[t] = save_onnx(modules[t], inputs[t], os.path.join(tmp, f'{t}.onnx'), dynamic_batch=dynamic_batch,
                                  input_names=[t], output_names=[f'{t}_features'], opset_version=opset_version)
            diff = onnx_max_abs_diff(staged[t], modules[t], inputs[t]) if check else None
            result[t] = {'path': paths[t], 'max_abs_diff': diff}
        for t in want:
            with open(staged[t], 'rb') as f:
                data = f.read()
            atomic_write(paths[t], data)
    return result
