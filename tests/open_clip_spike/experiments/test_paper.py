"""Tests of the paper recipes (recipes/paper/) and their helpers (open_clip_spike.paper), on small fakes.

The fakes use the on-disk formats the real runs read: CIFAR-10's python-pickle batches, STL-10's binary files,
Flowers102's .mat split files, an ImageNet-like ImageFolder; images come from the committed Fashion-MNIST subset.
torchvision checks the md5 of the real CIFAR / STL-10 / Flowers files, which fakes cannot match: in-process tests
replace that check by an existence check. The shell recipes themselves run end to end (stage 2 teacher, stage 1,
stage 2 with model selection and test evaluation, label evaluations) with SpikeCLIP-Tiny and a tiny teacher, on
an ImageFolder fake, with tiny settings passed as environment variables.
"""
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

import forkrun  # tests/helpers/forkrun.py
import open_clip_spike  # noqa: F401
from open_clip_spike.cli.paper import main as paper_main
from open_clip_spike.experiments import paper
from open_clip_spike.data import CLASSNAMES, IDXDataset, get_templates

REPO = Path(__file__).parents[3]
RECIPES = REPO / 'recipes' / 'paper'
FASHION_MNIST = Path(__file__).parents[2] / 'fixtures' / 'fashion_mnist'
TEST_COLOR = 255  # every pixel of every fake TEST image: a prepared training set must contain none of them


def _fm_images(split, per_class):
    """The first ``per_class`` images of each class of the committed Fashion-MNIST subset, as 32x32 RGB arrays."""
    data = IDXDataset(FASHION_MNIST, split)
    taken, out = [0] * 10, []
    for i in range(len(data)):
        image, y = data[i]
        if taken[y] < per_class:
            taken[y] += 1
            out.append((np.asarray(image.convert('RGB').resize((32, 32))), int(y)))
    assert taken == [per_class] * 10
    return out


@pytest.fixture
def no_md5(monkeypatch):
    """torchvision's md5 checks of CIFAR / STL-10 / Flowers102 files become existence checks (fakes' md5 differ)."""
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.flowers102 as flowers
    import torchvision.datasets.stl10 as stl10
    for mod in (cifar, stl10, flowers):
        monkeypatch.setattr(mod, 'check_integrity', lambda path, md5=None: os.path.isfile(path))


def _fake_cifar10(root, per_batch=6):
    """cifar-10-batches-py: 5 train batches (images darker than TEST_COLOR), a test batch of TEST_COLOR images."""
    folder = root / 'cifar-10-batches-py'
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels_all = []
    for b in range(1, 6):
        labels = [(b * per_batch + i) % 10 for i in range(per_batch)]
        data = rng.integers(0, 200, size=(per_batch, 3072), dtype=np.uint8)
        with open(folder / f'data_batch_{b}', 'wb') as f:
            pickle.dump({'data': data, 'labels': labels}, f)
        labels_all += labels
    with open(folder / 'test_batch', 'wb') as f:
        pickle.dump({'data': np.full((10, 3072), TEST_COLOR, np.uint8), 'labels': list(range(10))}, f)
    with open(folder / 'batches.meta', 'wb') as f:
        pickle.dump({'label_names': ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
                                     'truck']}, f)
    return labels_all


def _pixels(folder):
    from PIL import Image
    return [np.asarray(Image.open(p)) for p in sorted(Path(folder).rglob('*.png'))]


def _caption_class(caption, names, templates):
    hits = [i for i, n in enumerate(names) if caption in {t.format(n) for t in templates}]
    assert len(hits) == 1, caption
    return hits[0]


# ---------------------------------------------------------------------------------------------------------------
# Stage 1 captions

