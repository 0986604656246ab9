import gzip
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from open_clip_spike.data import (
    CLASSNAMES, TEMPLATES, IDXDataset, build_dataset, dataset_classnames, get_classnames, get_templates, read_idx)

FIXTURE = Path(__file__).parents[1] / 'fixtures' / 'fashion_mnist'


def _write_idx(path, array, gz=True):
    dtype_code = {np.dtype(np.uint8): 0x08, np.dtype('>i4'): 0x0C}[array.dtype]
    header = bytes([0, 0, dtype_code, array.ndim]) + struct.pack(f'>{array.ndim}I', *array.shape)
    opener = gzip.open if gz else open
    with opener(path, 'wb') as f:
        f.write(header + array.tobytes())


@pytest.fixture
def digits_idx(tmp_path):
    """scikit-learn's 8x8 digits (first 30 for test, next 50 for train) written as uncompressed IDX files."""
    from sklearn.datasets import load_digits
    d = load_digits()
    images = (d.images * 255 / 16).round().astype(np.uint8)
    labels = d.target.astype(np.uint8)
    _write_idx(tmp_path / 't10k-images-idx3-ubyte', images[:30], gz=False)
    _write_idx(tmp_path / 't10k-labels-idx1-ubyte', labels[:30], gz=False)
    _write_idx(tmp_path / 'train-images.idx3-ubyte.gz', images[30:80])  # the dotted spelling, compressed
    _write_idx(tmp_path / 'train-labels.idx1-ubyte.gz', labels[30:80])
    return tmp_path, images, labels


