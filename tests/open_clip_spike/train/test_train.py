"""End-to-end tests of ``python -m open_clip_spike.train`` on real images (scikit-learn's digits as PNG).

Each training run is the command's own ``main`` (in this process; torchrun in a subprocess) on a handful of
images with SpikeCLIP-Tiny and a tiny open_clip teacher saved to a local checkpoint; runs that later tests build
on are module-scoped fixtures.
"""
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

import open_clip_spike  # noqa: F401
from open_clip_spike import train as spike_train
from open_clip_spike.checkpoint import CheckpointError, export_checkpoint

train_main_module = importlib.import_module('open_clip_spike.train.main')  # the module (the package exports main())

FIXTURES = Path(__file__).parent / 'fixtures_train'
NAMES = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine']
TEMPLATE = 'a photo of the digit {}.'
STUDENT = 'SpikeCLIP-Tiny'
TEACHER = 'SpikeTest-Teacher48'  # 512-d like the student, but 48x48 input and context 77: exercises the adapters
N_TRAIN, BATCH = 12, 4


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    """Digits upscaled to 32x32 PNG: a train CSV, webdataset shards, an ImageFolder val set, name/template files,
    and teacher checkpoints (safetensors) for a 512-d and a 64-d teacher."""
    from PIL import Image
    from safetensors.torch import save_file
    from sklearn.datasets import load_digits
    import webdataset as wds

    root = tmp_path_factory.mktemp('digits')
    d = load_digits()
    order = np.random.default_rng(0).permutation(len(d.images))

    def png(i):
        return Image.fromarray((d.images[i] / 16 * 255).astype(np.uint8)).resize((32, 32), Image.BILINEAR).convert('RGB')

    (root / 'img').mkdir()
    rows = []
    for i in order[:N_TRAIN]:
        path = root / 'img' / f'{i}.png'
        png(i).save(path)
        rows.append(f'{path}\t{TEMPLATE.format(NAMES[d.target[i]])}\n')
    (root / 'train.csv').write_text('filepath\ttitle\n' + ''.join(rows))
    with wds.TarWriter(str(root / 'shard-000000.tar')) as sink:
        for i in order[:N_TRAIN]:
            sink.write({'__key__': f'{i:05d}', 'png': png(i), 'txt': TEMPLATE.format(NAMES[d.target[i]])})
    for i in order[N_TRAIN:N_TRAIN + 20]:
        folder = root / 'val' / NAMES[d.target[i]]
        folder.mkdir(parents=True, exist_ok=True)
        png(i).save(folder / f'{i}.png')
    (root / 'classes.txt').write_text('\n'.join(NAMES) + '\n')
    (root / 'templates.txt').write_text(TEMPLATE + '\n')
    open_clip.add_model_config(FIXTURES)
    torch.manual_seed(0)
    for name in (TEACHER, 'SpikeTest-Teacher64d'):
        sd = open_clip.create_model(name).state_dict()
        save_file({k: v.contiguous() for k, v in sd.items()}, root / f'{name}.safetensors')
    return root


def _cmd(root, name, *extra, module=True):
    return ([sys.executable, '-m', 'open_clip_spike.train'] if module else []) + [
        '--spike-model-config', str(FIXTURES),
        '--model', STUDENT, '--distill-model', TEACHER,
        '--distill-pretrained', str(root / f'{TEACHER}.safetensors'),
        '--batch-size', str(BATCH), '--workers', '0', '--device', 'cpu', '--precision', 'fp32', '--lr', '5e-3', '--warmup', '0',
        '--log-every-n-steps', '1', '--report-to', 'none', '--spike-logs', str(root / 'logs'), '--name', name,
        *extra]


def _csv(root):
    return ['--train-data', str(root / 'train.csv'), '--dataset-type', 'csv',
            '--csv-img-key', 'filepath', '--csv-caption-key', 'title']