def test_imagenet_captions_csv(tmp_path):
    from PIL import Image
    synsets, names, temps = ['n02', 'n01', 'n03'], ['goldfish', 'tench', 'shark'], ['a photo of a {}.', 'art of {}.']
    # class i is the i-th folder in sorted order: n01 -> goldfish, n02 -> tench, n03 -> shark
    for k, s in enumerate(synsets):
        (tmp_path / 'train' / s).mkdir(parents=True)
        for j in range(3 + k):
            Image.new('RGB', (8, 8)).save(tmp_path / 'train' / s / f'{j}.JPEG')
    info = paper.imagenet_captions_csv(tmp_path / 'train', tmp_path / 'out.csv', names, temps, seed=1)
    assert info == dict(images=3 + 4 + 5, classes=3, sentences=6)
    lines = (tmp_path / 'out.csv').read_text().splitlines()
    assert lines[0] == 'filepath\ttitle' and len(lines) == 13
    by_folder = {'n01': 'goldfish', 'n02': 'tench', 'n03': 'shark'}
    for line in lines[1:]:
        path, caption = line.split('\t')
        assert os.path.isfile(path)
        assert caption in {t.format(by_folder[Path(path).parent.name]) for t in temps}
    again = tmp_path / 'again.csv'
    paper.imagenet_captions_csv(tmp_path / 'train', again, names, temps, seed=1)
    assert again.read_text() == (tmp_path / 'out.csv').read_text()  # seeded: the same CSV every time
    with pytest.raises(paper.PaperError, match='3 class folders but 2 class names'):
        paper.imagenet_captions_csv(tmp_path / 'train', tmp_path / 'x.csv', names[:2], temps)
    assert not (tmp_path / 'x.csv').exists()


# ---------------------------------------------------------------------------------------------------------------
# Stage 2 data

def test_prepare_cifar10_names_split_and_no_test_images(tmp_path, no_md5):
    labels = _fake_cifar10(tmp_path / 'raw')
    info = paper.prepare_stage2('cifar10', tmp_path / 'prep', data_root=tmp_path / 'raw', val_fraction=0.2, seed=3)
    # 3 training images per class: round(0.2 * 3) = 1 of each goes to validation
    assert (info['train'], info['val'], info['classes']) == (20, 10, 10)
    prep = tmp_path / 'prep'
    names = (prep / 'classnames.txt').read_text().splitlines()
    assert names == list(CLASSNAMES['cifar10']) and names[1] == 'automobile'  # CIFAR-10's names, not STL-10's
    split = json.loads((prep / 'split.json').read_text())
    val = split['val_indices']
    assert len(val) == 10 and max(val) < len(labels)
    assert sorted(labels[i] for i in val) == list(range(10))
    # the captions of train.csv give back the labels of the TRAIN images that are not in the validation split
    rows = [line.split('\t') for line in (prep / 'train.csv').read_text().splitlines()[1:]]
    temps = (prep / 'templates.txt').read_text().splitlines()
    assert temps == list(get_templates('cifar10'))
    idx = [int(Path(p).stem) for p, _ in rows]
    assert sorted(idx + val) == list(range(len(labels)))
    assert [_caption_class(c, names, temps) for _, c in rows] == [labels[i] for i in idx]
    # validation: one folder per class in label order, each image in its class's folder
    folders = sorted(p.name for p in (prep / 'val').iterdir())
    for i in val:
        assert (prep / 'val' / folders[labels[i]] / f'{i:06d}.png').exists()
    assert all(p.max() < TEST_COLOR for p in _pixels(prep))  # not one test image
    with pytest.raises(paper.PaperError, match='already holds a prepared dataset'):
        paper.prepare_stage2('cifar10', prep, data_root=tmp_path / 'raw')


def test_prepare_stl10_binary_layout(tmp_path, no_md5):
    folder = tmp_path / 'raw' / 'stl10_binary'
    folder.mkdir(parents=True)
    n = 20
    images = np.zeros((n, 3, 96, 96), np.uint8)
    images[:, 0, :, :] = np.arange(n, dtype=np.uint8)[:, None, None] * 10  # red channel encodes the index
    file_labels = np.array([1 + i % 10 for i in range(n)], np.uint8)      # STL-10 files count labels from 1
    images.tofile(folder / 'train_X.bin')
    file_labels.tofile(folder / 'train_y.bin')
    np.full((4, 3, 96, 96), TEST_COLOR, np.uint8).tofile(folder / 'test_X.bin')
    np.arange(1, 5, dtype=np.uint8).tofile(folder / 'test_y.bin')
    (folder / 'unlabeled_X.bin').write_bytes(b'')  # torchvision wants it present, even for split='train'
    (folder / 'class_names.txt').write_text('\n'.join(CLASSNAMES['stl10']) + '\n')
    info = paper.prepare_stage2('stl10', tmp_path / 'prep', data_root=tmp_path / 'raw', val_fraction=0.1)
    assert (info['train'], info['val']) == (10, 10)  # 2 images per class: one of each goes to validation
    names = list(CLASSNAMES['stl10'])
    temps = get_templates('stl10')
    from PIL import Image
    for path, caption in (line.split('\t') for line in (tmp_path / 'prep' / 'train.csv').read_text().splitlines()[1:]):
        i = int(np.asarray(Image.open(path))[0, 0, 0]) // 10
        assert _caption_class(caption, names, temps) == file_labels[i] - 1
    assert all(p.max() < TEST_COLOR for p in _pixels(tmp_path / 'prep'))


