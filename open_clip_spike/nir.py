"""Export SpikeCLIP's spiking towers to NIR (the spiking MLP text tower; a whole SpikeCLIP as two graphs).

The text tower's graph starts at its first spiking layer: input the concatenated token + position embeddings
[context_length * width] (``SpikingTextMLP.embed``), a table lookup that stays outside the graph (NIR has no
lookup node; the metadata says so), then LIF -> Affine -> LIF -> Affine. Like the image tower's graph
(``timm_spike.nir``), it is one time step; the tower's output is the readout over T of the graph outputs.

A SpikeCLIP exports when both towers do: a SEW-ResNet image tower (``timm_spike.nir.export_nir``) and the MLP
text tower; the result is two graphs (two files). A spiking-transformer text tower is refused like the
attention image towers, naming its first attention layer.
"""
import copy
import os
from typing import Any, Dict, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from timm_spike import nir as tnir
from timm_spike.nir import NIR_DT, build_graph, metadata_for, write_nir

from . import SpikingTextMLP

__all__ = ['export_text_nir', 'export_spikeclip_nir', 'save_spikeclip_nir', 'spikeclip_nir_paths', 'verify_spikeclip_nir',
           'check_text_exportable', 'TOWERS']

TOWERS = ('image', 'text', 'both')


class _TextMLPView(nn.Module):
    """The MLP text tower from its first spiking layer, one time step: fc2(lif2(fc1(lif1(x))))."""

    def __init__(self, tower: SpikingTextMLP):
        super().__init__()
        self.lif1 = tnir.plain_lif(tower.lif1)
        self.fc1 = tnir.plain_linear(tower.fc1)
        self.lif2 = tnir.plain_lif(tower.lif2)
        self.fc2 = tnir.plain_linear(tower.fc2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.lif2(self.fc1(self.lif1(x))))


def check_text_exportable(tower: nn.Module) -> None:
    """Raise a ``ValueError`` naming the first layer of a text tower that NIR 1.0 cannot express."""
    if isinstance(tower, SpikingTextMLP):
        tnir.check_neurons(tower)
        return
    attn = tnir.attention_layers(tower)
    if attn:
        raise ValueError(
            f"{type(tower).__name__} cannot be exported to NIR: its layer '{attn[0]}' is spiking self-attention, "
            f"which multiplies two spike tensors, and NIR 1.0 has no node for a product of two signals; "
            f"use the spiking MLP text tower (text_cfg arch 'mlp')")
    raise ValueError(f'{type(tower).__name__} is not a text tower open_clip_spike.nir can export (SpikingTextMLP)')


def export_text_nir(
        tower: SpikingTextMLP,
        T: Optional[int] = None,
        dt: float = NIR_DT,
        model_name: str = 'SpikingTextMLP',
        extra_metadata: Optional[Dict[str, Any]] = None,
):
    """Export the spiking MLP text tower to a NIR graph (input: the token embeddings, see the module doc).

    Args:
        tower: The text tower.
        T: Time steps recorded in the metadata (default: the tower's).
        dt: NIR time step in seconds.
        model_name: Name recorded in the metadata.
        extra_metadata: More flat metadata keys.

    Returns:
        The ``nir.NIRGraph``.
    """
    check_text_exportable(tower)
    n_in = tower.context_length * tower.width
    md = metadata_for(
        model_name, 'text', T if T is not None else tower.T, tower.lif_cfg,
        input_description=(
            f'token embeddings, not token ids: token_embedding(ids) + pos_embed for the {tower.context_length} '
            f'token slots (ids padded with {tower.pad_id} to context_length), concatenated slot by slot to '
            f'[{tower.context_length} * {tower.width}] = [{n_in}]; the lookup comes before the first spiking '
            f'layer and is not part of the graph (SpikingTextMLP.embed computes it from a checkpoint); presented '
            f'unchanged at each of the T steps (direct encoding)'),
        input_shape=(n_in,), dt=dt, readout=tower.readout,
        output_description='the text embedding (before normalisation) at each step',
        extra=dict({'context_length': tower.context_length, 'embed_width': tower.width,
                    'vocab_size': tower.vocab_size, 'pad_id': tower.pad_id}, **(extra_metadata or {})))
    return build_graph(_TextMLPView(_cpu_copy(tower)), torch.zeros(1, n_in), md, dt=dt)