def _run(cmd, timeout=600):
    """``python -m open_clip_spike.train ARGS`` runs in this process (``train.inprocess.run_in_process``: the
    command's own ``main``, its stdout and stderr captured; an interpreter per run would cost each test the imports
    again); anything else (torchrun) in a subprocess."""
    if cmd[:3] == [sys.executable, '-m', 'open_clip_spike.train']:
        import io
        from open_clip_spike.train.inprocess import run_in_process
        out, err = io.StringIO(), io.StringIO()
        rc = run_in_process('open_clip_spike.train', cmd[3:], out, err)
        return subprocess.CompletedProcess(cmd, rc, out.getvalue(), err.getvalue())
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=Path(__file__).parents[3])


def _losses(root, name, key='Loss'):
    """Per-step values of a loss term, from open_clip_train's log."""
    log = (root / 'logs' / name / 'out.log').read_text()
    return [float(v) for v in re.findall(rf' {key}: ([0-9.e+-]+) \(', log)]


def _epoch_means(root, name, steps_per_epoch, key='Loss'):
    """The running mean logged at the last step of each epoch (open_clip_train resets it per epoch)."""
    log = (root / 'logs' / name / 'out.log').read_text()
    means = [float(v) for v in re.findall(rf' {key}: [0-9.e+-]+ \(([0-9.e+-]+)\)', log)]
    return means[steps_per_epoch - 1::steps_per_epoch]


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.fixture(scope='module')
def stage1(digits):
    _ok(_run(_cmd(digits, 's1', *_csv(digits), '--epochs', '2', '--imagenet-val', str(digits / 'val'),
                  '--zeroshot-frequency', '1', '--spike-classnames', str(digits / 'classes.txt'),
                  '--spike-templates', str(digits / 'templates.txt'))))
    return digits / 'logs' / 's1'


def test_stage1_loss_goes_down(digits, stage1):
    loss = _losses(digits, 's1')
    assert len(loss) == 2 * N_TRAIN // BATCH
    assert loss[-1] < 0.8 * loss[0], loss
    img, txt = _losses(digits, 's1', 'Image_align_loss'), _losses(digits, 's1', 'Text_align_loss')
    assert img[-1] < img[0] and txt[-1] < txt[0]
    assert all(0 <= v <= 2 for v in img + txt)  # 1 - cos lies in [0, 2]


def test_stage1_zero_shot_with_run_class_names(stage1):
    results = [json.loads(line) for line in (stage1 / 'checkpoints' / 'results.jsonl').read_text().splitlines()]
    assert len(results) == 2  # one evaluation per epoch (--zeroshot-frequency 1)
    for r in results:
        assert 0 <= r['zeroshot-val-top1'] <= r['zeroshot-val-top5'] <= 1


def test_checkpoint_loads_back_with_identical_embeddings(stage1):
    ckpt = stage1 / 'checkpoints'
    assert (ckpt / 'epoch_2.safetensors').exists()
    model, _, preprocess = open_clip.create_model_and_transforms(STUDENT, pretrained=str(ckpt / 'epoch_2.safetensors'))
    ref = open_clip.create_model(STUDENT)
    ref.load_state_dict(torch.load(ckpt / 'epoch_2.pt', map_location='cpu', weights_only=True)['state_dict'])
    fresh = open_clip.create_model(STUDENT)
    tok = open_clip.get_tokenizer(STUDENT)(['a photo of the digit seven.', 'a photo of the digit one.'])
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for m in (model, ref, fresh):
        m.eval()
    with torch.no_grad():
        a = model.encode_image(images), model.encode_text(tok)
        b = ref.encode_image(images), ref.encode_text(tok)
        c = fresh.encode_image(images), fresh.encode_text(tok)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.allclose(a[1], c[1])  # the trained weights were loaded, not a fresh init


def test_export_checkpoint_function(stage1, tmp_path):
    from safetensors.torch import load_file
    out = export_checkpoint(str(stage1 / 'checkpoints' / 'epoch_1.pt'), str(tmp_path / 'x.safetensors'))
    sd = load_file(out)
    ref = torch.load(stage1 / 'checkpoints' / 'epoch_1.pt', map_location='cpu', weights_only=True)['state_dict']
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in sd)
    assert os.listdir(tmp_path) == ['x.safetensors']  # no temporary left behind
    with pytest.raises(CheckpointError, match='does not hold a state dict'):
        torch.save({'epoch': 1}, tmp_path / 'bad.pt')
        export_checkpoint(str(tmp_path / 'bad.pt'))


