"""The model card of a published SpikeCLIP: how to load it in both zoos, energy, zero-shot results, training."""
import json
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .files import ENERGY_REPORT, OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS, TIMM_CONFIG, TIMM_WEIGHTS

__all__ = ['model_card', 'zeroshot_rows']




def _fmt(x: float) -> str:
    return f'{x:.4g}'


def _layer_rows(layers: Any, limit: int = 10) -> List[str]:
    """Card rows for the layers with the highest energy (``timm_spike.energy`` layer records)."""
    rows = []
    for layer in layers if isinstance(layers, list) else []:
        if not isinstance(layer, Mapping) or not isinstance(layer.get('energy_mj'), (int, float)):
            continue
        rate = layer.get('firing_rate')
        rows.append((float(layer['energy_mj']),
                     f"| `{layer.get('name', '?')}` | {layer.get('ops', '')} | {layer.get('input', '')} | "
                     f"{'-' if rate is None else f'{rate:.3f}'} | {_fmt(layer['energy_mj'])} |"))
    rows.sort(key=lambda r: -r[0])
    return [r for _, r in rows[:limit]]


def _energy_section(report: Optional[Dict[str, Any]]) -> str:
    if report is None:
        return ('## Energy\n\nNo energy report was published with this checkpoint. Measure one on your data with '
                '`python -m timm_spike.energy` (firing rates depend on the input).\n')
    snn, ann = report['energy_mj_per_image'], report['ann_energy_mj_per_image']
    teacher = report.get('teacher') if isinstance(report.get('teacher'), Mapping) else None
    teacher_mj = report.get('teacher_energy_mj_per_image')
    consts = report.get('constants') or {}
    const_txt = ', '.join(f'{k} = {v}' for k, v in consts.items()) if isinstance(consts, Mapping) else str(consts)
    size = 'x'.join(str(s) for s in report['input_size']) if isinstance(report['input_size'], list) else \
        report['input_size']
    lines = [
        '## Energy',
        '',
        f"Estimated energy of the image encoder per image (T = {report['T']}, input {size}"
        + (f", measured on {report['data']}" if report.get('data') else '') + '): '
        'multiply-accumulates of layers fed by real values at E_MAC, synaptic operations of layers fed by '
        'spikes (firing rate x MACs) at E_AC, the convention of Spikformer / Spikingformer.',
        '',
        '| network | energy per image (mJ) | ratio to this model |',
        '|---|---|---|',
        f"| {report['model']} (spiking, T={report['T']}) | {_fmt(snn)} | 1 |",
        f'| same network as an ANN (T=1, every op a MAC) | {_fmt(ann)} | {ann / snn:.2f}x |',
    ]
    if isinstance(teacher_mj, (int, float)) and teacher_mj > 0:
        name = teacher.get('model', 'teacher') if teacher else 'teacher'
        tsize = 'x'.join(str(s) for s in teacher.get('input_size', [])) if teacher else ''
        lines.append(f'| CLIP teacher {name}{f" ({tsize})" if tsize else ""}, ANN | {_fmt(teacher_mj)} | '
                     f'{teacher_mj / snn:.1f}x |')
    text = report.get('text')
    if isinstance(text, Mapping) and isinstance(text.get('energy_mj_per_prompt'), (int, float)) \
            and text['energy_mj_per_prompt'] > 0:
        t_snn, t_ann = text['energy_mj_per_prompt'], text.get('ann_energy_mj_per_prompt')
        lines += ['', 'Text tower, per class prompt (class embeddings are computed once per label set):', '',
                  '| network | energy per prompt (mJ) | ratio to this model |', '|---|---|---|',
                  f"| spiking text tower (T={text.get('T', report['T'])}) | {_fmt(t_snn)} | 1 |"]
        if isinstance(t_ann, (int, float)):
            lines.append(f'| same network as an ANN | {_fmt(t_ann)} | {t_ann / t_snn:.2f}x |')
    lines += ['', f'Constants: {const_txt}. Every layer is in `{ENERGY_REPORT}`.']
    rows = _layer_rows(report.get('layers'))
    if rows:
        lines += ['', 'Layers with the highest energy:', '',
                  '| layer | ops | input | input firing rate | energy (mJ) |', '|---|---|---|---|---|', *rows]
    return '\n'.join(lines) + '\n'


# Columns of a `spikeclip zeroshot` result shown in the card (the rest, e.g. the model name, is context).
_ZEROSHOT_COLUMNS = ('top1', 'top5', 'n', 'num_classes', 'num_templates')


def zeroshot_rows(results: Any) -> List[Tuple[str, Dict[str, Any]]]:
    """``(dataset, {metric: value})`` rows from ``spikeclip zeroshot`` results (one dict or a list of them, each
    with ``top1`` and ``dataset``) or from a ``{dataset: {metric: value} | top1}`` mapping."""
    if isinstance(results, Mapping) and 'top1' in results:
        results = [results]
    if isinstance(results, (list, tuple)):
        rows = []
        for r in results:
            if not isinstance(r, Mapping) or 'top1' not in r:
                raise ValueError(f'A zero-shot result needs at least "top1" (and "dataset"), got {r!r}')
            name = str(r.get('dataset', 'dataset')) + (f" ({r['split']})" if r.get('split') else '')
            rows.append((name, {k: r[k] for k in _ZEROSHOT_COLUMNS if k in r}))
        return rows
    if isinstance(results, Mapping):
        return [(str(k), dict(v) if isinstance(v, Mapping) else {'top1': v}) for k, v in results.items()]
    raise ValueError(f'Zero-shot results must be a dict or a list of dicts, got {type(results).__name__}')


