"""Publish SpikeCLIP models on the Hugging Face Hub and download them again (the model card: ``card.py``).

One repository serves both model zoos:

- ``open_clip_config.json`` + ``open_clip_model.safetensors``: the whole SpikeCLIP, for
  ``open_clip.create_model_and_transforms('hf-hub:ORG/NAME')`` (after ``import open_clip_spike``);
- ``config.json`` + ``model.safetensors``: the image tower in timm's layout, for
  ``timm.create_model('hf-hub:ORG/NAME', pretrained=True)`` (after ``import timm_spike``);
- ``energy.json``: the energy report (``timm_spike.energy``), when given;
- ``README.md``: a model card (library tags, how to load it, energy table, training recipe, zero-shot results).

Both safetensors files carry metadata: model name, timm architecture, time steps T, the sha256 of their tensors
(checked whenever the project, open_clip or timm loads them) and, with a report, the energy per image;
``spikeclip_files.json`` lists the files written, so a later overwrite keeps every other file of the folder. The folder is written to a temporary directory and swapped into place (one complete version
is always there; the temporary folders of a killed write are removed by the next one); it is then uploaded with ``huggingface_hub`` (``create_repo`` + ``upload_folder``).
open_clip's own ``push_to_hf_hub`` is not used: it swaps in a tokenizer that needs the network.

Downloading goes through ``hf_hub_download`` (so ``HF_HUB_OFFLINE=1`` loads from the cache) and refuses
pickled weights (``.bin``/``.pt``/``.pth``) unless ``allow_pickle=True``.

One module, longer than the house's ~500 lines: writing, pushing, downloading and loading one repository layout
share its crash-safe swap and its checks (the layout itself is in ``files.py``, the card in ``card.py``).
"""
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

from timm_spike._faults import fault_point
from timm_spike.utils import remove_stale_temps, save_safetensors, temp_prefix

from ..checkpoint import model_from_checkpoint, state_dict_for_safetensors
from .card import model_card, zeroshot_rows
from .files import (
    ENERGY_REPORT, ENERGY_REPORT_KEYS, MODEL_CARD, OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS, PICKLED_OPEN_CLIP_WEIGHTS,
    PICKLED_TIMM_WEIGHTS, TIMM_CONFIG, TIMM_WEIGHTS, _PICKLE_SUFFIXES, _REPLACED_PATTERNS, foreign_entries,
    keep_entries, write_manifest)

__all__ = [
    'OPEN_CLIP_CONFIG', 'OPEN_CLIP_WEIGHTS', 'TIMM_CONFIG', 'TIMM_WEIGHTS', 'ENERGY_REPORT', 'MODEL_CARD',
    'ENERGY_REPORT_KEYS', 'PickledWeightsError',
    'write_hub_folder', 'push_to_hub', 'download_from_hub', 'load_spikeclip', 'load_image_encoder',
    'validate_energy_report',
]

_logger = logging.getLogger(__name__)

class PickledWeightsError(ValueError):
    """The repository offers weights only as a pickle, which can run code when loaded."""


# --------------------------------------------------------------------------------------------------------------
# Model helpers


def _image_tower(model: nn.Module) -> nn.Module:
    """The timm image encoder inside an open_clip model: ``model.visual``, or its ``trunk`` when open_clip
    wrapped it in a ``TimmModel`` whose head holds no parameters (the timm head is then the projection)."""
    visual = getattr(model, 'visual', None)
    if visual is None:
        raise ValueError(f'{type(model).__name__} has no .visual image tower; expected a SpikeCLIP open_clip model')
    if hasattr(visual, 'pretrained_cfg'):
        return visual
    trunk = getattr(visual, 'trunk', None)
    head = getattr(visual, 'head', None)
    if trunk is not None and hasattr(trunk, 'pretrained_cfg') and (head is None or not any(head.parameters())):
        return trunk
    raise ValueError(
        f'The image tower ({type(visual).__name__}) is not a timm model (no pretrained_cfg) or has a projection '
        f'outside the timm model; it cannot be published in timm\'s layout')