def test_resume_continues(digits, stage1):
    # An existing --name run with another command is refused, naming the difference (upstream logs an error and
    # exits 0); the same command would resume it (tests/faults).
    proc = _run(_cmd(digits, 's1', *_csv(digits), '--epochs', '3'))
    assert proc.returncode == 2 and 'was run with another command' in proc.stderr
    assert 'only there: 2' in proc.stderr and 'only here: 3' in proc.stderr and '--resume latest' in proc.stderr
    before = _losses(digits, 's1')
    _ok(_run(_cmd(digits, 's1', *_csv(digits), '--epochs', '3', '--resume', 'latest')))
    log = (stage1 / 'out.log').read_text()
    assert "resuming checkpoint" in log and '(epoch 2)' in log
    assert (stage1 / 'checkpoints' / 'epoch_3.safetensors').exists()
    after = _losses(digits, 's1')[len(before):]
    assert len(after) == N_TRAIN // BATCH
    assert after[0] < before[0]  # started from the trained weights, not from scratch


def test_stage2_webdataset_from_stage1(digits, stage1):
    cmd = _cmd(digits, 's2', '--spike-loss', 'dual', '--kl-weight', '0.5', '--kl-temperature', '2',
               '--spike-classnames', str(digits / 'classes.txt'), '--spike-templates', str(digits / 'templates.txt'),
               '--pretrained', str(stage1 / 'checkpoints' / 'epoch_2.safetensors'),
               '--train-data', str(digits / 'shard-000000.tar'), '--dataset-type', 'webdataset',
               '--train-num-samples', str(N_TRAIN), '--epochs', '2')
    _ok(_run(cmd))
    loss, ce, kl = _losses(digits, 's2'), _losses(digits, 's2', 'Ce_loss'), _losses(digits, 's2', 'Kl_loss')
    assert len(loss) == len(ce) == len(kl) == 2 * N_TRAIN // BATCH
    assert all(abs(t - (c + k)) < 1e-4 * t for t, c, k in zip(loss, ce, kl))
    assert all(k >= 0 for k in kl)
    means = _epoch_means(digits, 's2', N_TRAIN // BATCH)
    assert len(means) == 2 and means[1] < means[0], means
    # The text tower stayed frozen: its weights equal stage 1's.
    from safetensors.torch import load_file
    s1 = load_file(stage1 / 'checkpoints' / 'epoch_2.safetensors')
    s2 = load_file(digits / 'logs' / 's2' / 'checkpoints' / 'epoch_2.safetensors')
    text_keys = [k for k in s1 if k.startswith('text.')]
    assert text_keys and all(torch.equal(s1[k], s2[k]) for k in text_keys)
    assert any(not torch.equal(s1[k], s2[k]) for k in s1 if k.startswith('visual.'))


def test_webdataset_sample_order_follows_seed_and_epoch(digits):
    """open_clip_train shuffles webdataset samples with a seed from the clock; under open_clip_spike.train's patches
    the order is a function of --seed and the epoch (reruns and resumed runs see the same batches)."""
    import argparse

    import open_clip_train.data as oc_data

    from open_clip_spike.train.patches import _applied, _seeded_sample_shuffle, _tar_file_expander_without_eof
    get = _seeded_sample_shuffle(oc_data.get_wds_dataset)

    def order(seed, epoch):
        args = argparse.Namespace(train_data=str(digits / 'shard-000000.tar'), train_num_samples=N_TRAIN,
                                  dataset_resampled=False, train_data_upsampling_factors=None, seed=seed,
                                  workers=0, world_size=1, batch_size=BATCH)
        info = get(args, lambda im: torch.tensor([float(np.asarray(im).sum())]), True, epoch=epoch,
                   tokenizer=lambda texts: torch.zeros(len(texts), 1, dtype=torch.long))
        info.set_epoch(epoch)
        # (with the patch that lets open_clip_train read webdataset >= 1.0 shards)
        with _applied([(oc_data, 'tar_file_expander', _tar_file_expander_without_eof(oc_data.tar_file_expander))]):
            return [v for images, _ in info.dataloader for v in images.flatten().tolist()]

    first = order(0, 0)
    assert len(first) == N_TRAIN and len(set(first)) == N_TRAIN  # every image once
    assert order(0, 0) == first  # a new pipeline (a rerun, a resumed run): the same order
    assert order(0, 1) != first and sorted(order(0, 1)) == sorted(first)  # another epoch: another order
    assert order(1, 0) != first


def _epochs(root, name):
    path = root / 'logs' / name / 'spike_epochs.jsonl'
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_teacher_cache_skips_the_teacher_and_trains_identically(digits):
    cache = digits / 'teacher-cache'
    const = ('--lr-scheduler', 'const')  # the same learning rate at step k whatever the number of epochs
    _ok(_run(_cmd(digits, 'cache-a', *_csv(digits), *const, '--epochs', '2', '--spike-teacher-cache', str(cache))))
    first = _epochs(digits, 'cache-a')
    assert [r['epoch'] for r in first] == [1, 2] and all(r['seconds'] > 0 for r in first)
    # epoch 1 computes every sample once (12 images; captions repeat), epoch 2 runs no teacher at all
    c1, c2 = first[0]['teacher_cache'], first[1]['teacher_cache']
    assert c1['misses']['image'] == N_TRAIN and c1['hits']['image'] == 0
    assert c1['entries']['image'] == N_TRAIN and 0 < c1['entries']['text'] <= N_TRAIN
    assert c1['misses']['text'] + c1['hits']['text'] == N_TRAIN
    assert c2['misses'] == {'image': 0, 'text': 0} and c2['hits'] == {'image': N_TRAIN, 'text': N_TRAIN}
    shards = sorted(p.name for p in cache.iterdir())
    assert 'meta.json' in shards and any(s.startswith('image-r0-') for s in shards)
    assert not [s for s in shards if s.startswith('.tmp')]
    # A second run reads the cache from the start and trains exactly as the first (same seed, same features).
    _ok(_run(_cmd(digits, 'cache-b', *_csv(digits), *const, '--epochs', '1', '--spike-teacher-cache', str(cache))))
    again = _epochs(digits, 'cache-b')[0]['teacher_cache']
    assert again['misses'] == {'image': 0, 'text': 0} and again['hits']['image'] == N_TRAIN
    steps = N_TRAIN // BATCH
    assert _losses(digits, 'cache-b') == pytest.approx(_losses(digits, 'cache-a')[:steps], rel=1e-3)
    # Another teacher (weights) for the same folder is refused, naming what differs; nothing is left behind.
    other = digits / 'other-teacher.safetensors'
    from safetensors.torch import load_file, save_file
    sd = load_file(digits / f'{TEACHER}.safetensors')
    sd['logit_scale'] = sd['logit_scale'] + 1
    save_file(sd, other)
    cmd = _cmd(digits, 'cache-c', *_csv(digits), '--epochs', '1', '--spike-teacher-cache', str(cache))
    cmd[cmd.index('--distill-pretrained') + 1] = str(other)
    proc = _run(cmd)
    assert proc.returncode == 2 and 'made for another setting' in proc.stderr
    assert 'pretrained' in proc.stderr and 'weights_blake2b' in proc.stderr
    assert not (digits / 'logs' / 'cache-c').exists()
    # augmentation and the cache exclude each other
    cmd = _cmd(digits, 'cache-d', *_csv(digits), '--spike-teacher-cache', str(cache), module=False)
    assert spike_train.main(cmd + ['--aug-cfg', 'scale=(0.5,1.0)']) == 2


def test_torchrun_two_processes_amp(digits):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           '-m', 'open_clip_spike.train'] + _cmd(digits, 'ddp', *_csv(digits), '--epochs', '1', '--precision', 'amp',
                                                 module=False)
    proc = _ok(_run(cmd))
    log = (digits / 'logs' / 'ddp' / 'out.log').read_text()
    assert 'Running in distributed mode' in log and 'total 2' in log
    assert len(_losses(digits, 'ddp')) == N_TRAIN // (2 * BATCH)  # each rank sees half the data
    assert (digits / 'logs' / 'ddp' / 'checkpoints' / 'epoch_1.safetensors').exists()
    assert 'Traceback' not in proc.stderr