def test_prepare_flowers102_reads_the_official_train_split(tmp_path, no_md5):
    from PIL import Image
    from scipy.io import savemat
    base = tmp_path / 'raw' / 'flowers-102'
    (base / 'jpg').mkdir(parents=True)
    n = 12
    for i in range(1, n + 1):
        Image.new('RGB', (40, 40), (i * 20, 0, 0)).save(base / 'jpg' / f'image_{i:05d}.jpg', quality=100)
    labels = np.array([1 + (i % 3) for i in range(n)])  # 1-based, classes 0..2
    savemat(base / 'imagelabels.mat', {'labels': labels})
    trnid, valid, tstid = np.arange(1, 7), np.arange(7, 10), np.arange(10, 13)  # official: small train, big test
    savemat(base / 'setid.mat', {'trnid': trnid, 'valid': valid, 'tstid': tstid})
    names = ['rose', 'lotus', 'tulip']
    info = paper.prepare_stage2('flowers102', tmp_path / 'prep', classnames=names, data_root=tmp_path / 'raw',
                                val_fraction=0.5)
    assert info['train'] + info['val'] == len(trnid)  # the reference code swaps train and test; not here
    ids = sorted(round(p[0, 0, 0] / 20) for p in _pixels(tmp_path / 'prep'))
    assert ids == trnid.tolist()
    temps = get_templates('flowers102')
    for path, caption in (line.split('\t') for line in (tmp_path / 'prep' / 'train.csv').read_text().splitlines()[1:]):
        i = round(np.asarray(Image.open(path))[0, 0, 0] / 20)
        assert _caption_class(caption, names, temps) == labels[i - 1] - 1


@pytest.mark.parametrize('labels, fraction, n_val', [
    ([0] * 10 + [1] * 10, 0.1, 2), ([0] * 2 + [1] * 9, 0.5, 1 + 4), ([0] + [1] * 3, 0.5, 0 + 2)])
def test_stratified_validation_split(labels, fraction, n_val):
    val = paper._stratified_val(labels, fraction, seed=0)
    assert len(val) == n_val
    train_classes = {labels[i] for i in range(len(labels)) if i not in val}
    assert train_classes == set(labels)  # every class keeps training images
    assert paper._stratified_val(labels, fraction, seed=0) == val  # seeded


def test_prepare_bad_input(tmp_path):
    with pytest.raises(paper.PaperError, match='val_fraction'):
        paper.prepare_stage2(FASHION_MNIST, tmp_path / 'p', classnames='fashion_mnist', val_fraction=1.0)
    with pytest.raises(paper.PaperError, match='no class names known'):
        paper.prepare_stage2(FASHION_MNIST, tmp_path / 'p')
    from PIL import Image
    for i, c in enumerate(['a', 'a', 'b']):
        (tmp_path / 'few' / c).mkdir(parents=True, exist_ok=True)
        Image.new('RGB', (4, 4)).save(tmp_path / 'few' / c / f'{i}.png')
    with pytest.raises(paper.PaperError, match=r"1 class\(es\) with fewer than 2 training images, e.g. \['b'\]"):
        paper.prepare_stage2(tmp_path / 'few', tmp_path / 'p')
    assert not (tmp_path / 'p').exists()


# ---------------------------------------------------------------------------------------------------------------
# Model selection