def _cpu_copy(module: nn.Module) -> nn.Module:
    p = next(module.parameters(), None)
    if p is None or p.device.type == 'cpu':
        return module
    return copy.deepcopy(module).float().cpu()


def export_spikeclip_nir(
        model: nn.Module,
        towers: str = 'both',
        T: Optional[int] = None,
        dt: float = NIR_DT,
        model_name: str = 'SpikeCLIP',
) -> Dict[str, Any]:
    """Export the towers of a SpikeCLIP (SEW-ResNet image tower + spiking MLP text tower) to NIR graphs.

    Every requested tower is checked before any graph is built, so a refusal leaves nothing half-exported.

    Args:
        model: An ``open_clip_spike.SpikeCLIP``.
        towers: 'image', 'text' or 'both'.
        T: Time steps recorded in the metadata (default: the model's).
        dt: NIR time step in seconds.
        model_name: The open_clip model name, recorded in the metadata.

    Returns:
        {'image': graph, 'text': graph} (the requested ones).
    """
    if towers not in TOWERS:
        raise ValueError(f'Unknown tower {towers!r}; choose one of {TOWERS}')
    want = ('image', 'text') if towers == 'both' else (towers,)
    visual = getattr(model, 'visual', None)
    trunk = getattr(visual, 'trunk', None)
    if 'image' in want:
        if trunk is None:
            raise ValueError(f'{type(model).__name__} has no timm image tower (visual.trunk) to export')
        tnir.check_exportable(trunk)
    if 'text' in want:
        check_text_exportable(getattr(model, 'text', None))
    T = int(T if T is not None else model.T)
    shared = {'clip_model': model_name, 'clip_embed_dim': int(getattr(model, 'embed_dim', 0)),
              'clip_normalize': 'L2-normalise both towers\' outputs (after the readout over T) for zero-shot',
              'clip_logit_scale': float(model.logit_scale.detach().exp().item())}
    out = {}
    if 'image' in want:
        proj = getattr(visual.head, 'proj', None) if isinstance(getattr(visual, 'head', None), nn.Module) else None
        out['image'] = tnir.export_nir(trunk, T=T, dt=dt, model_name=f'{model_name}/image', extra_head=proj,
                                       extra_metadata=dict(shared, timm_model_name=tnir.timm_model_name(trunk)))
    if 'text' in want:
        out['text'] = export_text_nir(model.text, T=T, dt=dt, model_name=f'{model_name}/text',
                                      extra_metadata=shared)
    return out


def spikeclip_nir_paths(out: Union[str, os.PathLike], towers: str = 'both') -> Dict[str, str]:
    """File names for the exported towers: ``out`` itself for one tower, ``X.image.nir`` / ``X.text.nir`` for both."""
    out = os.fspath(out)
    if towers != 'both':
        return {towers: out}
    stem = out[:-4] if out.endswith('.nir') else out
    return {'image': f'{stem}.image.nir', 'text': f'{stem}.text.nir'}


def save_spikeclip_nir(model: nn.Module, out: Union[str, os.PathLike], towers: str = 'both',
                       **kwargs: Any) -> Dict[str, str]:
    """Export (``export_spikeclip_nir``) and write the graphs; returns {tower: path}.

    All graphs are built before the first file is written, and each file is written through a temporary file.
    """
    graphs = export_spikeclip_nir(model, towers=towers, **kwargs)
    paths = spikeclip_nir_paths(out, towers)
    for tower, graph in graphs.items():
        write_nir(graph, paths[tower])
    return paths


class _LayerTally:
    """Identical-spike counts per layer, summed over batches (the spikes of a large set never fit in memory)."""

    def __init__(self):
        self.same: Dict[str, float] = {}
        self.numel: Dict[str, int] = {}
        self.spikes: Dict[str, int] = {}

    def add(self, cmp: Dict[str, Any]):
        for k, v in cmp['layers'].items():
            self.same[k] = self.same.get(k, 0.) + v['identical'] * v['numel']
            self.numel[k] = self.numel.get(k, 0) + v['numel']
            self.spikes[k] = self.spikes.get(k, 0) + v['spikes_ref']

    def report(self) -> Dict[str, Dict[str, float]]:
        return {k: dict(identical=self.same[k] / self.numel[k], firing_rate=self.spikes[k] / self.numel[k])
                for k in self.numel}