def _json_safe(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return _json_safe(asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _tower_model_args(tower: nn.Module) -> Dict[str, Any]:
    """Reconstruction arguments the timm entry point needs, made JSON-serialisable (lif_cfg is a dataclass)."""
    try:
        from timm.models import get_model_args  # timm records the create_model kwargs on the model
    except ImportError as e:  # older timm releases record nothing, so config.json could not rebuild the tower
        raise RuntimeError('Writing the timm layout needs a timm release with timm.models.get_model_args '
                           '(timm 1.0.31 has it); upgrade timm') from e

    args = dict(get_model_args(tower))
    for name in ('T', 'lif_cfg'):
        if hasattr(tower, name):
            args[name] = _json_safe(getattr(tower, name))
    return _json_safe(args)


def _build_model(model_or_checkpoint: Union[nn.Module, str, Path], model_name: Optional[str],
                 model_cfg: Optional[Dict[str, Any]]) -> Tuple[nn.Module, str, Dict[str, Any]]:
    import open_clip
    import open_clip_spike  # noqa: F401  (registers the SpikeCLIP configs with open_clip)

    if model_name is None:
        model_name = getattr(model_or_checkpoint, 'model_name', None)
    if model_cfg is None:
        if model_name is None:
            raise ValueError('model_name is needed to write open_clip_config.json (e.g. "SpikeCLIP-Tiny")')
        model_cfg = open_clip.get_model_config(model_name)
        if model_cfg is None:
            known = ', '.join(m for m in open_clip.list_models() if 'Spike' in m) or 'none'
            raise ValueError(f'Unknown open_clip model {model_name!r}; SpikeCLIP configs: {known}')
    if isinstance(model_or_checkpoint, nn.Module):
        return model_or_checkpoint, model_name, model_cfg
    if model_name is None:
        raise ValueError('model_name is needed to build the model a checkpoint belongs to')
    return model_from_checkpoint(model_name, model_or_checkpoint).eval(), model_name, model_cfg


def validate_energy_report(report: Union[Mapping[str, Any], str, Path]) -> Dict[str, Any]:
    """Load (from a JSON file) and check an energy report: the keys the card needs, positive energies.

    Args:
        report: The report dict (``timm_spike.energy``'s schema) or the path of its JSON file.

    Returns:
        The report as a plain dict.
    """
    if isinstance(report, (str, Path)):
        path = Path(report)
        if not path.is_file():
            raise FileNotFoundError(f'Energy report not found: {path}')
        try:
            report = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f'Energy report {path} is not valid JSON: {e}') from e
    if not isinstance(report, Mapping):
        raise ValueError(f'An energy report must be a JSON object, got {type(report).__name__}')
    report = dict(report)
    if report.get('sample', 'image') != 'image':
        raise ValueError(f"This energy report is per {report['sample']!r}; the card needs the image encoder's "
                         f"report (per image)")
    missing = [k for k in ENERGY_REPORT_KEYS if k not in report]
    if missing:
        raise ValueError(
            f'Energy report lacks the keys {missing}; it needs {list(ENERGY_REPORT_KEYS)} '
            f'(write it with python -m timm_spike.energy)')
    for key in ('energy_mj_per_image', 'ann_energy_mj_per_image'):
        value = report[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f'Energy report {key} must be a positive number, got {value!r}')
    if isinstance(report['T'], bool) or not isinstance(report['T'], int) or report['T'] < 1:
        raise ValueError(f"Energy report T must be a positive integer, got {report['T']!r}")
    return _json_safe(report)


# --------------------------------------------------------------------------------------------------------------
# Writing and publishing


def _safetensors_metadata(model_name: str, architecture: str, T: Optional[int],
                          energy: Optional[Dict[str, Any]], part: str) -> Dict[str, str]:
    from open_clip_spike import __version__
    meta = {'format': 'pt', 'model_name': model_name, 'architecture': architecture, 'part': part,
            'spikeclip_version': __version__}
    if T is not None:
        meta['T'] = str(T)
    if energy is not None:
        meta['energy_mj_per_image'] = repr(float(energy['energy_mj_per_image']))
        meta['ann_energy_mj_per_image'] = repr(float(energy['ann_energy_mj_per_image']))
    return meta


def _verify_folder(folder: Path, model: nn.Module, tower: nn.Module):
    """Load the written folder through open_clip's and timm's ``local-dir:`` paths and compare with the source."""
    import open_clip
    import timm

    def _same(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor], what: str):
        if a.keys() != b.keys():
            raise RuntimeError(f'{what}: reloaded keys differ from the source: {sorted(a.keys() ^ b.keys())[:8]}')
        bad = [k for k in a if not torch.equal(a[k].cpu(), b[k].cpu())]
        if bad:
            raise RuntimeError(f'{what}: reloaded tensors differ from the source: {bad[:8]}')

    reloaded = open_clip.create_model(f'local-dir:{folder}').eval()
    _same(model.state_dict(), reloaded.state_dict(), 'open_clip local-dir load')
    encoder = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    _same(tower.state_dict(), encoder.state_dict(), 'timm local-dir load')

    # Same weights are not enough: the configs must rebuild the same computation (T, readout, sizes...).
    size = tuple(encoder.pretrained_cfg['input_size'])
    x = torch.randn((2, *size), generator=torch.Generator().manual_seed(0))
    tokens = open_clip.get_tokenizer(f'local-dir:{folder}')(['a photo of a cat.', 'a sketch of a dog.'])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            checks = [('open_clip image', model.encode_image(x), reloaded.encode_image(x)),
                      ('open_clip text', model.encode_text(tokens), reloaded.encode_text(tokens)),
                      ('timm image', model.encode_image(x), encoder(x))]
    finally:
        model.train(was_training)
    for what, a, b in checks:
        if a.shape != b.shape or not torch.equal(a, b):
            raise RuntimeError(f'{what} embeddings of the reloaded folder differ from the source model: the '
                               f'published config does not rebuild the model (was it created with overrides?)')