def test_select_best_epoch(tmp_path):
    ckpt = tmp_path / 'run' / 'checkpoints'
    ckpt.mkdir(parents=True)
    log = ''.join(f'2026-01-01,00:00:00 | INFO | Eval Epoch: {e} zeroshot-val-top1: {v:.4f}\tzeroshot-val-top5: 1.0\n'
                  for e, v in [(1, 0.2), (2, 0.9), (3, 0.5), (4, 0.6)])
    (tmp_path / 'run' / 'out.log').write_text('Train Epoch: 0 ...\n' + log)
    for e in (1, 3, 4):  # epoch 2 (the best) has no checkpoint: --save-frequency skipped it
        (ckpt / f'epoch_{e}.safetensors').write_bytes(f'weights {e}'.encode())
    r = paper.select_best_epoch(tmp_path / 'run')
    assert (r['epoch'], r['value']) == (4, 0.6) and r['candidates'] == {1: 0.2, 3: 0.5, 4: 0.6}
    assert (ckpt / 'best.safetensors').read_bytes() == b'weights 4'
    with pytest.raises(paper.PaperError, match="no 'val-loss' evaluation"):
        paper.select_best_epoch(tmp_path / 'run', metric='val-loss')
    with pytest.raises(paper.PaperError, match='not found'):
        paper.select_best_epoch(tmp_path / 'nothing')


def test_results_table(tmp_path):
    (tmp_path / 'a.json').write_text(json.dumps(dict(top1=0.5, top5=0.75, n=8, dataset='cifar10', model='M',
                                                     pretrained='runs/stage2-cifar10/checkpoints/best.safetensors')))
    (tmp_path / 'b.json').write_text(json.dumps(dict(mode='replace', top1=0.25, top1_replaced=0.125, n=8,
                                                     dataset='stl10', model='M', pretrained='openai')))
    table = paper.results_table([tmp_path / 'a.json', tmp_path / 'b.json']).splitlines()
    assert table[2] == '| zero-shot | cifar10 | M | stage2-cifar10 | 50.00 | 75.00 |  |  | 8 |'
    assert table[3] == '| replace | stl10 | M | openai | 25.00 |  | 12.50 |  | 8 |'
    (tmp_path / 'c.json').write_text('{"accuracy": 1}')
    with pytest.raises(paper.PaperError, match='not a zeroshot or relabel result'):
        paper.results_table([tmp_path / 'c.json'])


# ---------------------------------------------------------------------------------------------------------------
# The recipes, end to end on fakes

def _env(root, **extra):
    env = dict(os.environ, PYTHON=sys.executable, NPROC='1', DEVICE='cpu', PRECISION='fp32', WORKERS='0',
               REPORT_TO='none', RUNS=str(root / 'runs'), DATA_DIR=str(root / 'data'), RESULTS=str(root / 'results'),
               STUDENT='SpikeCLIP-Tiny', TEACHER_MODEL='SpikeCLIP-DemoTeacher',
               TEACHER_PRETRAINED=str(root / 'teacher.safetensors'), OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    env.pop('SPIKECLIP_LOGS', None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _sh(script, *args, env, ok=True, fork=False):
    """Run a recipe; ``fork=True``: its ``$PYTHON`` commands run in forks of this process (``forkrun.run_script``)
    instead of new interpreters, 10-15 s of imports each."""
    cmd = ['bash', str(RECIPES / script), *map(str, args)]
    if fork:
        proc = forkrun.run_script(cmd, env=env, cwd=REPO, timeout=600)
    else:
        proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    if ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope='module')
def recipes_run(tmp_path_factory):
    """Runs stage2_teacher.sh, stage1.sh (ImageNet-style), stage2.sh and label_eval.sh on an ImageFolder fake, their
    Python commands in forks of this process (the refusal and dry-run tests below start real interpreters)."""
    from PIL import Image
    from safetensors.torch import save_file
    root = tmp_path_factory.mktemp('recipes')
    for split, n in (('train', 3), ('test', 2)):
        for i, (img, y) in enumerate(_fm_images(split, n)):
            folder = root / 'fm' / split / f'c{y}'
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f'{i}.png')
    assert len(list((root / 'fm' / 'test').iterdir())) == 10  # every class in the test split
    torch.manual_seed(0)
    teacher = open_clip.create_model('SpikeCLIP-DemoTeacher')
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, root / 'teacher.safetensors')
    tiny = dict(CLASSNAMES='fashion_mnist', TEMPLATES='fashion_mnist', VAL_FRACTION=0.2)
    out = {}
    out['teacher'] = _sh('stage2_teacher.sh', root / 'fm', env=_env(
        root, **tiny, TEACHER_EPOCHS=1, TEACHER_BATCH=8, TEACHER_WARMUP=0), fork=True)
    out['stage1'] = _sh('stage1.sh', env=_env(
        root, **tiny, DATA='imagenet', IMAGENET_TRAIN=root / 'fm' / 'train', IMAGENET_VAL=root / 'fm' / 'test',
        EPOCHS=1, BATCH=10, ZS_FREQ=1), fork=True)
    out['stage2'] = _sh('stage2.sh', root / 'fm', env=_env(
        root, **tiny, STAGE1=root / 'runs' / 'stage1-imagenet' / 'checkpoints' / 'epoch_1.safetensors',
        TEACHER_EPOCHS=1, EPOCHS=2, SAVE_FREQ=1, BATCH=8), fork=True)
    out['labels'] = _sh('label_eval.sh', root / 'fm', env=_env(
        root, CLASSNAMES='cifar10', MODEL_CKPT=root / 'runs' / 'stage2-fm' / 'checkpoints' / 'best.safetensors'),
        fork=True)
    return root, out