def _zeroshot_section(results: Any) -> str:
    if not results:
        return ''
    rows = zeroshot_rows(results)
    metrics: List[str] = []
    for _, value in rows:
        metrics += [m for m in value if m not in metrics]
    lines = ['## Zero-shot results', '', '| dataset | ' + ' | '.join(metrics) + ' |',
             '|---|' + '---|' * len(metrics)]
    for dataset, value in rows:
        cells = [_fmt(value[m]) if isinstance(value.get(m), (int, float)) else str(value.get(m, '')) for m in metrics]
        lines.append(f'| {dataset} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def _space_section(space_id: Optional[str]) -> str:
    if not space_id:
        return ''
    from .space import space_url
    return (f'\n**Try it in the browser**: the Space [{space_id}]({space_url(space_id)}) classifies your image with '
            f'this model and shows, for that image, the firing rate per layer, the operations and the energy.\n')


def _training_section(training: Optional[Mapping[str, Any]]) -> str:
    lines = ['## Training recipe', '']
    if training:
        lines += [f'- **{k}**: {json.dumps(v) if isinstance(v, (dict, list)) else v}' for k, v in training.items()]
    else:
        lines.append('Not recorded with this checkpoint.')
    lines += ['', 'SpikeCLIP (Lv et al., 2023) trains in two stages: alignment pre-training, distilling a CLIP '
              'teacher\'s image and text features into the spiking towers (loss 1 - cos), then dual-loss '
              'fine-tuning on a downstream label set (cross-entropy + KL to the teacher\'s class distribution), '
              'which keeps the zero-shot ability.']
    return '\n'.join(lines) + '\n'


def model_card(repo_id: Optional[str], model_name: str, architecture: str, T: Optional[int],
                energy: Optional[Dict[str, Any]], zeroshot: Optional[Mapping[str, Any]],
                training: Optional[Mapping[str, Any]], license: str, text_tower: str = 'a spiking MLP',
                space_id: Optional[str] = None) -> str:
    from huggingface_hub import ModelCardData

    card_data = ModelCardData(
        library_name='open_clip', license=license, pipeline_tag='zero-shot-image-classification',
        tags=['timm', 'open_clip', 'spikeclip', 'spiking-neural-network', 'spikingjelly', 'clip',
              'zero-shot-image-classification', 'image-feature-extraction'])
    rid = repo_id or 'ORG/NAME'
    body = f"""
# {model_name}{f' ({rid})' if repo_id else ''}

SpikeCLIP ([Lv et al., 2023](https://arxiv.org/abs/2310.06488)): a CLIP whose image and text encoders are spiking
neural networks (spikingjelly LIF neurons, T = {T} time steps). The image encoder is the timm model
`{architecture}`; the text encoder is {text_tower}. Images and prompts map into one embedding space for
zero-shot classification. Published with spikeclip (`timm_spike` for timm, `open_clip_spike` for open_clip).
{_space_section(space_id)}
## How to load

With open_clip (whole model, zero-shot):

```python
import open_clip
import open_clip_spike  # registers SpikeCLIP with open_clip

model, _, preprocess = open_clip.create_model_and_transforms('hf-hub:{rid}')
tokenizer = open_clip.get_tokenizer('hf-hub:{rid}')
```

With timm (image encoder only, returns the CLIP-space embedding):

```python
import timm
import timm_spike  # registers the spiking backbones with timm

encoder = timm.create_model('hf-hub:{rid}', pretrained=True).eval()
```

With spikeclip's helpers (a revision, safetensors only, offline from the cache with `HF_HUB_OFFLINE=1`):

```python
from open_clip_spike.hub import load_spikeclip, load_image_encoder

model, preprocess, tokenizer = load_spikeclip('{rid}', revision='main')
encoder = load_image_encoder('{rid}')
```

{_energy_section(energy)}
{_zeroshot_section(zeroshot)}
{_training_section(training)}
## Files

| file | content |
|---|---|
| `{OPEN_CLIP_CONFIG}`, `{OPEN_CLIP_WEIGHTS}` | the whole SpikeCLIP for open_clip |
| `{TIMM_CONFIG}`, `{TIMM_WEIGHTS}` | the image encoder for timm |
{f'| `{ENERGY_REPORT}` | the energy report |' if energy is not None else ''}

## Citation

SpikeCLIP: A Contrastive Language-Image Pretrained Spiking Neural Network.
[arXiv:2310.06488](https://arxiv.org/abs/2310.06488); Neural Networks 188 (2025).
"""
    return f'---\n{card_data.to_yaml()}\n---\n{body}'
