"""A Hugging Face Space beside a published SpikeCLIP: the zero-shot page (``open_clip_spike.app``) loading the model
by its repository id.

A Space is a repository of its own (``repo_type='space'``) holding ``app.py`` (the Gradio SDK runs it),
``requirements.txt`` and a ``README.md`` whose front matter follows the Hub's Space conventions (``sdk: gradio``,
``sdk_version``, ``app_file``, ``license``, ``models``: the Hub lists the Space on the model's page). The card of
the model links to it (``write_hub_folder(space_id=...)``).
"""
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Optional, Union

from timm_spike.utils import remove_stale_temps, temp_prefix

from ..data import CLASSNAMES
from .files import MODEL_CARD

__all__ = ['SPACE_APP', 'SPACE_REQUIREMENTS', 'space_files', 'space_url', 'write_space_folder', 'push_space']

_logger = logging.getLogger(__name__)

SPACE_APP = 'app.py'
SPACE_REQUIREMENTS = 'requirements.txt'
_REPO_ID = re.compile(r'^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$')


def _check_repo_id(repo_id: str, what: str) -> str:
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id) or '..' in repo_id:
        raise ValueError(f'{what} must be "ORG/NAME" (letters, digits, - _ .), got {repo_id!r}')
    return repo_id


def space_url(space_id: str, endpoint: Optional[str] = None) -> str:
    """The page of a Space on the Hub (``HF_ENDPOINT``'s, by default huggingface.co)."""
    if endpoint is None:
        from huggingface_hub import constants
        endpoint = constants.ENDPOINT
    return f'{endpoint.rstrip("/")}/spaces/{space_id}'


def _gradio_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version('gradio')
    except PackageNotFoundError:
        raise ValueError("A Space's README names the Gradio version it runs (sdk_version): install gradio "
                         "(pip install 'spikeclip[app]') or pass sdk_version") from None


def _default_requirement() -> str:
    from open_clip_spike import __version__
    return f'spikeclip[app]=={__version__}'


def space_files(
        model_repo_id: str,
        *,
        title: Optional[str] = None,
        license: str = 'apache-2.0',
        sdk_version: Optional[str] = None,
        requirement: Optional[str] = None,
        classnames: Optional[str] = None,
) -> Dict[str, str]:
    """The files of a Space that serves the zero-shot page of ``model_repo_id``: ``{name: text}``.

    Args:
        model_repo_id: The model repository the Space loads (``hf-hub:ORG/NAME``).
        title: The Space's title (default: the model's name).
        license: License tag of the Space.
        sdk_version: Gradio version the Space runs (default: the installed gradio's).
        requirement: How the Space installs spikeclip (default ``spikeclip[app]==<this version>``; e.g. a
            ``spikeclip[app] @ git+https://...`` URL where the package is not on a registry).
        classnames: A class-name set chosen when the page opens (e.g. ``fashion_mnist``).
    """
    from huggingface_hub import SpaceCardData

    _check_repo_id(model_repo_id, 'The model repo id')
    if classnames is not None and classnames not in CLASSNAMES:
        raise ValueError(f'Unknown class-name set {classnames!r}; choose one of {", ".join(CLASSNAMES)}')
    requirement = requirement or _default_requirement()
    if '\n' in requirement or not requirement.strip():
        raise ValueError(f'requirement must be one requirement line, got {requirement!r}')
    name = model_repo_id.split('/')[1]
    title = title or f'{name} zero-shot'
    data = SpaceCardData(
        title=title[:60], sdk='gradio', sdk_version=sdk_version or _gradio_version(), app_file=SPACE_APP,
        license=license, models=[model_repo_id],
        tags=['spikeclip', 'spiking-neural-network', 'clip', 'zero-shot-image-classification'],
        emoji='⚡', colorFrom='yellow', colorTo='indigo', pinned=False,
        short_description='Zero-shot image classification with a spiking CLIP'[:60])
    body = f"""
# {title}

The zero-shot page of [{model_repo_id}](https://huggingface.co/{model_repo_id}), a SpikeCLIP (a CLIP whose image
and text encoders are spiking neural networks). Give an image and class names: the page shows the most likely
classes and, for this image, the firing rate of every layer, the MACs and synaptic operations, the estimated
energy beside the same network as an ANN (and the teacher, from the model's energy report) and the time of the
forward pass.

Run the same page on your machine:

```bash
pip install '{requirement}'
spikeclip app --model hf-hub:{model_repo_id}
```

Written by `spikeclip push --space`.
"""
    sets = f', classnames={classnames!r}' if classnames else ''
    app = f'''"""The zero-shot page of the SpikeCLIP {model_repo_id} (open_clip_spike.app), as a Space."""
from open_clip_spike.app import MAX_UPLOAD, ZeroShotApp, build_demo

app = ZeroShotApp('hf-hub:{model_repo_id}')
demo = build_demo(app{sets})

if __name__ == '__main__':
    demo.launch(max_file_size=MAX_UPLOAD)
'''
    return {SPACE_APP: app, SPACE_REQUIREMENTS: requirement + '\n',
            MODEL_CARD: f'---\n{data.to_yaml()}\n---\n{body}'}