def test_recipe_teacher_finetunes_image_tower_only(recipes_run):
    from safetensors.torch import load_file
    root, _ = recipes_run
    before = load_file(root / 'teacher.safetensors')
    after = load_file(root / 'runs' / 'teacher-fm' / 'checkpoints' / 'epoch_1.safetensors')
    text = [k for k in before if not k.startswith('visual.') and k != 'logit_scale']
    assert text and all(torch.equal(before[k], after[k]) for k in text)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith('visual.'))


def test_recipe_stage1_imagenet_captions(recipes_run):
    root, _ = recipes_run
    rows = (root / 'data' / 'stage1_imagenet.csv').read_text().splitlines()[1:]
    assert len(rows) == 30  # every training image, each with a prompt of its class
    names, temps = list(CLASSNAMES['fashion_mnist']), get_templates('fashion_mnist')
    for row in rows:
        path, caption = row.split('\t')
        assert _caption_class(caption, names, temps) == int(Path(path).parent.name[1:])
    log = (root / 'runs' / 'stage1-imagenet' / 'out.log').read_text()
    assert re.search(r'Image_align_loss: [0-9.]+ .*Text_align_loss: [0-9.]+', log)
    assert 'Eval Epoch: 1 zeroshot-val-top1' in log
    assert 'lr: 0.005' in log and 'batch_size: 10' in log


def test_recipe_stage2_selects_on_validation_and_reports_test(recipes_run):
    root, out = recipes_run
    run = root / 'runs' / 'stage2-fm'
    log = (run / 'out.log').read_text()
    assert 'Ce_loss' in log and 'Kl_loss' in log
    val_scores = {int(e): float(v) for e, v in re.findall(r'Eval Epoch: (\d+) zeroshot-val-top1: ([0-9.]+)', log)}
    assert sorted(val_scores) == [1, 2]
    best = max(val_scores, key=lambda e: (val_scores[e], e))
    assert (run / 'checkpoints' / 'best.safetensors').read_bytes() == \
        (run / 'checkpoints' / f'epoch_{best}.safetensors').read_bytes()
    split = json.loads((root / 'data' / 'fm' / 'split.json').read_text())
    assert (split['train'], split['val']) == (20, 10)  # validation carved from the 30 TRAIN images, 1 per class
    result = json.loads((root / 'results' / 'stage2-fm.json').read_text())
    assert result['n'] == 20 and result['split'] == 'test'  # the 20 test images, evaluated once
    assert 0 <= result['top1'] <= result['top5'] <= 1
    table = (root / 'results' / 'stage2.md').read_text()
    assert f"| zero-shot | fm | SpikeCLIP-Tiny | stage2-fm | {100 * result['top1']:.2f} |" in table


def test_recipe_label_evaluations(recipes_run):
    root, _ = recipes_run
    replace = json.loads((root / 'results' / 'relabel-fm-replace.json').read_text())
    expand = json.loads((root / 'results' / 'relabel-fm-expand.json').read_text())
    names = list(CLASSNAMES['cifar10'])
    assert replace['classnames'] == [{'horse': 'zebra', 'ship': 'boat'}.get(n, n) for n in names]
    assert expand['classnames'] == names + list(paper.DEFAULT_DISTRACTORS)
    labels = [int(p.parent.name[1:]) for p in (root / 'fm' / 'test').rglob('*.png')]
    assert replace['n'] == expand['n'] == 20 and replace['n_replaced'] == sum(y in (7, 8) for y in labels)
    assert 0 <= expand['to_distractor'] <= 1
    assert len((root / 'results' / 'relabel.md').read_text().splitlines()) == 4


