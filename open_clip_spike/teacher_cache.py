"""Teacher-feature cache: compute a frozen teacher's features once per sample, reuse them in later epochs.

Distillation runs the teacher on every step although, when its inputs are not augmented, it returns the same
features for a sample in every epoch. With ``spikeclip train --spike-teacher-cache DIR`` the first epoch stores
the teacher's image and text features in ``DIR`` and later epochs (and later runs: the second stage, a resumed
run, another student) read them instead of running the teacher.

Keys. open_clip_train's loaders (CSV, webdataset) hand the loop tensors without sample ids, so a sample is
keyed by a 128-bit BLAKE2b digest of its preprocessed input (the image tensor's bytes, or the caption's token
ids). With deterministic preprocessing an identical input gives identical teacher features, so the digest is an
exact key that survives shuffling, DDP sharding, ``--resume`` and data order; captions repeated across samples
(class prompts) are computed once. ``spikeclip train`` turns training-time augmentation off when the cache is on
(the training images get the validation preprocessing), since an augmented image would never hit.

Storage: ``DIR/meta.json`` records what the features depend on besides the input (the teacher's name, its
pretrained tag, a digest of its weights, its preprocessing and context length, the precision); a cache made
under any other value is refused with the difference listed, never reused. Features live in safetensors
shards, ``{image,text}-r{rank}-{n}.safetensors`` with ``keys`` [N, 16] uint8 and ``features`` [N, D] float32,
each written whole through a temporary file and a rename. `CachedTeacher` writes a shard after every batch that
computed new features, so a run killed at any moment (SIGKILL included) keeps every finished batch; at the end of
an epoch `TeacherFeatureCache.compact` merges that epoch's small shards into one. Each shard's metadata holds a
BLAKE2b digest of its payload (keys and features): a shard whose digest, dtype, shape or values (NaN, inf) are
wrong is refused with the file named, never used. Nothing is ever unpickled.

No library offers this (open_clip_train runs its ``--distill-model`` on every step), hence this module.
"""
import glob
import hashlib
import json
import logging
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from safetensors.torch import load_file, save

from timm_spike._faults import fault_point
from timm_spike.utils import atomic_write

from .locking import FolderLock

__all__ = ['TeacherFeatureCache', 'CachedTeacher', 'StaleCacheError', 'sample_keys', 'weights_digest']

_logger = logging.getLogger(__name__)

KINDS = ('image', 'text')
FORMAT_VERSION = 2  # 2: shards carry a payload digest
KEY_BYTES = 16
_SHARD_RE = re.compile(r'^(image|text)-r(\d+)-(\d+)\.safetensors$')


class StaleCacheError(ValueError):
    """The cache folder was made for another teacher, preprocessing or precision."""


def sample_keys(x: torch.Tensor) -> List[bytes]:
    """One 16-byte BLAKE2b digest per sample (first dimension) of a tensor: its dtype, shape and bytes."""
    x = x.detach().contiguous().cpu()
    head = f'{x.dtype}:{tuple(x.shape[1:])}'.encode()
    flat = x.reshape(x.shape[0], -1)
    if flat.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the raw 16-bit words
        flat = flat.view(torch.int16)
    rows = flat.numpy()
    return [hashlib.blake2b(head + row.tobytes(), digest_size=KEY_BYTES).digest() for row in rows]


def _payload_digest(keys: torch.Tensor, feats: torch.Tensor) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f'{tuple(keys.shape)}:{tuple(feats.shape)}:{feats.dtype};'.encode())
    h.update(keys.contiguous().numpy().tobytes())
    h.update(feats.contiguous().numpy().tobytes())
    return h.hexdigest()


