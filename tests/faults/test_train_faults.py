"""``spikeclip train`` killed (SIGKILL) or interrupted (SIGINT) at named points, then rerun with the same command:
the result equals an uninterrupted run bit for bit, and nothing half-written is left."""
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from fault_helpers import assert_same_weights, killed, litter, load_weights, run_cmd, run_here, train_cmd

EPOCHS = ('--epochs', '2')
STEPS = 3  # 12 images, batch 4


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _epoch_records(run: Path):
    return [{k: v for k, v in json.loads(line).items() if k != 'seconds'}
            for line in (run / 'spike_epochs.jsonl').read_text().splitlines()]


def _last_epoch_losses(run: Path):
    """Per-step losses of the last epoch from open_clip_train's log (a resumed run logs its epochs, or the steps
    after its mid-epoch checkpoint, again: the last line of each step counts)."""
    log = (run / 'out.log').read_text()
    steps = dict(re.findall(r'Train Epoch: 1 \[\s*(\d+)/.* Loss: ([0-9.e+-]+) ', log))
    return [steps[k] for k in sorted(steps, key=int)]


@pytest.fixture(scope='session')
def reference(digits, tmp_path_factory):
    """One uninterrupted 2-epoch run, shared by every test of the session (in this process, see ``run_here``)."""
    logs = tmp_path_factory.mktemp('ref-logs')
    _ok(run_here(train_cmd(digits, logs, 'ref', *EPOCHS)))
    return logs / 'ref'


def _check_same(run: Path, ref: Path):
    assert_same_weights(load_weights(run / 'checkpoints' / 'epoch_2.pt'), load_weights(ref / 'checkpoints' / 'epoch_2.pt'))
    assert_same_weights(load_weights(run / 'checkpoints' / 'epoch_2.safetensors'),
                        load_weights(ref / 'checkpoints' / 'epoch_2.safetensors'))
    assert _epoch_records(run) == _epoch_records(ref) == [{'epoch': 1}, {'epoch': 2}]
    assert _last_epoch_losses(run) == _last_epoch_losses(ref) and len(_last_epoch_losses(ref)) == STEPS
    assert litter(run) == []


# One run killed again and again with the same command, each time at another point; the last rerun finishes.
# (A chain rather than one run per fault: a process start costs more than the training here.)
CHAIN = [
    ('train.batch@2:KILL', 'inside the first epoch (no checkpoint yet)'),
    ('checkpoint.write@1:KILL', 'while epoch_1.pt is written'),
    ('checkpoint.write@2:INT', 'while epoch_2.pt is written (Ctrl-C)'),
    ('train.batch@2:INT', 'inside the second epoch, resumed from epoch 1 (Ctrl-C)'),
]


def test_killed_train_resumes_exactly(digits, reference, tmp_path, fault_log):
    cmd = train_cmd(digits, tmp_path, 'run', *EPOCHS)
    run = tmp_path / 'run'
    for i, (fault, where) in enumerate(CHAIN):
        fault_log.tried(f'{fault.split(":")[1]} at {fault.split(":")[0]}', f'spikeclip train: {where}')
        # the first run is a new interpreter; the others are forks of this process (fault_helpers.run_forked)
        proc = run_cmd(cmd, fault=fault, fork=i > 0)
        assert killed(proc), proc.stderr[-3000:]
        if fault.endswith(':INT'):
            assert 'rerun the same command' in proc.stderr and 'Traceback' not in proc.stderr
    assert sorted(p.name for p in (run / 'checkpoints').glob('epoch_*.pt')) == ['epoch_1.pt']
    assert 'resuming' in (run / 'out.log').read_text()
    _ok(run_here(cmd))  # the last rerun, uninterrupted
    _check_same(run, reference)
    fault_log.survived()


def test_checkpoint_carries_random_state(reference):
    ckpt = torch.load(reference / 'checkpoints' / 'epoch_1.pt', map_location='cpu', weights_only=True)
    extra = ckpt['spike_resume']
    assert extra['epoch'] == 1 and extra['step'] == STEPS
    assert set(extra['rng']) >= {'torch', 'numpy_keys', 'python_internal'}
    assert extra['rng']['numpy_keys'].shape == (624,) and extra['rng']['python_internal'].shape == (625,)


