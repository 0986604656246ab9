"""The files of a published SpikeCLIP repository (one repository serves open_clip and timm)."""

OPEN_CLIP_CONFIG = 'open_clip_config.json'
OPEN_CLIP_WEIGHTS = 'open_clip_model.safetensors'
TIMM_CONFIG = 'config.json'
TIMM_WEIGHTS = 'model.safetensors'
ENERGY_REPORT = 'energy.json'
MODEL_CARD = 'README.md'
# Pickled alternatives the two libraries would fall back to; refused unless allow_pickle=True.
PICKLED_OPEN_CLIP_WEIGHTS = ('open_clip_pytorch_model.bin', 'open_clip_pytorch_model.pt', 'open_clip_pytorch_model.pth')
PICKLED_TIMM_WEIGHTS = ('pytorch_model.bin', 'pytorch_model.pth', 'model.pth', 'model.pt')
_PICKLE_SUFFIXES = ('.bin', '.pt', '.pth', '.pkl', '.ckpt')
# Files of an earlier upload that a new one replaces or removes: stale weights (a loader could pick them up)
# and configs / reports that would no longer describe the weights. Other files in the repo are kept.
_REPLACED_PATTERNS = ['*.safetensors', *(f'*{s}' for s in _PICKLE_SUFFIXES), TIMM_CONFIG, OPEN_CLIP_CONFIG,
                      ENERGY_REPORT]

# The keys of timm_spike.energy's report that the card and the metadata read.
ENERGY_REPORT_KEYS = ('model', 'T', 'input_size', 'energy_mj_per_image', 'ann_energy_mj_per_image', 'constants',
                      'layers')

# The files one write of the folder made, with their sha256: the next --overwrite replaces exactly these and keeps
# every other entry of the folder (a user's notes, a git clone's .git), saying so.
MANIFEST = 'spikeclip_files.json'
_OWN_NAMES = (OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS, TIMM_CONFIG, TIMM_WEIGHTS, ENERGY_REPORT, MODEL_CARD, MANIFEST)


def _file_sha256(path) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder) -> dict:
    """Record the regular files of ``folder`` (a freshly written Hub folder) and their sha256 in ``MANIFEST``."""
    import json
    from pathlib import Path
    folder = Path(folder)
    files = {p.name: _file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = {'written_by': 'spikeclip', 'files': files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + '\n')
    return manifest


def foreign_entries(folder) -> list:
    """Names in an existing Hub folder that spikeclip did not write: not in its manifest (a folder without one,
    from an older spikeclip: not one of the files spikeclip writes)."""
    import json
    from pathlib import Path
    folder = Path(folder)
    if not folder.is_dir():
        return []
    own = set(_OWN_NAMES)
    try:
        own |= set(json.loads((folder / MANIFEST).read_text())['files'])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return sorted(p.name for p in folder.iterdir() if p.name not in own)


def keep_entries(old, new, names) -> None:
    """Put the entries ``names`` of folder ``old`` into folder ``new`` as hard links (copies where links fail),
    leaving ``old`` untouched, so a process killed before the swap loses nothing."""
    import os
    import shutil
    from pathlib import Path

    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    for name in names:
        src, dst = Path(old) / name, Path(new) / name
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        elif src.is_dir():
            shutil.copytree(src, dst, symlinks=True, copy_function=link)
        else:
            link(src, dst)