def test_teacher_with_other_embedding_size(digits):
    cmd = _cmd(digits, 'bad-teacher', *_csv(digits), '--epochs', '1')
    i = cmd.index('--distill-model')
    cmd[i + 1] = 'SpikeTest-Teacher64d'
    cmd[cmd.index('--distill-pretrained') + 1] = str(digits / 'SpikeTest-Teacher64d.safetensors')
    proc = _run(cmd)
    assert proc.returncode == 2
    assert 'embedding size 64' in proc.stderr and '512' in proc.stderr
    assert not (digits / 'logs' / 'bad-teacher').exists()  # nothing left behind: the same --name can be rerun


@pytest.mark.parametrize('change, message', [
    ({'--model': 'NoSuchModel'}, "unknown model 'NoSuchModel'"),
    ({'--distill-model': 'NoSuchTeacher'}, "unknown teacher model 'NoSuchTeacher'"),
    ({'--distill-pretrained': None}, 'give both --distill-model'),
    ({'--spike-loss': 'dual'}, 'needs the class names'),
    ({'--spike-loss': 'dual', '--spike-classnames': 'cifar10', '--lock-text-unlocked-layers': '1'},
     'freezes the whole text tower'),
    ({'--spike-classnames': 'no_such_set'}, "--spike-classnames / --spike-templates: Unknown class names 'no_such_set'"),
    ({'--epochs': '0'}, '--epochs must be >= 1, got 0'),
    ({'--batch-size': '0'}, '--batch-size must be >= 1, got 0'),
    ({'--lr': 'nan'}, '--lr must be a finite number >= 0, got nan'),
    ({'--train-data': '/no/such/train.csv'}, "--train-data '/no/such/train.csv': no such file"),
    ({'--distill-pretrained': '/no/such/teacher.safetensors'},
     "--distill-pretrained '/no/such/teacher.safetensors': no such file"),
    ({'--imagenet-val': '/no/such/val'}, "--imagenet-val '/no/such/val': no such folder"),
    ({'--resume': 'latest'}, 'holds no checkpoint to resume from'),
])
def test_bad_input_is_refused(digits, capsys, change, message):
    cmd = _cmd(digits, 'never', *_csv(digits), module=False)
    for flag, value in change.items():
        if flag in cmd:
            i = cmd.index(flag)
            del cmd[i:i + 2]
        if value is not None:
            cmd += [flag, value]
    assert spike_train.main(cmd) == 2
    assert message in capsys.readouterr().err
    assert not (digits / 'logs' / 'never').exists()