def test_truncated_latest_checkpoint_is_set_aside(digits, reference, tmp_path, fault_log):
    fault_log.tried('epoch_2.pt truncated to half', 'spikeclip train rerun')
    run = tmp_path / 'logs' / 'run'
    shutil.copytree(reference, run)
    (run / 'checkpoints' / 'epoch_2.safetensors').unlink()
    data = (run / 'checkpoints' / 'epoch_2.pt').read_bytes()
    (run / 'checkpoints' / 'epoch_2.pt').write_bytes(data[:len(data) // 2])
    proc = _ok(run_here(train_cmd(digits, tmp_path / 'logs', 'run', *EPOCHS, '--resume', 'latest')))
    assert 'is unreadable' in proc.stderr + (run / 'out.log').read_text()
    assert (run / 'checkpoints' / 'epoch_2.pt.corrupt').is_file()  # set aside, with a warning
    (run / 'checkpoints' / 'epoch_2.pt.corrupt').unlink()
    _check_same(run, reference)
    fault_log.survived()


def test_killed_while_teacher_cache_fills(digits, tmp_path, fault_log):
    """SIGKILL right after a shard of the teacher-feature cache is written: the finished batches stay cached, the
    rerun reads them and ends exactly where an uninterrupted cached run ends."""
    from open_clip_spike.teacher_cache import TeacherFeatureCache
    fault_log.tried('KILL at cache.shard@3', 'spikeclip train --spike-teacher-cache: batch 2 of the first epoch')
    ref = train_cmd(digits, tmp_path / 'logs', 'ref', *EPOCHS, '--spike-teacher-cache', str(tmp_path / 'cache-ref'))
    _ok(run_here(ref))
    cmd = train_cmd(digits, tmp_path / 'logs', 'run', *EPOCHS, '--spike-teacher-cache', str(tmp_path / 'cache'))
    proc = run_cmd(cmd, fault='cache.shard@3:KILL', fork=True)  # batch 1: image + text shards; batch 2: its image shard
    assert killed(proc), proc.stderr[-3000:]
    shards = sorted(p.name for p in (tmp_path / 'cache').glob('*.safetensors'))
    assert shards == ['image-r0-00000.safetensors', 'image-r0-00001.safetensors', 'text-r0-00000.safetensors']
    fp = json.loads((tmp_path / 'cache' / 'meta.json').read_text())['fingerprint']
    assert TeacherFeatureCache(str(tmp_path / 'cache'), fp).count('image') == 8  # two finished batches of 4
    _ok(run_here(cmd))
    run, reference = tmp_path / 'logs' / 'run', tmp_path / 'logs' / 'ref'
    assert_same_weights(load_weights(run / 'checkpoints' / 'epoch_2.pt'),
                        load_weights(reference / 'checkpoints' / 'epoch_2.pt'))
    first = json.loads((run / 'spike_epochs.jsonl').read_text().splitlines()[0])['teacher_cache']
    assert first['hits']['image'] == 8 and first['misses']['image'] == 4  # the rerun used the kept batches
    assert litter(tmp_path) == []
    assert len(list((tmp_path / 'cache').glob('image-*'))) == 1  # the epoch's shards merged
    fault_log.survived()


# ---------------------------------------------------------------------------------------------------------------
# Preemption and mid-epoch checkpoints (open_clip_spike.train.safety)

def test_preempted_run_checkpoints_and_resumes_exactly(digits, reference, tmp_path, fault_log):
    """SIGUSR1 (SLURM's --signal) while batch 2 of the second epoch trains: the run writes a mid-epoch checkpoint
    at the next step boundary and exits 75 with one line; the rerun resumes at that step and ends exactly where an
    uninterrupted run ends (weights, per-step losses, records)."""
    from open_clip_spike.train.safety import PREEMPTED_EXIT
    fault_log.tried('USR1 at train.batch@5', 'spikeclip train: second epoch, batch 2 (preemption)')
    cmd = train_cmd(digits, tmp_path, 'run', *EPOCHS)
    run = tmp_path / 'run'
    proc = run_cmd(cmd, fault='train.batch@5:USR1', fork=True)
    assert proc.returncode == PREEMPTED_EXIT, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('spikeclip train: preempted (SIGUSR1)') and 'step 2' in last, last
    assert 'Traceback' not in proc.stderr
    ckpt = torch.load(run / 'checkpoints' / 'step_latest.pt', map_location='cpu', weights_only=True)
    assert ckpt['epoch'] == 1 and ckpt['spike_resume']['epoch_step'] == 2 and ckpt['spike_resume']['step'] == 5
    assert sorted(p.name for p in (run / 'checkpoints').glob('*.pt')) == ['epoch_1.pt', 'step_latest.pt']
    _ok(run_here(cmd))
    assert 'resuming at step 2 of 3' in (run / 'out.log').read_text()
    assert not (run / 'checkpoints' / 'step_latest.pt').exists()  # replaced by epoch_2.pt
    _check_same(run, reference)
    fault_log.survived()


def test_step_checkpoints_resume_exactly_after_a_kill(digits, reference, tmp_path, fault_log):
    """--spike-save-every-steps 2, killed in the second epoch after its step-4 checkpoint: the rerun starts from
    that checkpoint (not from epoch 1) and ends exactly where an uninterrupted run ends."""
    fault_log.tried('KILL at train.batch@6', 'spikeclip train --spike-save-every-steps 2: second epoch, batch 3')
    cmd = train_cmd(digits, tmp_path, 'run', *EPOCHS, '--spike-save-every-steps', '2')
    run = tmp_path / 'run'
    proc = run_cmd(cmd, fault='train.batch@6:KILL', fork=True)
    assert killed(proc), proc.stderr[-3000:]
    ckpt = torch.load(run / 'checkpoints' / 'step_latest.pt', map_location='cpu', weights_only=True)
    assert ckpt['epoch'] == 1 and ckpt['spike_resume']['epoch_step'] == 1  # global step 4 = epoch 2, step 1
    _ok(run_here(cmd))
    assert 'resuming at step 1 of 3' in (run / 'out.log').read_text()
    _check_same(run, reference)
    fault_log.survived()


def test_full_disk_while_checkpointing(digits, reference, tmp_path, fault_log, monkeypatch):
    """The disk fills while epoch_2.pt is written (torch's zip writer then reports 'unexpected pos N vs M'): one
    line saying so, exit 2, epoch_1.pt intact and no temporary file left; the rerun with room finishes exactly."""
    import os
    from collections import namedtuple
    fault_log.tried('disk full while epoch_2.pt is written', 'spikeclip train, second epoch\'s checkpoint')
    run = tmp_path / 'logs' / 'run'
    shutil.copytree(reference, run)
    for p in (run / 'checkpoints').glob('epoch_2.*'):
        p.unlink()
    cmd = train_cmd(digits, tmp_path / 'logs', 'run', *EPOCHS, '--resume', 'latest')
    real_save, real_statvfs = torch.save, os.statvfs
    full = {'on': True}

    def save(obj, f, *a, **k):
        if full['on'] and 'epoch_2' in str(f):
            Path(f).write_bytes(b'PK' * 100)  # a partial zip
            raise RuntimeError('[enforce fail at inline_container.cc:664] . unexpected pos 37828032 vs 37827924')
        return real_save(obj, f, *a, **k)

    statvfs = namedtuple('statvfs', 'f_bavail f_frsize')
    monkeypatch.setattr(torch, 'save', save)
    monkeypatch.setattr(os, 'statvfs', lambda p: statvfs(0, 4096) if full['on'] else real_statvfs(p))
    before = (run / 'checkpoints' / 'epoch_1.pt').read_bytes()
    proc = run_here(cmd)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert 'no space left on device' in line and 'epoch_1.pt is intact' in line and 'Traceback' not in proc.stderr
    assert (run / 'checkpoints' / 'epoch_1.pt').read_bytes() == before and litter(run) == []
    full['on'] = False
    _ok(run_here(cmd))
    _check_same(run, reference)
    fault_log.survived()
