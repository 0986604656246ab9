"""``spikeclip clip-benchmark``: clip_benchmark evaluates a SpikeCLIP checkpoint offline, with the same top-1 as
``spikeclip zeroshot`` on the same data and templates (Fashion-MNIST as a local WebDataset, a fake CIFAR-10 in
torchvision's on-disk format)."""
import json
import pickle

import numpy as np
import pytest
import torch

pytest.importorskip('clip_benchmark', reason='clip_benchmark is an optional dependency (extra: benchmark)')

import open_clip  # noqa: E402
from open_clip_spike.benchmark import clip_benchmark_templates, export_wds  # noqa: E402
from open_clip_spike.cli import clip_benchmark as cli  # noqa: E402
from open_clip_spike.data import get_classnames, get_templates  # noqa: E402
from open_clip_spike.zero_shot import build_classifier, zeroshot  # noqa: E402

from ..conftest import FASHION_MNIST, TINY  # noqa: E402


@pytest.fixture
def checkpoint(tmp_path, calibrated_tiny_model):
    """SpikeCLIP-Tiny with BatchNorm statistics of real images (an untrained tower in eval mode is silent)."""
    from safetensors.torch import save_file
    path = tmp_path / 'tiny.safetensors'
    save_file(calibrated_tiny_model.state_dict(), str(path))
    return str(path)


def _clip_benchmark(args, tmp_path):
    out = tmp_path / 'result.json'
    rc = cli.main(['eval', '--model', TINY, '--num_workers', '0', '--batch_size', '50', '--quiet',
                   '--output', str(out), *args])
    assert rc == 0
    return json.loads(out.read_text())


def test_fashion_mnist_as_local_wds_same_top1_as_zeroshot(tmp_path, checkpoint):
    root = export_wds(FASHION_MNIST, tmp_path / 'wds', classnames='fashion_mnist')
    assert (root / 'test' / 'nshards.txt').read_text().strip() == '1'
    assert (root / 'classnames.txt').read_text().splitlines() == get_classnames('fashion_mnist')
    assert (root / 'zeroshot_classification_templates.txt').read_text().splitlines() == \
        clip_benchmark_templates(get_templates('fashion_mnist'))
    result = _clip_benchmark(['--dataset', 'wds/fashion_mnist', '--dataset_root', str(root),
                              '--pretrained', checkpoint], tmp_path)
    ours = zeroshot(TINY, checkpoint, str(FASHION_MNIST), classnames='fashion_mnist', batch_size=50,
                    progress=False)
    assert ours['n'] == 200
    assert result['metrics']['acc1'] == ours['top1']
    assert result['metrics']['acc5'] == ours['top5']
    assert result['model'] == TINY and result['pretrained'] == checkpoint


def test_per_image_predictions_agree_through_the_python_api(tmp_path, checkpoint):
    # clip_benchmark's own classifier and classification loop vs open_clip_spike's, image by image
    from clip_benchmark.datasets.builder import build_dataset
    from clip_benchmark.metrics.zeroshot_classification import run_classification, zero_shot_classifier
    from open_clip_spike.data import build_dataset as our_dataset
    root = export_wds(FASHION_MNIST, tmp_path / 'wds', classnames='fashion_mnist', limit=100)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY, pretrained=checkpoint)
    model.eval()
    tokenizer = open_clip.get_tokenizer(TINY)
    ds = build_dataset('wds/fashion_mnist', root=str(root), transform=preprocess, split='test')
    clf = zero_shot_classifier(model, tokenizer, ds.classes, ds.templates, 'cpu', amp=False)
    logits, target = run_classification(model, clf, torch.utils.data.DataLoader(ds.batched(25), batch_size=None),
                                        'cpu', amp=False)
    ours_clf = build_classifier(model, tokenizer, 'fashion_mnist', 'fashion_mnist')
    torch.testing.assert_close(clf, ours_clf, rtol=0, atol=1e-6)
    data = torch.utils.data.Subset(our_dataset(str(FASHION_MNIST), 'test', preprocess), range(100))
    images = torch.stack([x for x, _ in data])
    with torch.no_grad():
        ours = torch.nn.functional.normalize(model.encode_image(images), dim=-1) @ ours_clf
    assert target.tolist() == [y for _, y in data]
    assert torch.equal(logits.argmax(1), ours.argmax(1))
    assert len(set(ours.argmax(1).tolist())) > 1  # a calibrated tower separates images (not one constant guess)