def _rename_exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system lacks it."""
    import ctypes
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    rc = renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: the file system cannot exchange
            return False
        raise OSError(err, os.strerror(err), str(b))
    return True


def _swap_into_place(new: Path, target: Path) -> None:
    """Put the folder ``new`` at ``target`` so that one complete version is always there.

    An existing ``target`` is exchanged with ``new`` in one step where the system can; elsewhere it is first
    renamed to ``.NAME.old.tmp-PID-...`` and the next write restores it if this process dies between the two
    renames (`_recover_interrupted_swap`).
    """
    if not target.exists():
        os.replace(new, target)
        return
    if _rename_exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # now holds the old version
        return
    old = target.parent / (temp_prefix(f'{target.name}.old') + 'folder')
    os.replace(target, old)
    fault_point('hub.swap')
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _recover_interrupted_swap(target: Path) -> None:
    """Put back the previous version of ``target`` set aside by a process that died between two renames."""
    if target.exists():
        return
    from timm_spike.utils import _pid_alive
    for old in sorted(target.parent.glob(f'.{target.name}.old.tmp-*')):
        pid = old.name[len(f'.{target.name}.old.tmp-'):].split('-')[0]
        if old.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            os.replace(old, target)
            _logger.warning('restored %s from %s (an interrupted republish)', target, old)
            return


def write_hub_folder(
        save_directory: Union[str, Path],
        model: Union[nn.Module, str, Path],
        model_name: Optional[str] = None,
        *,
        model_cfg: Optional[Dict[str, Any]] = None,
        energy_report: Union[None, Mapping[str, Any], str, Path] = None,
        zeroshot_results: Any = None,
        training: Optional[Mapping[str, Any]] = None,
        repo_id: Optional[str] = None,
        license: str = 'apache-2.0',
        overwrite: bool = False,
        verify: bool = True,
        space_id: Optional[str] = None,
) -> Path:
    """Write a SpikeCLIP model as a Hub repository folder that open_clip and timm both load.

    The folder is assembled in a temporary directory next to ``save_directory`` and renamed into place.

    Args:
        save_directory: Folder to create (refused if it exists, unless ``overwrite``).
        model: A SpikeCLIP open_clip model, or the path of a checkpoint (``.safetensors``, or an open_clip_train
            ``.pt``) of the model ``model_name``.
        model_name: The open_clip config name, e.g. ``'SpikeCLIP-Tiny'`` (needed unless ``model_cfg`` is given).
        model_cfg: The model config to publish (default: the registered config of ``model_name``).
        energy_report: ``timm_spike.energy`` report (dict or JSON path), written as ``energy.json``, put in
            the card and the safetensors metadata.
        zeroshot_results: ``spikeclip zeroshot`` results (a dict with ``top1``, ``top5``, ``dataset``... or a
            list of them), or ``{dataset: {metric: value}}``, for the card.
        training: Training recipe (``{setting: value}``) for the card.
        repo_id: Repository id used in the card's loading instructions.
        license: License tag of the card.
        overwrite: Replace what an earlier write put in ``save_directory`` (listed in its ``spikeclip_files.json``);
            entries spikeclip did not write are kept, with a warning naming them. A symlink is followed: the
            folder it names is written and the link stays.
        verify: Reload the folder with open_clip and timm (``local-dir:``) and check the weights are identical.
        space_id: A Space serving this model's zero-shot page (``hub.space``), linked from the card.

    Returns:
        The folder path.
    """
    save_directory = Path(save_directory)
    if save_directory.exists() and not overwrite:
        raise FileExistsError(f'{save_directory} exists; choose a new folder or pass overwrite=True (--overwrite)')
    energy = validate_energy_report(energy_report) if energy_report is not None else None
    if zeroshot_results:
        zeroshot_rows(zeroshot_results)  # malformed results fail before any work
    model, model_name, model_cfg = _build_model(model, model_name, model_cfg)
    model_name = model_name or 'SpikeCLIP'
    tower = _image_tower(model)
    architecture = tower.pretrained_cfg.get('architecture') or type(tower).__name__
    T = getattr(tower, 'T', None)
    if T is not None and model_cfg.get('T', T) != T:
        raise ValueError(f"The model runs T={T} but its config {model_name!r} says T={model_cfg['T']}; pass the "
                         f'model_cfg it was built from')
    if energy is not None and T is not None and energy['T'] != T:
        raise ValueError(f"The energy report was measured with T={energy['T']} but the model runs T={T}; "
                         f'measure it again on this model')

    import open_clip
    from timm.models._hub import save_config_for_hf  # timm's config.json writer (not re-exported by timm.models)

    if save_directory.is_symlink():  # write into the folder the link names; the link stays a link
        save_directory = Path(os.path.realpath(save_directory))
    save_directory.parent.mkdir(parents=True, exist_ok=True)
    _recover_interrupted_swap(save_directory)
    remove_stale_temps(str(save_directory.parent), force=True)  # folders of writes killed before the swap
    if save_directory.exists() and not save_directory.is_dir():
        raise FileExistsError(f'{save_directory} is a file, not a folder; choose a folder for the Hub files')
    kept = foreign_entries(save_directory)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(save_directory.name), dir=save_directory.parent))
    try:
        # the weights first: their digests go into both configs (the Hub folder's metadata) and their metadata
        digests = {
            OPEN_CLIP_WEIGHTS: save_safetensors(
                state_dict_for_safetensors(model), tmp / OPEN_CLIP_WEIGHTS,
                metadata=_safetensors_metadata(model_name, architecture, T, energy, 'open_clip')),
            TIMM_WEIGHTS: save_safetensors(
                state_dict_for_safetensors(tower), tmp / TIMM_WEIGHTS,
                metadata=_safetensors_metadata(model_name, architecture, T, energy, 'image_encoder'))}
        preprocess_cfg = _json_safe(open_clip.get_model_preprocess_cfg(model))
        (tmp / OPEN_CLIP_CONFIG).write_text(json.dumps(
            {'model_cfg': _json_safe(model_cfg), 'preprocess_cfg': preprocess_cfg,
             'spikeclip': {'tensors_sha256': digests}}, indent=4) + '\n')

        # Extra top-level config.json keys are ignored by timm's loader; PretrainedCfg rejects unknown keys,
        # so SpikeCLIP's own metadata lives beside it, not inside it.
        extra = {'spikeclip': {'model_name': model_name, 'T': T, **(
            {'energy_mj_per_image': energy['energy_mj_per_image'],
             'ann_energy_mj_per_image': energy['ann_energy_mj_per_image']} if energy else {}),
            'tensors_sha256': digests}}
        save_config_for_hf(tower, str(tmp / TIMM_CONFIG), model_config=extra, model_args=_tower_model_args(tower))

        if energy is not None:
            (tmp / ENERGY_REPORT).write_text(json.dumps(energy, indent=2) + '\n')
        text_arch = (model_cfg.get('text_cfg') or {}).get('arch', 'mlp')
        text_tower = 'a spiking transformer' if text_arch == 'transformer' else 'a spiking MLP'
        card = model_card(repo_id, model_name, architecture, T, energy, zeroshot_results, training, license,
                           text_tower=text_tower, space_id=space_id)
        (tmp / MODEL_CARD).write_text(card, encoding='utf-8')
        if verify:
            _verify_folder(tmp, model, tower)
        write_manifest(tmp)  # what this write owns: the next overwrite replaces these and keeps the rest
        # mkdtemp makes the folder 0700 and some writers make their files 0600: give everything the
        # permissions of a normally created file or folder
        umask = os.umask(0)
        os.umask(umask)
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
        os.chmod(tmp, 0o777 & ~umask)
        if kept:
            keep_entries(save_directory, tmp, kept)
            _logger.warning('kept %d file(s) in %s that spikeclip did not write: %s', len(kept), save_directory,
                            ', '.join(kept[:8]) + (' ...' if len(kept) > 8 else ''))
        fault_point('hub.write')
        _swap_into_place(tmp, save_directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _logger.info('Wrote %s (%s) to %s', model_name, ', '.join(sorted(p.name for p in save_directory.iterdir())),
                 save_directory)
    return save_directory


def push_to_hub(
        model_or_checkpoint: Union[nn.Module, str, Path],
        repo_id: str,
        model_name: Optional[str] = None,
        *,
        model_cfg: Optional[Dict[str, Any]] = None,
        local_dir: Union[None, str, Path] = None,
        energy_report: Union[None, Mapping[str, Any], str, Path] = None,
        zeroshot_results: Any = None,
        training: Optional[Mapping[str, Any]] = None,
        private: bool = False,
        revision: Optional[str] = None,
        commit_message: Optional[str] = None,
        token: Union[None, str, bool] = None,
        license: str = 'apache-2.0',
        overwrite: bool = False,
        verify: bool = True,
        space_id: Optional[str] = None,
):
    """Write the Hub folder (see :func:`write_hub_folder`) and upload it as one commit.

    The commit replaces an earlier upload on the same branch: weights (``*.safetensors``, pickles), configs and
    the energy report not in the new folder are deleted; other files of the repository are kept.

    Args:
        model_or_checkpoint: A SpikeCLIP open_clip model, or a checkpoint path of the model ``model_name``.
        repo_id: ``ORG/NAME``; created if missing.
        model_name: The open_clip config name, e.g. ``'SpikeCLIP-Tiny'``.
        model_cfg: The model config to publish (default: the registered config of ``model_name``).
        local_dir: Keep the uploaded folder here (default: a temporary folder, removed afterwards).
        energy_report: ``timm_spike.energy`` report (dict or JSON path).
        zeroshot_results: ``spikeclip zeroshot`` results (or ``{dataset: {metric: value}}``) for the card.
        training: Training recipe for the card.
        private: Create the repository private.
        revision: Branch to commit to (created from main if missing); default main.
        commit_message: Commit message.
        token: Hub token (default: ``HF_TOKEN`` or the saved login). Never logged or written to a file.
        license: License tag of the card.
        overwrite: Replace an existing ``local_dir``.
        verify: Reload the folder with open_clip and timm before uploading.
        space_id: A Space serving this model's zero-shot page, linked from the card (``hub.space.push_space``).

    Returns:
        huggingface_hub's ``CommitInfo`` (``.oid`` is the commit to load this exact version with).
    """
    from huggingface_hub import HfApi

    if not isinstance(repo_id, str) or repo_id.count('/') != 1 or not all(repo_id.split('/')):
        raise ValueError(f'repo_id must be "ORG/NAME", got {repo_id!r}')
    with tempfile.TemporaryDirectory(prefix='spikeclip-push-') as tmp:
        folder = write_hub_folder(
            Path(local_dir) if local_dir is not None else Path(tmp) / 'repo', model_or_checkpoint, model_name,
            model_cfg=model_cfg, energy_report=energy_report, zeroshot_results=zeroshot_results, training=training,
            repo_id=repo_id, license=license, overwrite=overwrite, verify=verify, space_id=space_id)
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None and revision != 'main':
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                                 delete_patterns=_REPLACED_PATTERNS,
                                 commit_message=commit_message or f'Upload {model_name or "SpikeCLIP"} with spikeclip')
    _logger.info('Uploaded to %s (commit %s)', repo_id, info.oid)
    return info


# --------------------------------------------------------------------------------------------------------------
# Downloading


def _check_safetensors(path: str, repo_id: str, revision: Optional[str]):
    from safetensors import safe_open
    try:
        with safe_open(path, framework='pt') as f:
            f.keys()
    except Exception as e:
        raise ValueError(
            f'{Path(path).name} of {repo_id}@{revision or "main"} is not a valid safetensors file ({e}). '
            f'The upload may be damaged; re-download with force_download=True, or ask the publisher to push '
            f'it again') from e


def _check_architectures(folder: Path, repo_id: str, open_clip_files: bool, timm_files: bool):
    import timm
    from open_clip_spike.factory import MODEL_CLASSES  # importing open_clip_spike registers timm models too

    names = []
    if timm_files:
        cfg = json.loads((folder / TIMM_CONFIG).read_text())
        names.append((TIMM_CONFIG, cfg.get('architecture') or cfg.get('pretrained_cfg', {}).get('architecture')))
    if open_clip_files:
        cfg = json.loads((folder / OPEN_CLIP_CONFIG).read_text())
        model_cfg = cfg.get('model_cfg')
        if not isinstance(model_cfg, Mapping):
            raise ValueError(f'{OPEN_CLIP_CONFIG} of {repo_id} has no "model_cfg"; it is not an open_clip model repo')
        names.append((OPEN_CLIP_CONFIG, model_cfg.get('vision_cfg', {}).get('timm_model_name')))
        model_class = model_cfg.get('model_class')
        if model_class is not None and model_class not in MODEL_CLASSES:
            raise ValueError(
                f'{OPEN_CLIP_CONFIG} of {repo_id} names the model class {model_class!r}, which open_clip_spike '
                f'does not know (known: {sorted(MODEL_CLASSES)}); it may need a newer spikeclip')
    for file, name in names:
        if name is None:
            continue
        if not timm.is_model(name):
            raise ValueError(
                f'{file} of {repo_id} names the model {name!r}, which is not registered with timm. It may come '
                f'from a newer spikeclip or another library; registered spiking models: '
                f'{", ".join(timm.list_models("spikingformer*"))}')


def download_from_hub(
        repo_id: str,
        revision: Optional[str] = None,
        *,
        open_clip_files: bool = True,
        timm_files: bool = True,
        allow_pickle: bool = False,
        cache_dir: Union[None, str, Path] = None,
        token: Union[None, str, bool] = None,
        force_download: bool = False,
) -> Path:
    """Download a published SpikeCLIP into the Hugging Face cache and return its snapshot folder.

    The folder loads with ``'local-dir:' + str(folder)`` in open_clip and timm. With ``HF_HUB_OFFLINE=1`` the
    files come from the cache. Weights must be safetensors: a repository that offers only pickled weights
    (``.bin``/``.pt``/``.pth``) is refused unless ``allow_pickle=True`` (they are then read with PyTorch's
    ``weights_only`` loader by open_clip and timm).

    Args:
        repo_id: ``ORG/NAME``.
        revision: Branch, tag or commit (default main).
        open_clip_files: Fetch ``open_clip_config.json`` and the whole model's weights.
        timm_files: Fetch timm's ``config.json`` and the image encoder's weights.
        allow_pickle: Accept pickled weights when no safetensors file is offered.
        cache_dir: Hugging Face cache folder (default ``HF_HUB_CACHE``).
        token: Hub token for private repos (default ``HF_TOKEN`` or the saved login; False sends none).
        force_download: Download again even if cached.

    Returns:
        The snapshot folder of the resolved commit.
    """
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    if not open_clip_files and not timm_files:
        raise ValueError('Nothing to download: set open_clip_files and/or timm_files')

    where = f'{repo_id}@{revision or "main"}'

    def fetch(filename: str) -> str:
        return hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir, token=token,
                               force_download=force_download)

    def fetch_config(filename: str, what: str) -> str:
        try:
            return fetch(filename)
        except LocalEntryNotFoundError as e:
            raise FileNotFoundError(
                f'{filename} of {where} is not in the cache and the Hub cannot be reached (HF_HUB_OFFLINE is set '
                f'or the network is down); download it once online') from e
        except EntryNotFoundError as e:
            raise FileNotFoundError(f'{where} has no {filename}, so it is not {what}') from e

    def fetch_weights(safe: str, pickled: Tuple[str, ...], what: str) -> str:
        try:
            path = fetch(safe)
        except LocalEntryNotFoundError as e:  # offline, and not in the cache
            raise FileNotFoundError(
                f'{safe} of {where} is not in the cache and the Hub cannot be reached '
                f'(HF_HUB_OFFLINE is set or the network is down); download it once online') from e
        except EntryNotFoundError:
            files = HfApi(token=token).list_repo_files(repo_id, revision=revision)
            offered = [f for f in files if f in pickled] or [f for f in files if f.endswith(_PICKLE_SUFFIXES)]
            if not offered:
                raise FileNotFoundError(f'{where} has no {safe} ({what}); files: {sorted(files)}') from None
            if not allow_pickle:
                raise PickledWeightsError(
                    f'{where} offers the {what} only as pickled weights ({offered[0]}), '
                    f'not as {safe}. Unpickling can run code from the file; pass allow_pickle=True only if you '
                    f'trust the publisher') from None
            _logger.warning('Using pickled weights %s of %s (allow_pickle=True)', offered[0], repo_id)
            return fetch(offered[0])
        _check_safetensors(path, repo_id, revision)
        return path

    # Configs first: a repo naming a model this install cannot build is refused before any weights download.
    configs = []
    if open_clip_files:
        configs.append(fetch_config(OPEN_CLIP_CONFIG, 'an open_clip model repository'))
    if timm_files:
        configs.append(fetch_config(TIMM_CONFIG, 'a timm model repository'))
    folder = Path(configs[0]).parent
    _check_architectures(folder, repo_id, open_clip_files, timm_files)
    if open_clip_files:
        fetch_weights(OPEN_CLIP_WEIGHTS, PICKLED_OPEN_CLIP_WEIGHTS, 'SpikeCLIP weights')
    if timm_files:
        fetch_weights(TIMM_WEIGHTS, PICKLED_TIMM_WEIGHTS, 'image encoder weights')
    for optional in (ENERGY_REPORT, MODEL_CARD):
        try:
            fetch(optional)
        except EntryNotFoundError:  # also raised offline when it was never cached
            pass
    return folder


def load_spikeclip(
        repo_id: str,
        revision: Optional[str] = None,
        *,
        allow_pickle: bool = False,
        device: Union[str, torch.device] = 'cpu',
        cache_dir: Union[None, str, Path] = None,
        token: Union[None, str, bool] = None,
        **model_kwargs: Any,
):
    """Download (or read from the cache) a published SpikeCLIP and build it with open_clip.

    Args:
        repo_id: ``ORG/NAME``.
        revision: Branch, tag or commit (open_clip's own ``hf-hub:`` path has no revision).
        allow_pickle: Accept pickled weights when no safetensors file is offered.
        device: Device of the model.
        cache_dir: Hugging Face cache folder.
        token: Hub token for private repos.
        **model_kwargs: Passed to ``open_clip.create_model_and_transforms``.

    Returns:
        ``(model, preprocess, tokenizer)``; the model is in eval mode.
    """
    import open_clip

    folder = download_from_hub(repo_id, revision, timm_files=False, allow_pickle=allow_pickle,
                               cache_dir=cache_dir, token=token)
    model, _, preprocess = open_clip.create_model_and_transforms(f'local-dir:{folder}', device=device, **model_kwargs)
    tokenizer = open_clip.get_tokenizer(f'local-dir:{folder}')
    return model.eval(), preprocess, tokenizer


def load_image_encoder(
        repo_id: str,
        revision: Optional[str] = None,
        *,
        allow_pickle: bool = False,
        cache_dir: Union[None, str, Path] = None,
        token: Union[None, str, bool] = None,
        **model_kwargs: Any,
) -> nn.Module:
    """Download (or read from the cache) a published SpikeCLIP image encoder and build it with timm.

    Args:
        repo_id: ``ORG/NAME``.
        revision: Branch, tag or commit.
        allow_pickle: Accept pickled weights when no safetensors file is offered.
        cache_dir: Hugging Face cache folder.
        token: Hub token for private repos.
        **model_kwargs: Passed to ``timm.create_model`` (e.g. ``num_classes=0`` for pooled features).

    Returns:
        The timm model, in eval mode.
    """
    import timm

    folder = download_from_hub(repo_id, revision, open_clip_files=False, allow_pickle=allow_pickle,
                               cache_dir=cache_dir, token=token)
    return timm.create_model(f'local-dir:{folder}', pretrained=True, **model_kwargs).eval()