@torch.no_grad()
def verify_spikeclip_nir(
        model: nn.Module,
        paths: Dict[str, str],
        images: torch.Tensor,
        class_text: torch.Tensor,
        labels: Optional[torch.Tensor] = None,
        prompts_per_class: int = 1,
        simulators: Sequence[str] = ('spikingjelly', 'snntorch'),
        batch_size: int = 50,
) -> Dict[str, Any]:
    """Re-run a SpikeCLIP's exported files in other simulators and compare with the model's own forward.

    Zero-shot as in ``open_clip_spike.zero_shot``: a class embedding is the normalised mean of its normalised
    prompt embeddings; an image's prediction is the argmax of its normalised embedding times them.

    Args:
        model: The SpikeCLIP that was exported (eval mode is used).
        paths: {'image': file, 'text': file} (``save_spikeclip_nir``).
        images: [N, 3, H, W] preprocessed images.
        class_text: Token ids of the prompts, [num_classes * prompts_per_class, L], class by class.
        labels: [N] true classes (optional: adds each run's top-1 accuracy).
        prompts_per_class: Prompts (templates) per class.
        simulators: 'spikingjelly' and/or 'snntorch'.
        batch_size: Images per forward pass.

    Returns:
        {'project': {'top1'?}, <simulator>: {'top1_agreement', 'top1'?, 'max_image_diff', 'max_text_diff',
        'image_layers': {layer: {identical, firing_rate}}, 'text_layers': {...}}, 'n': N}.
    """
    loaders = {name: getattr(tnir, f'load_{name}') for name in simulators}
    sims = {name: (load(paths['image']), load(paths['text'])) for name, load in loaders.items()}
    model.eval()

    def classifier(text_emb: torch.Tensor) -> torch.Tensor:
        e = F.normalize(text_emb, dim=-1).view(-1, prompts_per_class, text_emb.shape[-1]).mean(1)
        return F.normalize(e, dim=-1)

    text_ref = tnir.project_spikes(model.text, lambda: model.text(class_text))
    cls_ref = classifier(text_ref[0])
    out: Dict[str, Any] = {'project': {}, 'n': len(images)}
    pred_ref = []
    per_sim = {name: dict(pred=[], tally=_LayerTally(), max_image_diff=0.) for name in sims}
    for name, (_, text_sim) in sims.items():
        run = text_sim.run(model.text.embed(class_text))
        cmp = tnir.compare_runs(text_ref, run)
        tally = _LayerTally()
        tally.add(cmp)
        per_sim[name].update(cls=classifier(run[0]), max_text_diff=cmp['max_abs_diff'], text_layers=tally.report())
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        ref = tnir.project_spikes(model.visual, lambda: model.visual(x), prefix='trunk.')
        pred_ref.append((F.normalize(ref[0], dim=-1) @ cls_ref.T).argmax(-1))
        for name, (image_sim, _) in sims.items():
            run = image_sim.run(x)
            cmp = tnir.compare_runs(ref, run)
            d = per_sim[name]
            d['tally'].add(cmp)
            d['max_image_diff'] = max(d['max_image_diff'], cmp['max_abs_diff'])
            d['pred'].append((F.normalize(run[0], dim=-1) @ d['cls'].T).argmax(-1))
    pred_ref = torch.cat(pred_ref)
    if labels is not None:
        out['project']['top1'] = float((pred_ref == labels).float().mean())
    for name, d in per_sim.items():
        pred = torch.cat(d['pred'])
        res = dict(top1_agreement=float((pred == pred_ref).float().mean()), max_image_diff=d['max_image_diff'],
                   max_text_diff=d['max_text_diff'], image_layers=d['tally'].report(), text_layers=d['text_layers'])
        if labels is not None:
            res['top1'] = float((pred == labels).float().mean())
        out[name] = res
    return out