def weights_digest(model: nn.Module) -> str:
    """Hex BLAKE2b digest of a model's parameters and buffers (names, dtypes, shapes and values)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().contiguous().cpu()
        h.update(f'{name}:{t.dtype}:{tuple(t.shape)};'.encode())
        h.update((t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes())
    return h.hexdigest()


class TeacherFeatureCache:
    """Per-sample teacher features on disk (safetensors shards) and in memory.

    Args:
        root: Cache folder (created if missing).
        fingerprint: JSON-able dict of everything the features depend on besides the sample; must equal the
            one recorded in ``root/meta.json`` when the folder already holds a cache.
        rank: This process's rank (each rank writes its own shards and reads everyone's).
        lock: Hold the folder (rank 0) until `close` or the process ends, so that no other process writes it
            meanwhile (``spikeclip train`` does).

    Raises:
        StaleCacheError: ``root`` holds a cache with another fingerprint (or another format version).
        FolderInUseError: ``lock`` and another holder of the folder's lock (a live process).
    """

    def __init__(self, root: str, fingerprint: Dict[str, Any], rank: int = 0, lock: bool = False):
        self.root = root
        self.rank = int(rank)
        self.fingerprint = json.loads(json.dumps(fingerprint))  # normalised (tuples -> lists)
        os.makedirs(root, exist_ok=True)
        # one run writes a cache folder at a time (every rank of that run shares it): a second run is refused
        self._lock = FolderLock(root, 'run using this teacher-feature cache').acquire() \
            if lock and self.rank == 0 else None
        try:
            self._check_meta()
        except BaseException:
            self.close()
            raise
        self._index: Dict[str, Dict[bytes, Tuple[int, int]]] = {k: {} for k in KINDS}
        self._blocks: List[torch.Tensor] = []
        self._block_kinds: List[str] = []
        self._written: Dict[str, List[str]] = {k: [] for k in KINDS}  # shards this object wrote since `compact`
        self._loaded: set = set()
        self._pending: Dict[str, Dict[bytes, torch.Tensor]] = {k: {} for k in KINDS}
        self.hits = {k: 0 for k in KINDS}
        self.misses = {k: 0 for k in KINDS}
        self.refresh()

    def _check_meta(self) -> None:
        path = os.path.join(self.root, 'meta.json')
        meta = {'format_version': FORMAT_VERSION, 'fingerprint': self.fingerprint}
        if not os.path.exists(path):
            if glob.glob(os.path.join(self.root, '*.safetensors')):
                raise StaleCacheError(f'{self.root} holds feature shards but no meta.json, so what they were made '
                                      f'from is unknown; delete the folder or pick another --spike-teacher-cache')
            atomic_write(path, (json.dumps(meta, indent=2, sort_keys=True) + '\n').encode())
            return
        try:
            with open(path) as f:
                found = json.load(f)
        except (OSError, ValueError) as e:
            raise StaleCacheError(f'{path} is unreadable ({e}); delete {self.root} to rebuild the cache') from e
        if found == meta:
            return
        old = found.get('fingerprint', {}) if isinstance(found, dict) else {}
        diffs = [f'{k}: cached {old.get(k)!r}, now {self.fingerprint.get(k)!r}'
                 for k in sorted(set(old) | set(self.fingerprint)) if old.get(k) != self.fingerprint.get(k)]
        if isinstance(found, dict) and found.get('format_version') != FORMAT_VERSION:
            diffs.append(f'format_version: cached {found.get("format_version")!r}, now {FORMAT_VERSION}')
        raise StaleCacheError(
            f'teacher-feature cache {self.root} was made for another setting ({"; ".join(diffs)}); its features '
            f'would be wrong here. Delete the folder to rebuild it, or pass another --spike-teacher-cache')

    # -------------------------------------------------------------------------------------------- reading
    def refresh(self) -> int:
        """Load the shards (of every rank) not loaded yet; returns how many were loaded."""
        n = 0
        for path in sorted(glob.glob(os.path.join(self.root, '*.safetensors'))):
            name = os.path.basename(path)
            m = _SHARD_RE.match(name)
            if m is None or name in self._loaded:
                continue
            try:
                keys, feats = self._read_shard(path)
            except FileNotFoundError:  # merged away by `compact` of another process meanwhile
                continue
            except Exception as e:  # noqa: BLE001 -- any unreadable shard gets the same advice
                raise StaleCacheError(f'teacher-feature shard {path} is corrupt ({e}); delete {self.root} to '
                                      f'rebuild the cache') from e
            block = len(self._blocks)
            self._blocks.append(feats)
            self._block_kinds.append(m.group(1))
            index = self._index[m.group(1)]
            for row, key in enumerate(keys.numpy()):
                index.setdefault(key.tobytes(), (block, row))
            self._loaded.add(name)
            n += 1
        return n

    def _read_shard(self, path: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """Keys and features of a shard, after checking its digest, dtypes, shapes and values."""
        from safetensors import safe_open
        with safe_open(path, framework='pt') as f:
            meta = f.metadata() or {}
        shard = load_file(path)
        keys, feats = shard['keys'], shard['features']
        if keys.dtype != torch.uint8 or keys.ndim != 2 or keys.shape[1] != KEY_BYTES \
                or feats.ndim != 2 or feats.shape[0] != keys.shape[0]:
            raise ValueError(f'keys {tuple(keys.shape)} {keys.dtype} / features {tuple(feats.shape)}')
        if feats.dtype != torch.float32:
            raise ValueError(f'features are {feats.dtype}, expected torch.float32')
        if meta.get('digest') != _payload_digest(keys, feats):
            raise ValueError('its payload does not match the digest written with it (changed or damaged)')
        bad = int((~torch.isfinite(feats)).sum())
        if bad:
            raise ValueError(f'{bad} non-finite feature values')
        kind = _SHARD_RE.match(os.path.basename(path)).group(1)
        dims = {b.shape[1] for b, k in zip(self._blocks, self._block_kinds) if k == kind}
        if dims and feats.shape[1] not in dims:
            raise ValueError(f'{kind} features of width {feats.shape[1]}, other shards have {sorted(dims)}')
        return keys, feats

    def __len__(self) -> int:
        return sum(len(self._index[k]) + len(self._pending[k]) for k in KINDS)

    def count(self, kind: str) -> int:
        return len(self._index[kind]) + len(self._pending[kind])

    def get(self, kind: str, key: bytes) -> Optional[torch.Tensor]:
        loc = self._index[kind].get(key)
        if loc is not None:
            return self._blocks[loc[0]][loc[1]]
        return self._pending[kind].get(key)

    # -------------------------------------------------------------------------------------------- writing
    def add(self, kind: str, keys: Sequence[bytes], features: torch.Tensor) -> None:
        """Remember features [N, D] of N samples; written by the next `flush`."""
        if kind not in KINDS:
            raise ValueError(f'unknown feature kind {kind!r}; one of {KINDS}')
        if features.ndim != 2 or features.shape[0] != len(keys):
            raise ValueError(f'{len(keys)} keys but features of shape {tuple(features.shape)}')
        pending, index = self._pending[kind], self._index[kind]
        rows = features.detach().float().cpu()
        bad = int((~torch.isfinite(rows)).sum())
        if bad:
            raise ValueError(f'teacher {kind} features hold {bad} non-finite values (in '
                             f'{int((~torch.isfinite(rows)).any(1).sum())} of {len(keys)} samples); refusing to '
                             f'cache or train on them: check the teacher\'s weights and precision')
        for key, row in zip(keys, rows):
            if key not in index and key not in pending:
                pending[key] = row.clone()

    def flush(self) -> int:
        """Write the pending features as new shards of this rank, then load other ranks' new shards."""
        written = 0
        for kind in KINDS:
            pending = self._pending[kind]
            if not pending:
                continue
            keys = torch.frombuffer(bytearray(b''.join(pending)), dtype=torch.uint8).view(-1, KEY_BYTES)
            feats = torch.stack(list(pending.values()))
            self._write_shard(kind, keys, feats)
            written += len(pending)
            pending.clear()
        if written:
            _logger.info(f'teacher-feature cache {self.root}: wrote {written} features ({len(self)} in all)')
        self.refresh()
        return written

    def _write_shard(self, kind: str, keys: torch.Tensor, feats: torch.Tensor) -> str:
        n = 0
        while True:
            name = f'{kind}-r{self.rank}-{n:05d}.safetensors'
            if not os.path.exists(os.path.join(self.root, name)) and name not in self._loaded:
                break
            n += 1
        meta = {'kind': kind, 'digest': _payload_digest(keys, feats)}
        atomic_write(os.path.join(self.root, name), save({'keys': keys, 'features': feats}, metadata=meta))
        fault_point('cache.shard')
        self._written[kind].append(name)
        return name

    def compact(self) -> int:
        """Flush, then merge this rank's shards into one per kind, if this object wrote any since the last call (a
        killed merge leaves duplicates, which are harmless: a key keeps its first features). Returns the shards
        removed."""
        self.flush()
        removed = 0
        for kind in KINDS:
            if not self._written[kind]:
                continue
            # every shard of this rank, also those of an earlier (killed) run
            names = sorted(n for n in self._loaded | set(self._written[kind])
                           if (m := _SHARD_RE.match(n)) and m.group(1) == kind and int(m.group(2)) == self.rank
                           and os.path.exists(os.path.join(self.root, n)))
            if len(names) < 2:
                self._written[kind] = []
                continue
            parts = [load_file(os.path.join(self.root, n)) for n in names]
            keys = torch.cat([p['keys'] for p in parts])
            feats = torch.cat([p['features'] for p in parts])
            merged = self._write_shard(kind, keys, feats)
            self._loaded.add(merged)  # its rows are indexed already (from the small shards)
            for n in names:
                os.unlink(os.path.join(self.root, n))
                removed += 1
            self._written[kind] = []  # the merged shard is final
        return removed

    def close(self) -> None:
        """Release the folder for the next run (the kernel does it too when the process ends)."""
        if self._lock is not None:
            self._lock.release()

    def stats(self, reset: bool = False) -> Dict[str, Any]:
        """Samples found / computed since the last reset, and features held; ``reset`` zeroes the counters."""
        out = {'hits': dict(self.hits), 'misses': dict(self.misses), 'entries': {k: self.count(k) for k in KINDS}}
        if reset:
            self.hits, self.misses = {k: 0 for k in KINDS}, {k: 0 for k in KINDS}
        return out