def test_bad_input_fails_before_any_model_is_built(digits, capsys, monkeypatch):
    """Paths and numbers are checked first: a missing --train-data costs no model build."""
    def no_build(*a, **k):
        raise AssertionError('a model was built')
    monkeypatch.setattr(open_clip, 'create_model_and_transforms', no_build)
    cmd = _cmd(digits, 'never', *_csv(digits), module=False)
    cmd[cmd.index('--train-data') + 1] = str(digits / 'missing.csv')
    assert spike_train.main(cmd) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'missing.csv' in err and 'Traceback' not in err


def test_failed_run_leaves_nothing_that_blocks_the_rerun(digits):
    """A folder without a checkpoint (a run that failed or was killed in its first epoch) does not block the
    same --name: the rerun removes it and starts afresh (upstream refuses any existing out.log)."""
    folder = digits / 'logs' / 'retry'
    folder.mkdir(parents=True)
    (folder / 'out.log').write_text('an attempt that died\n')
    (folder / 'checkpoints').mkdir()
    _ok(_run(_cmd(digits, 'retry', *_csv(digits), '--epochs', '1')))
    assert 'an attempt that died' not in (folder / 'out.log').read_text()
    assert (folder / 'checkpoints' / 'epoch_1.pt').is_file()
    assert json.loads((folder / 'spike_command.json').read_text())['argv'][-2:] == ['--epochs', '1']