def test_relabel_agrees_with_zeroshot(recipes_run, tmp_path, no_md5):
    """On a fake CIFAR-10 test batch: an identity replacement gives spikeclip zeroshot's top-1, and adding
    distractor classes can only lose correct answers."""
    from open_clip_spike.zero_shot import zeroshot
    root, _ = recipes_run
    _fake_cifar10(tmp_path)
    ckpt = str(root / 'runs' / 'stage2-fm' / 'checkpoints' / 'best.safetensors')
    kw = dict(data_root=tmp_path, batch_size=10)
    same = paper.relabel_eval('SpikeCLIP-Tiny', ckpt, 'cifar10', 'replace', replacements={'horse': 'horse'}, **kw)
    ref = zeroshot('SpikeCLIP-Tiny', ckpt, 'cifar10', templates='simple', data_root=tmp_path, progress=False)
    assert same['top1'] == ref['top1'] and same['n'] == ref['n'] == 10
    expand = paper.relabel_eval('SpikeCLIP-Tiny', ckpt, 'cifar10', 'expand', **kw)
    assert expand['top1'] <= same['top1']
    with pytest.raises(paper.PaperError, match=r"cannot replace \['zebra'\]"):
        paper.relabel_eval('SpikeCLIP-Tiny', ckpt, 'cifar10', 'replace', replacements={'zebra': 'horse'}, **kw)
    with pytest.raises(paper.PaperError, match='distractors must be new'):
        paper.relabel_eval('SpikeCLIP-Tiny', ckpt, 'cifar10', 'expand', distractors=['cat'], **kw)


# ---------------------------------------------------------------------------------------------------------------
# Defaults and launchers (dry runs: the commands are printed, not run)

def test_dry_run_paper_defaults_single_node(tmp_path):
    env = _env(tmp_path, DRY_RUN=1, NPROC=4, DEVICE='cuda', IMAGENET_TRAIN='/data/imagenet/train')
    for k in ('STUDENT', 'TEACHER_MODEL', 'TEACHER_PRETRAINED', 'PRECISION'):
        env.pop(k)
    s1 = _sh('stage1.sh', env=env).stdout
    launch = next(line for line in s1.splitlines() if 'open_clip_spike.train' in line)
    assert '-m torch.distributed.run --standalone --nproc_per_node 4 -m open_clip_spike.train' in launch
    for flag in ('--model SpikeCLIP-Spikingformer-4-384', '--distill-model ViT-B-16', '--distill-pretrained openai',
                 '--epochs 50', '--lr 5e-3', '--wd 0', '--batch-size 196', '--lr-scheduler cosine',
                 '--precision amp', '--use-bn-sync', '--spike-loss align'):
        assert flag + ' ' in launch + ' ', flag
    assert 'imagenet-csv --train-dir /data/imagenet/train' in s1
    s2 = _sh('stage2.sh', 'cifar10', env=dict(env, STAGE1='s1.safetensors')).stdout
    launch = next(line for line in s2.splitlines() if 'open_clip_spike.train' in line)
    for flag in ('--spike-loss dual', '--epochs 200', '--lr 5e-4', '--batch-size 196', '--pretrained s1.safetensors',
                 f'--imagenet-val {tmp_path}/data/cifar10/val',
                 f'--distill-pretrained {tmp_path}/runs/teacher-cifar10/checkpoints/epoch_20.safetensors'):
        assert flag + ' ' in launch + ' ', flag
    assert 'paper prepare --dataset cifar10' in s2 and 'paper select' in s2 and 'zeroshot' in s2
    t = _sh('stage2_teacher.sh', 'cifar10', env=env).stdout
    launch = next(line for line in t.splitlines() if 'finetune-teacher' in line)
    assert '--model ViT-B-16 --pretrained openai' in launch and '--epochs 20' in launch


