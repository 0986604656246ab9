"""Training data checked before any model is built, and unreadable images skipped during the run.

open_clip_train reads a CSV with pandas when it builds its data loaders, after both models exist: a missing column,
zero rows or bytes that are not UTF-8 end in a traceback there, and one image that cannot be decoded ends the run
mid-epoch. `check_csv` reads the file as open_clip_train will (``pandas.read_csv`` with ``--csv-separator``) and
checks its columns, its rows and that every image path exists, with one line naming the file and the fix.
`tolerant_csv_patches` make an image that cannot be read (corrupt, empty, a decompression bomb) skip its sample,
as open_clip's webdataset handlers skip theirs; `BadImageCounter` counts the skipped samples per batch and stops
the run once more than ``--spike-max-bad-images`` were skipped.
"""
import logging
import os
from typing import Any, List, Optional, Tuple

from torch.utils.data import default_collate

__all__ = ['BadImageCounter', 'BadImagesError', 'DataCheckError', 'check_csv', 'tolerant_csv_patches']

_logger = logging.getLogger(__name__)


class DataCheckError(ValueError):
    """The training data cannot be read; the message names the file and the fix."""


class BadImagesError(DataCheckError):
    """More images could not be read during the run than the limit allows."""


def check_csv(path: str, img_key: str, caption_key: str, sep: str, flag: str = '--train-data') -> int:
    """Check a CSV as open_clip_train's ``CsvDataset`` will read it; returns its number of rows."""
    import pandas as pd
    try:
        df = pd.read_csv(path, sep=sep)
    except UnicodeDecodeError as e:
        raise DataCheckError(f'{flag} {path!r}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); '
                             f'save the file as UTF-8') from None
    except pd.errors.EmptyDataError:
        raise DataCheckError(f'{flag} {path!r} is empty: it needs a header line with the {img_key!r} and '
                             f'{caption_key!r} columns and one row per image') from None
    except (pd.errors.ParserError, ValueError) as e:
        raise DataCheckError(f'{flag} {path!r} cannot be parsed as a CSV with separator {sep!r} '
                             f'({str(e).splitlines()[0]}); check --csv-separator') from None
    missing = [k for k in (img_key, caption_key) if k not in df.columns]
    if missing:
        raise DataCheckError(
            f'{flag} {path!r} has no column {" or ".join(map(repr, missing))} (columns: '
            f'{", ".join(map(repr, map(str, df.columns[:8])))}); name them with --csv-img-key / --csv-caption-key, '
            f'or set --csv-separator (now {sep!r})')
    if len(df) == 0:
        raise DataCheckError(f'{flag} {path!r} has a header but no rows: add one row per image')
    images = df[img_key].tolist()
    absent = [(i, p) for i, p in enumerate(images) if not isinstance(p, str) or not os.path.isfile(p)]
    if absent:
        row, first = absent[0]
        raise DataCheckError(
            f'{flag} {path!r}: {len(absent)} of {len(images)} image paths do not exist, e.g. {first!r} (row '
            f'{row + 2}); fix the paths (relative ones are read from {os.getcwd()}) or remove those rows')
    return len(df)


# ---------------------------------------------------------------------------------------------------------------
# Unreadable images during the run

class _Skipped:
    """What the tolerant dataset returns for a sample whose image cannot be read (picklable, for workers)."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason


class _Batch(list):
    """A collated batch (``[images, texts]``, as default_collate gives) that remembers the skipped samples."""
    skipped: List[Tuple[str, str]] = []


def collate_skipping(samples: List[Any]) -> Optional[_Batch]:
    """default_collate over the readable samples; None when none is."""
    skipped = [(s.path, s.reason) for s in samples if isinstance(s, _Skipped)]
    kept = [s for s in samples if not isinstance(s, _Skipped)]
    if not kept:
        batch = _Batch()
    else:
        batch = _Batch(default_collate(kept))
    batch.skipped = skipped
    return batch


def _tolerant_dataset_class():
    import open_clip_train.data as oc_data
    base = getattr(oc_data.CsvDataset, '_spikeclip_base', oc_data.CsvDataset)  # upstream's, even while patched

    class TolerantCsvDataset(base):
        """open_clip_train's CsvDataset whose samples with an unreadable image come back as `_Skipped`."""
        _spikeclip_base = base

        def __getitem__(self, idx):
            from PIL import Image
            path = str(self.images[idx])
            try:
                images = self.transforms(Image.open(path))
            except Exception as e:  # noqa: BLE001 -- any decoding error (PIL raises OSError, ValueError, its own)
                reason = f'{type(e).__name__}: {str(e)[:120]}'
                _logger.warning(f'skipped an image that cannot be read: {path} ({reason})')
                return _Skipped(path, reason)
            texts = self.tokenize([str(self.captions[idx])])[0]
            return images, texts

    TolerantCsvDataset.__module__ = __name__
    return TolerantCsvDataset


_classes = {}


def __getattr__(name: str):
    # the dataset class is made on first use (it subclasses open_clip_train's, imported lazily), and found by this
    # name when a data loader worker started with spawn unpickles the dataset
    if name == 'TolerantCsvDataset':
        if name not in _classes:
            _classes[name] = _tolerant_dataset_class()
        return _classes[name]
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def _tolerant_get_csv_dataset(get_csv_dataset):
    def wrapped(args, preprocess_fn, is_train, epoch=0, tokenizer=None):
        info = get_csv_dataset(args, preprocess_fn, is_train, epoch=epoch, tokenizer=tokenizer)
        info.dataloader.collate_fn = collate_skipping  # read by each new iterator (and its workers)
        return info
    return wrapped


def tolerant_csv_patches() -> list:
    """(module, attribute, value) patches of open_clip_train.data: CSV samples with unreadable images skipped."""
    import open_clip_train.data as oc_data
    return [(oc_data, 'CsvDataset', __getattr__('TolerantCsvDataset')),
            (oc_data, 'get_csv_dataset', _tolerant_get_csv_dataset(oc_data.get_csv_dataset))]


class BadImageCounter:
    """Counts the samples skipped in each batch; more than ``limit`` in the run raises `BadImagesError`.

    Called by the step loader with every batch; returns False for a batch with no readable sample (dropped)."""

    def __init__(self, limit: int):
        self.limit = int(limit)
        self.total = 0
        self.epoch = 0
        self.last: Optional[Tuple[str, str]] = None

    def __call__(self, batch: Any) -> bool:
        skipped = getattr(batch, 'skipped', None)
        if not skipped:
            return True
        self.total += len(skipped)
        self.epoch += len(skipped)
        self.last = skipped[-1]
        if self.total > self.limit:
            path, reason = self.last
            raise BadImagesError(
                f'{self.total} training images could not be read, more than --spike-max-bad-images {self.limit} '
                f'(the last: {path}: {reason}); fix or remove them from the CSV, or raise the limit')
        return len(batch) > 0

    def take_epoch(self) -> int:
        n, self.epoch = self.epoch, 0
        return n