def test_caption_labeler():
    tok = open_clip.get_tokenizer(STUDENT)
    labeler = spike_train.CaptionLabeler(tok, NAMES, [TEMPLATE])
    labels = labeler(tok(['three', 'a photo of the digit nine.', 'a photo of the digit zero.']))
    assert labels.tolist() == [3, 9, 0]
    with pytest.raises(spike_train.SpikeTrainError, match='match no class'):
        labeler(tok(['a photo of a cat.']))
    with pytest.raises(spike_train.SpikeTrainError, match='ambiguous'):
        spike_train.CaptionLabeler(tok, ['one', 'two', 'one'], [TEMPLATE])


def test_help_lists_both_option_sets(capsys):
    assert spike_train.main(['--help']) == 0
    out = capsys.readouterr().out
    assert '--spike-loss' in out and '--kl-temperature' in out and '--train-data' in out


class _Recorder(torch.nn.Module):
    """Stands in for an open_clip model: a preprocess config and a forward that records its inputs."""

    def __init__(self, size, mean, std):
        super().__init__()
        self.visual = torch.nn.Module()
        self.visual.preprocess_cfg = dict(size=size, mean=mean, std=std)

    def forward(self, image=None, text=None):
        self.seen = image, text
        return {'image_features': image}


def test_input_adapter_resizes_renormalises_pads_and_labels():
    import torch.nn.functional as F
    mean_t, std_t = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    mean_s, std_s = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    student = _Recorder(32, mean_s, std_s)
    adapter = train_main_module._InputAdapter(student, drop_text='train')
    adapter.set_data_norm(torch.tensor(mean_t), torch.tensor(std_t))
    adapter.context_length = 30
    tok = open_clip.get_tokenizer(STUDENT)
    adapter.labeler = spike_train.CaptionLabeler(tok, NAMES, [TEMPLATE])
    adapter.attach(student)

    raw = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    as_loaded = (raw - torch.tensor(mean_t).view(1, 3, 1, 1)) / torch.tensor(std_t).view(1, 3, 1, 1)
    expected = F.interpolate((raw - torch.tensor(mean_s).view(1, 3, 1, 1)) / torch.tensor(std_s).view(1, 3, 1, 1),
                             size=(32, 32), mode='bilinear', antialias=True)
    text = tok(['a photo of the digit two.', 'six'])

    out = student.eval()(as_loaded, text)
    image, seen_text = student.seen
    assert image.shape == (2, 3, 32, 32) and torch.allclose(image, expected, atol=1e-5)
    assert seen_text.shape == (2, 30) and torch.equal(seen_text[:, :20], text) and not seen_text[:, 20:].any()
    assert 'labels' not in out  # labels only for the training loss

    out = student.train()(as_loaded, text)
    assert student.seen[1] is None  # stage 2 skips the text tower in training
    assert out['labels'].tolist() == [2, 6]


@pytest.mark.parametrize('argv, cuda, native, added', [
    ([], False, False, True),                                     # CPU without native bf16: fp32 by default
    (['--device', 'cpu'], True, False, True),                     # asked for the CPU on a machine with a GPU
    (['--device=cpu'], True, False, True),
    ([], True, False, False),                                     # GPU: open_clip_train's amp
    (['--device', 'cuda:1'], False, False, False),
    ([], False, True, False),                                     # native bf16 (AVX-512 / AMX): amp stays
    (['--precision', 'amp'], False, False, False),                # asked for: never overridden
    (['--precision=amp_bf16'], False, False, False),
])
def test_default_precision_is_fp32_where_amp_is_emulated(monkeypatch, argv, cuda, native, added):
    train_main = importlib.import_module('open_clip_spike.train.main')
    monkeypatch.setattr(train_main.torch.cuda, 'is_available', lambda: cuda)
    monkeypatch.setattr(train_main, 'bf16_is_native', lambda: native)
    assert train_main.default_precision(list(argv)) == (['--precision', 'fp32'] if added else []) + argv


def test_default_precision_leaves_an_abbreviated_precision_to_the_user(monkeypatch):
    from open_clip_train.params import parse_args
    train_main = importlib.import_module('open_clip_spike.train.main')
    monkeypatch.setattr(train_main.torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(train_main, 'bf16_is_native', lambda: False)
    assert parse_args(train_main.default_precision(['--prec', 'amp'])).precision == 'amp'
    assert parse_args(train_main.default_precision([])).precision == 'fp32'
