"""``spikeclip export-nir``: write a spiking tower as a NIR graph (HDF5) for other simulators and chips.

MODEL is a SpikeCLIP open_clip model (``SpikeCLIP-SEWResNet-18``: ``--tower image|text|both``; both writes
``OUT.image.nir`` and ``OUT.text.nir``) or a timm_spike backbone (``sew_resnet18_clip``: the image tower).
Towers NIR cannot express (spiking self-attention, max-pooling stems) are refused with the layer named; nothing
is written then. See docs/nir.md.
"""
import argparse
import sys
from typing import Dict, List, Optional

from open_clip_spike.cli.errors import USER_ERRORS, fail

__all__ = ['main', 'export_model_to_nir']


class _UsageError(ValueError):
    """Bad input: reported as one line, exit code 2."""


def _build(model_name: str, tower: str, stem_only: bool):
    import open_clip
    import timm

    import open_clip_spike  # noqa: F401  (registers the SpikeCLIP configs and the timm_spike models)
    if model_name in open_clip.list_models():
        if stem_only:
            raise _UsageError('--stem-only applies to a timm_spike backbone (e.g. sew_resnet18_clip), not to a '
                              'SpikeCLIP model; pass the image tower\'s timm name')
        return open_clip.create_model(model_name, pretrained=None), True
    if timm.is_model(model_name):
        if tower not in (None, 'image'):
            raise _UsageError(f'{model_name} is an image backbone: use --tower image (or a SpikeCLIP model for '
                              f'the text tower)')
        return timm.create_model(model_name, pretrained=False), False
    raise _UsageError(f'unknown model {model_name!r}: pass a SpikeCLIP model (e.g. SpikeCLIP-SEWResNet-18; '
                      f'see open_clip.list_models()) or a timm_spike backbone (e.g. sew_resnet18_clip)')


def _load_checkpoint(model, path: str):
    from open_clip_spike.checkpoint import load_checkpoint_file
    from open_clip_spike.model import state_dict_mismatches
    state_dict = load_checkpoint_file(path)
    bad = state_dict_mismatches(model, state_dict)
    if any(bad.values()):  # torch's own message lists every key over many lines
        parts = [f'{len(v)} {kind} (e.g. {v[0]})' for kind, v in
                 (('shape mismatches', bad['shape']), ('missing keys', bad['missing']),
                  ('unexpected keys', bad['unexpected'])) if v]
        raise _UsageError(f'checkpoint {path} does not fit this model: {"; ".join(parts)}; pass the model name '
                          f'(and config) it was trained as')
    model.load_state_dict(state_dict)


def export_model_to_nir(model_name: str, out: str, checkpoint: Optional[str] = None, tower: Optional[str] = None,
                        T: Optional[int] = None, stem_only: bool = False) -> Dict[str, str]:
    """Build ``model_name`` (load ``checkpoint``), export the requested tower(s) and write them.

    Returns:
        {tower: path written}.
    """
    from open_clip_spike import nir as onir
    from timm_spike import nir as tnir

    if T is not None and T < 1:
        raise _UsageError(f'--T must be >= 1, got {T}')
    model, is_clip = _build(model_name, tower, stem_only)
    if checkpoint:
        _load_checkpoint(model, checkpoint)
    model.eval()
    if is_clip:
        return onir.save_spikeclip_nir(model, out, towers=tower or 'both', T=T, model_name=model_name)
    tnir.save_nir(model, out, T=T, stem_only=stem_only, model_name=model_name)
    return {'image-stem' if stem_only else 'image': out}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog='spikeclip export-nir', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('model', help='SpikeCLIP model (SpikeCLIP-SEWResNet-18) or timm_spike backbone (sew_resnet18_clip)')
    p.add_argument('--checkpoint', default=None, help='weights: .safetensors or an open_clip_train .pt')
    p.add_argument('--tower', choices=('image', 'text', 'both'), default=None,
                   help='which tower of a SpikeCLIP (default: both); a backbone has only image')
    p.add_argument('--T', type=int, default=None, help="time steps recorded in the file (default: the model's)")
    p.add_argument('--stem-only', action='store_true', help='export only the convolutional stem of a backbone')
    p.add_argument('--out', required=True, help='output file, e.g. tower.nir (both towers: X.image.nir, X.text.nir)')
    args = p.parse_args(argv)
    try:
        paths = export_model_to_nir(args.model, args.out, checkpoint=args.checkpoint, tower=args.tower, T=args.T,
                                    stem_only=args.stem_only)
    except USER_ERRORS as e:
        # ValueError covers refusals (the layer NIR cannot express), bad checkpoints and bad options
        return fail('spikeclip export-nir', e)
    for tower, path in paths.items():
        print(f'{tower}: {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