def test_builtin_classnames():
    assert get_classnames('cifar10') == [
        'airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
    assert get_classnames('cifar10') != get_classnames('stl10')  # the reference code's mix-up
    assert get_classnames('fashion_mnist') == [
        'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot']
    sizes = {k: len(v) for k, v in CLASSNAMES.items()}
    assert sizes == dict(fashion_mnist=10, cifar10=10, cifar100=100, stl10=10, flowers102=102, oxford_pets=37,
                         caltech101=101, imagenet=1000)
    for name in CLASSNAMES:
        names = get_classnames(name)
        assert all('_' not in n for n in names), name
        if name != 'imagenet':  # CLIP's ImageNet names repeat 'missile' and 'sunglasses'
            assert len(set(names)) == len(names), name
    assert get_classnames('cifar100')[1] == 'aquarium fish'


def test_builtin_templates():
    for name, templates in TEMPLATES.items():
        assert templates and all(t.count('{}') == 1 for t in templates), name
    assert len(get_templates('imagenet')) == 80 and len(get_templates('imagenet_simple')) == 7
    assert len(get_templates('cifar10')) == 18
    assert get_templates('flowers102') == ['a photo of a {}, a type of flower.']
    for name in CLASSNAMES:
        assert name in TEMPLATES


def test_names_and_templates_from_files(tmp_path, caplog):
    (tmp_path / 'names.txt').write_text('zebra\n\n# a comment\nboat\n')
    assert get_classnames(tmp_path / 'names.txt') == ['zebra', 'boat']
    (tmp_path / 'templates.txt').write_text('a photo of a {}.\nart of the {}.\n')
    assert get_templates(os.fspath(tmp_path / 'templates.txt')) == ['a photo of a {}.', 'art of the {}.']
    (tmp_path / 'bad.txt').write_text('a photo of a thing.\n')
    with pytest.raises(ValueError, match='exactly one'):
        get_templates(tmp_path / 'bad.txt')
    (tmp_path / 'dupes.txt').write_text('cat\ndog\ncat\n')
    assert get_classnames(tmp_path / 'dupes.txt') == ['cat', 'dog', 'cat']
    assert "Repeated class names" in caplog.text and "['cat']" in caplog.text
    (tmp_path / 'empty.txt').write_text('\n')
    with pytest.raises(ValueError, match='no class names'):
        get_classnames(tmp_path / 'empty.txt')
    with pytest.raises(ValueError, match='Unknown class names'):
        get_classnames('cifar11')
    with pytest.raises(ValueError, match='Unknown templates'):
        get_templates('nope')


def test_idx_reader_on_generated_digits(digits_idx):
    root, images, labels = digits_idx
    test = IDXDataset(root, 'test')
    assert len(test) == 30 and test.targets == labels[:30].tolist()
    img, target = test[7]
    assert img.mode == 'L' and img.size == (8, 8) and target == int(labels[7])
    assert np.array_equal(np.asarray(img), images[7])
    train = IDXDataset(root, 'train', transform=lambda im: torch.from_numpy(np.asarray(im).copy()),
                       target_transform=lambda t: t + 100)
    x, t = train[0]
    assert len(train) == 50 and torch.equal(x, torch.from_numpy(images[30])) and t == int(labels[30]) + 100
    assert np.array_equal(read_idx(root / 'train-images.idx3-ubyte.gz'), images[30:80])


def test_idx_reader_on_fashion_mnist_fixture():
    test = IDXDataset(FIXTURE, 'test', classes=CLASSNAMES['fashion_mnist'])
    train = IDXDataset(FIXTURE, 'train')
    assert len(test) == 200 and len(train) == 400
    assert np.bincount(test.targets).tolist() == [20] * 10
    assert test[0][0].size == (28, 28) and test.classes[9] == 'Ankle boot'


def test_idx_reader_errors(tmp_path, digits_idx):
    root, images, labels = digits_idx
    with pytest.raises(FileNotFoundError, match='t10k-images'):
        IDXDataset(tmp_path / 'nowhere', 'test')
    with pytest.raises(ValueError, match='split'):
        IDXDataset(root, 'val')
    bad = tmp_path / 'bad'
    bad.mkdir()
    (bad / 't10k-images-idx3-ubyte').write_bytes(b'not an idx file')
    _write_idx(bad / 't10k-labels-idx1-ubyte', labels[:3], gz=False)
    with pytest.raises(ValueError, match='not an IDX file'):
        IDXDataset(bad, 'test')
    data = (root / 't10k-images-idx3-ubyte').read_bytes()
    (bad / 't10k-images-idx3-ubyte').write_bytes(data[:-10])  # truncated
    with pytest.raises(ValueError, match='header says shape'):
        IDXDataset(bad, 'test')
    _write_idx(bad / 't10k-images-idx3-ubyte', images[:4], gz=False)  # 4 images, 3 labels
    with pytest.raises(ValueError, match='4 images but'):
        IDXDataset(bad, 'test')
    with pytest.raises(ValueError, match='class names'):
        IDXDataset(root, 'test', classes=['zero', 'one'])


def test_build_dataset_idx_imagefolder_and_errors(tmp_path, digits_idx):
    root, images, labels = digits_idx
    ds = build_dataset(root, 'test')
    assert isinstance(ds, IDXDataset) and len(ds) == 30
    assert dataset_classnames(os.fspath(root), ds) is None  # IDX files carry no names

    from PIL import Image
    folder = tmp_path / 'imgs'
    for cls, n in (('pickup_truck', 2), ('rose', 3)):
        (folder / 'test' / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(images[i]).save(folder / 'test' / cls / f'{i}.png')
    ds = build_dataset(folder, 'test')
    assert len(ds) == 5 and ds.targets == [0, 0, 1, 1, 1]
    assert dataset_classnames(os.fspath(folder), ds) == ['pickup truck', 'rose']

    with pytest.raises(ValueError, match='not a folder'):
        build_dataset('imagenet-21k')
    with pytest.raises(FileNotFoundError, match='download'):
        build_dataset('cifar10', root=tmp_path / 'empty')  # not on disk, download not allowed
    assert dataset_classnames('cifar10', None) == list(CLASSNAMES['cifar10'])


def test_build_dataset_torchvision_fashion_mnist(tmp_path):
    # torchvision's own reader, from its raw-folder layout (uncompressed files)
    raw = tmp_path / 'FashionMNIST' / 'raw'
    raw.mkdir(parents=True)
    for f in FIXTURE.glob('t10k-*.gz'):
        with gzip.open(f, 'rb') as src, open(raw / f.name[:-3], 'wb') as dst:
            shutil.copyfileobj(src, dst)
    for f in FIXTURE.glob('train-*.gz'):
        with gzip.open(f, 'rb') as src, open(raw / f.name[:-3], 'wb') as dst:
            shutil.copyfileobj(src, dst)
    ds = build_dataset('fashion_mnist', 'test', root=tmp_path)
    ours = IDXDataset(FIXTURE, 'test')
    assert len(ds) == 200 and ds.targets.tolist() == ours.targets
    assert np.array_equal(np.asarray(ds[5][0]), np.asarray(ours[5][0]))