def write_space_folder(save_directory: Union[str, Path], model_repo_id: str, *, overwrite: bool = False,
                       **kwargs) -> Path:
    """Write the Space's files (``space_files``) to a new folder, whole or not at all.

    Args:
        save_directory: Folder to create (refused if it exists, unless ``overwrite``).
        model_repo_id: The model repository the Space loads.
        overwrite: Replace an existing folder.
        **kwargs: ``space_files`` options.
    """
    from .publish import _swap_into_place

    save_directory = Path(save_directory)
    if save_directory.exists() and not overwrite:
        raise FileExistsError(f'{save_directory} exists; choose a new folder or pass overwrite=True (--overwrite)')
    files = space_files(model_repo_id, **kwargs)
    save_directory.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(str(save_directory.parent), force=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(save_directory.name), dir=save_directory.parent))
    try:
        for name, text in files.items():
            (tmp / name).write_text(text, encoding='utf-8')
        umask = os.umask(0)
        os.umask(umask)
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
        os.chmod(tmp, 0o777 & ~umask)
        _swap_into_place(tmp, save_directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _logger.info('Wrote the Space of %s to %s', model_repo_id, save_directory)
    return save_directory


def push_space(space_id: str, model_repo_id: str, *, private: bool = False, token: Union[None, str, bool] = None,
               commit_message: Optional[str] = None, local_dir: Union[None, str, Path] = None,
               overwrite: bool = False, **kwargs):
    """Create (if missing) the Gradio Space ``space_id`` and upload its files as one commit.

    Args:
        space_id: ``ORG/NAME`` of the Space.
        model_repo_id: The model repository the Space loads.
        private: Create the Space private.
        token: Hub token (default: ``HF_TOKEN`` or the saved login). Never logged or written to a file.
        commit_message: Commit message.
        local_dir: Keep the uploaded folder here (default: a temporary folder).
        overwrite: Replace an existing ``local_dir``.
        **kwargs: ``space_files`` options.

    Returns:
        huggingface_hub's ``CommitInfo``.
    """
    from huggingface_hub import HfApi

    _check_repo_id(space_id, 'The Space id')
    with tempfile.TemporaryDirectory(prefix='spikeclip-space-') as tmp:
        folder = write_space_folder(Path(local_dir) if local_dir is not None else Path(tmp) / 'space',
                                    model_repo_id, overwrite=overwrite, **kwargs)
        api = HfApi(token=token)
        api.create_repo(space_id, repo_type='space', space_sdk='gradio', private=private, exist_ok=True)
        info = api.upload_folder(repo_id=space_id, repo_type='space', folder_path=folder,
                                 commit_message=commit_message or f'Zero-shot page of {model_repo_id}')
    _logger.info('Uploaded the Space %s (commit %s)', space_id, info.oid)
    return info