def _fake_cifar10(root, n=40):
    """CIFAR-10's python layout (cifar-10-batches-py/test_batch + batches.meta) with n random images."""
    folder = root / 'cifar-10-batches-py'
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batch = {'batch_label': 'testing batch 1 of 1', 'labels': [i % 10 for i in range(n)],
             'data': rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
             'filenames': [f'img{i}.png' for i in range(n)]}
    with open(folder / 'test_batch', 'wb') as f:
        pickle.dump(batch, f)
    with open(folder / 'batches.meta', 'wb') as f:
        pickle.dump({'label_names': get_classnames('cifar10'), 'num_cases_per_batch': n, 'num_vis': 3072}, f)
    return root


def test_cifar10_on_disk_same_top1_as_zeroshot(tmp_path, checkpoint, monkeypatch):
    import torchvision
    # torchvision checks the real files' md5 sums (and would download); the fake has their layout, not their bytes
    monkeypatch.setattr(torchvision.datasets.cifar, 'check_integrity', lambda path, md5=None: True)
    root = _fake_cifar10(tmp_path / 'data')
    result = _clip_benchmark(['--dataset', 'cifar10', '--dataset_root', str(root), '--pretrained', checkpoint],
                             tmp_path)
    ours = zeroshot(TINY, checkpoint, 'cifar10', data_root=str(root), batch_size=50, progress=False)
    assert ours['n'] == 40 and ours['num_templates'] == 18
    assert result['metrics']['acc1'] == ours['top1']
    assert result['metrics']['acc5'] == ours['top5']


def test_amp_is_off_unless_asked(monkeypatch):
    seen = {}

    def fake_main():
        import sys
        seen['argv'] = list(sys.argv[1:])
    monkeypatch.setattr('clip_benchmark.cli.main', fake_main)
    assert cli.main(['eval', '--dataset', 'cifar10']) == 0
    assert seen['argv'] == ['eval', '--dataset', 'cifar10', '--no_amp']
    assert cli.main(['eval', '--amp', '--dataset', 'cifar10']) == 0
    assert seen['argv'] == ['eval', '--dataset', 'cifar10']


@pytest.mark.parametrize('argv, expected', [
    (['eval', '--dataset', 'no_such_set', '--model', TINY, '--pretrained', '', '--num_workers', '0'],
     'Unsupported dataset: no_such_set'),
    (['export-wds', '/no/such/folder', 'OUT'], 'is not a folder'),
])
def test_bad_input_is_one_line_exit_2(argv, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('spikeclip clip-benchmark: error: ') and len(err.splitlines()) == 1
    assert expected in err and 'Traceback' not in err


def test_export_refuses_existing_output_and_wrong_classnames(tmp_path, capsys):
    out = tmp_path / 'wds'
    assert cli.main(['export-wds', str(FASHION_MNIST), str(out), '--limit', '5']) == 2  # IDX files hold no names
    assert 'No class names known' in capsys.readouterr().err and not out.exists()
    assert cli.main(['export-wds', str(FASHION_MNIST), str(out), '--limit', '5', '--classnames', 'fashion_mnist']) == 0
    assert cli.main(['export-wds', str(FASHION_MNIST), str(out), '--limit', '5', '--classnames', 'fashion_mnist']) == 2
    assert 'exists' in capsys.readouterr().err
    with pytest.raises(ValueError, match='only 3 class names'):
        export_wds(FASHION_MNIST, tmp_path / 'w2', classnames=['a', 'b', 'c'])
