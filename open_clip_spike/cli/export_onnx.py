"""``spikeclip export-onnx``: write a spiking tower as an ONNX file (``torch.onnx.export(..., dynamo=True)``).

MODEL is a SpikeCLIP open_clip model (``SpikeCLIP-Tiny``: ``--tower image|text|both``; both writes
``OUT.image.onnx`` and ``OUT.text.onnx``) or a timm_spike backbone (``spikingformer_clip``: the image tower).
Every file is run with onnxruntime on a check input (random normalised images, or two tokenized prompts) and the
largest absolute difference from eager PyTorch is printed. The batch dimension is dynamic. Needs the export extra:
``pip install 'spikeclip[export]'``. See docs/export.md.
"""
import argparse
import os
import sys
from typing import Dict, List, Optional

from .export_nir import _build, _load_checkpoint, _UsageError

__all__ = ['main', 'export_model_to_onnx']

MIN_OPSET = 18  # the oldest opset torch.onnx.export(dynamo=True) implements (older: a best-effort conversion)


def export_model_to_onnx(model_name: str, out: str, checkpoint: Optional[str] = None, tower: Optional[str] = None,
                         normalize: bool = False, batch: int = 2, static_batch: bool = False,
                         opset: Optional[int] = None) -> Dict[str, Dict[str, object]]:
    """Build ``model_name`` (load ``checkpoint``), export the requested tower(s) to ONNX and check them.

    Returns:
        {tower: {'path': file written, 'max_abs_diff': onnxruntime vs eager on the check input}}.
    """
    if batch < 1:
        raise _UsageError(f'--batch must be >= 1, got {batch}')
    if batch < 2 and not static_batch:
        raise _UsageError('a dynamic batch needs a check batch of at least 2 (torch.export fixes a batch of 1); '
                          'pass --batch 2 or more, or --static-batch')
    if opset is not None and opset < MIN_OPSET:
        raise _UsageError(f'--opset {opset}: torch\'s ONNX exporter writes opset {MIN_OPSET} or later (an older one only '
                          f'by a conversion that can fail and keep {MIN_OPSET}); pass {MIN_OPSET} or later, or leave it '
                          f'out')
    if os.path.isdir(out):
        raise _UsageError(f'--out {out} is a folder; pass a file name such as {os.path.join(out, "model.onnx")}')
    for module in ('onnx', 'onnxscript', 'onnxruntime'):
        try:
            __import__(module)
        except ImportError:
            raise _UsageError(f"ONNX export needs {module}: pip install 'spikeclip[export]'") from None
    model, is_clip = _build(model_name, tower, stem_only=False)
    if checkpoint:
        _load_checkpoint(model, checkpoint)
    model.eval()
    if is_clip:
        from open_clip_spike.export import save_towers_onnx
        return save_towers_onnx(model, out, towers=tower or 'both', normalize=normalize, batch=batch,
                                dynamic_batch=not static_batch, opset_version=opset)
    from timm_spike.export import example_input, onnx_max_abs_diff, save_onnx
    x = example_input(model, batch)
    save_onnx(model, x, out, dynamic_batch=not static_batch, input_names=['image'], output_names=['output'],
              opset_version=opset)
    return {'image': {'path': out, 'max_abs_diff': onnx_max_abs_diff(out, model, x)}}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog='spikeclip export-onnx', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('model', help='SpikeCLIP model (SpikeCLIP-Tiny) or timm_spike backbone (spikingformer_clip)')
    p.add_argument('--checkpoint', default=None, help='weights: .safetensors or an open_clip_train .pt')
    p.add_argument('--tower', choices=('image', 'text', 'both'), default=None,
                   help='which tower of a SpikeCLIP (default: both); a backbone has only image')
    p.add_argument('--out', required=True, help='output file, e.g. tower.onnx (both towers: X.image.onnx, X.text.onnx)')
    p.add_argument('--normalize', action='store_true', help='L2-normalise the embeddings inside the graph')
    p.add_argument('--batch', type=int, default=2, help='batch of the example and check input (default 2)')
    p.add_argument('--static-batch', action='store_true', help='fix the batch dimension to --batch')
    p.add_argument('--opset', type=int, default=None, help="ONNX opset (default: torch's exporter's)")
    args = p.parse_args(argv)
    try:
        result = export_model_to_onnx(args.model, args.out, checkpoint=args.checkpoint, tower=args.tower,
                                      normalize=args.normalize, batch=args.batch, static_batch=args.static_batch,
                                      opset=args.opset)
    except (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
        print(f'spikeclip export-onnx: error: {e}', file=sys.stderr)
        return 2
    for tower, r in result.items():
        print(f"{tower}: {r['path']} (onnxruntime vs eager PyTorch on a check batch of {args.batch}: max abs "
              f"difference {r['max_abs_diff']:.3g})")
    return 0


if __name__ == '__main__':
    sys.exit(main())
