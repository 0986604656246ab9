"""``spikeclip push``: publish a SpikeCLIP checkpoint on the Hugging Face Hub, or write the same folder locally.

Energy always travels with the checkpoint: without ``--energy-report`` the command measures it itself on the
sample images bundled with timm_spike (``open_clip_spike.energy.energy_for_publishing``), and the report and the
model card say which images those were. ``--space ORG/NAME`` also publishes a Gradio Space with the zero-shot page
of the model (``open_clip_spike.hub.space``), linked from the card.
"""
import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, List, Mapping, Optional

from open_clip_spike.cli.errors import fail, io_error_line
from open_clip_spike.energy import PUBLISH_ENERGY_DATA, energy_for_publishing
from open_clip_spike.hub import push_space, push_to_hub, space_files, space_url, write_hub_folder, write_space_folder


def _read_json(path: Optional[str], what: str) -> Optional[Any]:
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f'{what} file not found: {p}')
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f'{what} file {p} is not valid JSON: {e}') from e


def _read_zeroshot(paths: Optional[List[str]]) -> Any:
    if not paths:
        return None
    results = [_read_json(path, 'Zero-shot results') for path in paths]
    if len(results) == 1:
        return results[0]
    if not all(isinstance(r, Mapping) and 'top1' in r for r in results):
        raise ValueError('Several --zeroshot-results files must each be one `spikeclip zeroshot` result (with top1)')
    return results


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog='spikeclip push',
        description='Publish a SpikeCLIP checkpoint on the Hugging Face Hub (open_clip + timm layouts, energy '
                    'report, model card), or write the same folder locally with --local-dir.')
    p.add_argument('model', help='open_clip model config of the checkpoint, e.g. SpikeCLIP-Tiny')
    p.add_argument('--checkpoint', required=True,
                   help='weights: .safetensors, or an open_clip_train .pt (read with weights_only=True)')
    p.add_argument('--repo-id', default=None, help='ORG/NAME on the Hub (needed to upload)')
    p.add_argument('--local-dir', default=None,
                   help='write the repository folder here and do not upload (loadable with local-dir:)')
    p.add_argument('--energy-report', default=None,
                   help='energy report JSON (spikeclip energy --output); default: measured here on the sample '
                        f'images bundled with timm_spike ({PUBLISH_ENERGY_DATA}), which the card then names')
    p.add_argument('--zeroshot-results', nargs='+', default=None, metavar='FILE',
                   help='`spikeclip zeroshot --output` JSON files (or one {dataset: {metric: value}} JSON) '
                        'for the card')
    p.add_argument('--training-recipe', default=None, help='JSON {setting: value} for the card')
    p.add_argument('--private', action='store_true', help='create the repository private')
    p.add_argument('--revision', default=None, help='branch to commit to (created if missing; default main)')
    p.add_argument('--commit-message', default=None)
    p.add_argument('--license', default='apache-2.0')
    p.add_argument('--overwrite', action='store_true', help='replace an existing --local-dir folder')
    p.add_argument('--no-verify', action='store_true', help='skip reloading the folder with open_clip and timm')
    p.add_argument('--space', default=None, metavar='ORG/NAME',
                   help='also publish a Gradio Space with the zero-shot page of --repo-id (linked from the card); '
                        'with --local-dir its folder is written beside it (--space-dir)')
    p.add_argument('--space-dir', default=None,
                   help='where --local-dir writes the Space folder (default: the --local-dir path + "-space")')
    p.add_argument('--space-requirement', default=None,
                   help="how the Space installs spikeclip (default spikeclip[app]==<this version>; e.g. "
                        "'spikeclip[app] @ git+https://...')")
    p.add_argument('--token', default=None,
                   help='Hub token (default: HF_TOKEN or `hf auth login`; prefer those: a command-line token is '
                        'visible to other users of the machine)')
    args = p.parse_args(argv)
    if args.repo_id is None and args.local_dir is None:
        p.error('give --repo-id ORG/NAME to upload, or --local-dir DIR to write the folder only')
    if args.space is not None and args.repo_id is None:
        p.error('a Space loads the model by its repo id: give --repo-id ORG/NAME with --space')
    space_dir = args.space_dir or (f'{args.local_dir.rstrip("/")}-space' if args.local_dir and args.space else None)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        for folder in (args.local_dir, space_dir):
            if folder is not None and Path(folder).exists() and not args.overwrite:
                raise FileExistsError(f'{folder} exists; choose a new folder or pass --overwrite')
        space = dict(requirement=args.space_requirement, license=args.license)
        if args.space is not None:
            space_files(args.repo_id, **space)  # a bad requirement or missing gradio fails before any work
        model, energy = args.checkpoint, args.energy_report
        if energy is None:
            model, energy = energy_for_publishing(args.checkpoint, args.model)
            print(f"no --energy-report: measured {energy['energy_mj_per_image']:.4g} mJ per image on {energy['data']}")
        common = dict(
            energy_report=energy,
            zeroshot_results=_read_zeroshot(args.zeroshot_results),
            training=_read_json(args.training_recipe, 'Training recipe'),
            license=args.license, verify=not args.no_verify, space_id=args.space)
        if args.local_dir is not None:
            folder = write_hub_folder(args.local_dir, model, args.model, repo_id=args.repo_id,
                                      overwrite=args.overwrite, **common)
            print(f'wrote {folder}: ' + ', '.join(sorted(f.name for f in folder.iterdir())))
            print(f"load it with open_clip.create_model_and_transforms('local-dir:{folder}') or "
                  f"timm.create_model('local-dir:{folder}', pretrained=True)")
            if args.space is not None:
                written = write_space_folder(space_dir, args.repo_id, overwrite=args.overwrite, **space)
                print(f'wrote the Space {args.space} to {written}: ' + ', '.join(sorted(f.name for f in written.iterdir())))
            return 0
        info = push_to_hub(model, args.repo_id, args.model, private=args.private, revision=args.revision,
                           commit_message=args.commit_message, token=args.token, **common)
        space_info = None
        if args.space is not None:
            space_info = push_space(args.space, args.repo_id, private=args.private, token=args.token,
                                    local_dir=space_dir, overwrite=args.overwrite, **space)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        return fail('spikeclip push', e)
    except Exception as e:  # Hub errors: name the class, never echo request headers
        if io_error_line(e) is not None:  # the local disk (full, read-only), not the Hub
            return fail('spikeclip push', e)
        print(f'spikeclip push: error: {type(e).__name__}: {e}', file=sys.stderr)
        return 1
    print(f'pushed {args.model} to {args.repo_id} (revision {args.revision or "main"}, commit {info.oid})')
    print(f'  {info.commit_url}')
    if space_info is not None:
        print(f'pushed the Space {args.space} (commit {space_info.oid}): {space_url(args.space)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