def test_dry_run_multinode_and_slurm(tmp_path):
    env = _env(tmp_path, DRY_RUN=1, NPROC=8, NNODES=2, NODE_RANK=1, MASTER_ADDR='node-a', MASTER_PORT=1234,
               DATA='csv', TRAIN_DATA='/data/cc3m.csv', DEVICE='cuda')
    out = _sh('stage1.sh', env=env).stdout
    assert ('-m torch.distributed.run --nnodes 2 --node_rank 1 --nproc_per_node 8 --rdzv_backend c10d '
            '--rdzv_endpoint node-a:1234') in out
    # SLURM: fake srun (one task per node, in turn) and scontrol on PATH
    bin_ = tmp_path / 'bin'
    bin_.mkdir()
    (bin_ / 'scontrol').write_text('#!/bin/sh\nprintf "node-a\\nnode-b\\n"\n')
    (bin_ / 'srun').write_text('#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\n'
                               'for n in $(seq 0 $((SLURM_NNODES - 1))); do SLURM_NODEID=$n "$@" || exit 1; done\n')
    for f in bin_.iterdir():
        f.chmod(0o755)
    env = _env(tmp_path, DRY_RUN=1, DATA='csv', TRAIN_DATA='/data/cc3m.csv', DEVICE='cuda', SLURM_NNODES=2,
               SLURM_JOB_NODELIST='node-[a-b]', SLURM_GPUS_ON_NODE=4, SLURM_JOB_ID=77,
               PATH=f"{bin_}:{os.environ['PATH']}")
    env.pop('NPROC')
    proc = subprocess.run(['bash', str(RECIPES / 'slurm.sbatch'), str(RECIPES / 'stage1.sh')], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    launches = [line for line in proc.stdout.splitlines() if 'torch.distributed.run' in line]
    assert len(launches) == 2
    for rank, line in enumerate(launches):
        assert (f'--nnodes 2 --node_rank {rank} --nproc_per_node 4 --rdzv_backend c10d --rdzv_endpoint '
                f'node-a:29500 --rdzv_id 77 -m open_clip_spike.train') in line


def test_recipes_refuse_missing_inputs(tmp_path):
    proc = _sh('stage2.sh', FASHION_MNIST, env=_env(tmp_path, STAGE1='x.safetensors', CLASSNAMES='fashion_mnist',
                                                    DRY_RUN=0), ok=False)
    assert proc.returncode == 2 and 'run recipes/paper/stage2_teacher.sh' in proc.stderr
    proc = _sh('stage1.sh', env=_env(tmp_path, DATA='webdataset', TRAIN_DATA='x.tar'), ok=False)
    assert proc.returncode != 0 and 'TRAIN_NUM_SAMPLES' in proc.stderr
    proc = _sh('stage1.sh', env=_env(tmp_path, DATA='laion'), ok=False)
    assert proc.returncode == 2 and "DATA must be imagenet, csv or webdataset" in proc.stderr


def test_cli_lists_paper():
    from open_clip_spike import cli
    assert cli.COMMANDS['paper'][0] == 'open_clip_spike.cli.paper'


@pytest.mark.parametrize('dataset', ['cifar10', 'cifar100', 'flowers102', 'oxford_pets', 'stl10', 'caltech101'])
def test_stage2_captions_of_paper_datasets_give_back_their_class(dataset):
    """Every prompt prepare_stage2 can write fits the student's 20-token context without two classes colliding,
    so stage 2 (spikeclip train --spike-loss dual) labels each caption with its class."""
    from open_clip_spike.train import CaptionLabeler
    names, temps = list(CLASSNAMES[dataset]), get_templates(dataset)
    tok = open_clip.get_tokenizer('SpikeCLIP-Tiny')
    labeler = CaptionLabeler(tok, names, temps)
    rng = np.random.default_rng(0)
    ys = rng.integers(0, len(names), size=16).tolist()
    captions = [temps[rng.integers(len(temps))].format(names[y]) for y in ys]
    assert labeler(tok(captions)).tolist() == ys


def test_finetune_teacher_refuses_bad_input(capsys, tmp_path):
    assert paper_main(['finetune-teacher', '--model', 'SpikeCLIP-DemoTeacher', '--train-data', 'x.csv']) == 2
    assert 'needs --name' in capsys.readouterr().err
    assert paper_main(['finetune-teacher', '--model', 'SpikeCLIP-DemoTeacher', '--name', 't',
                       '--logs', str(tmp_path)]) == 2
    assert 'needs --train-data' in capsys.readouterr().err
    assert not (tmp_path / 't').exists()