class CachedTeacher(nn.Module):
    """A frozen open_clip teacher behind a `TeacherFeatureCache`: same call and output dict as the teacher.

    ``forward(image, text)`` returns the teacher's ``image_features`` / ``text_features`` (float32) for the
    inputs given, running the teacher only on samples the cache lacks (each distinct missing sample once), plus
    the teacher's other outputs (``logit_scale``...), which depend on no input.

    Args:
        teacher: The open_clip model (``output_dict=True``), frozen.
        cache: Where features are kept.
        image: Cache image features (False: never computed, as when no loss term uses them).
        text: Cache text features.
    """

    def __init__(self, teacher: nn.Module, cache: TeacherFeatureCache, image: bool = True, text: bool = True):
        super().__init__()
        self.teacher = teacher
        self.cache = cache
        self.kinds = tuple(k for k, on in (('image', image), ('text', text)) if on)
        self._constants: Optional[Dict[str, Any]] = None

    def _features(self, kind: str, x: torch.Tensor) -> torch.Tensor:
        keys = sample_keys(x)
        found = [self.cache.get(kind, k) for k in keys]
        missing: Dict[bytes, int] = {}
        for i, (k, f) in enumerate(zip(keys, found)):
            if f is None:
                missing.setdefault(k, i)
        self.cache.hits[kind] += len(keys) - sum(f is None for f in found)
        self.cache.misses[kind] += sum(f is None for f in found)
        if missing:
            idx = torch.tensor(list(missing.values()), device=x.device)
            out = self.teacher(**{kind: x.index_select(0, idx)})
            feats = out[f'{kind}_features'].float()
            self.cache.add(kind, list(missing), feats)
            self.cache.flush()  # this batch's features survive a kill at any later moment
            computed = dict(zip(missing, feats.detach().cpu()))
            found = [computed[k] if f is None else f for k, f in zip(keys, found)]
        return torch.stack(found).to(x.device)

    def forward(self, image: Optional[torch.Tensor] = None, text: Optional[torch.Tensor] = None) -> Dict[str, Any]:
        if self._constants is None:
            out = self.teacher(image=None, text=None)
            self._constants = {k: v for k, v in out.items() if not k.endswith('_features')}
        out = dict(self._constants)
        for kind, x in (('image', image), ('text', text)):
            out[f'{kind}_features'] = self._features(kind, x) if x is not None and kind in self.kinds else None
        return out
