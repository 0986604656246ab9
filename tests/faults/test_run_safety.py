"""What a shared machine or a cluster brings to a training run: a second run on the same folder, training data that
cannot be read, a disk that cannot be written, torch's compiler logs. Each is refused in one line (exit 2) or
survived; nothing here trains more than one epoch of the 12 digits."""
import errno
import json
import logging
import os
from pathlib import Path

import open_clip
import pytest

from fault_helpers import train_cmd

from open_clip_spike import train as spike_train
from open_clip_spike.locking import FolderInUseError, FolderLock


def _one_line_error(capsys, *parts):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and 'Traceback' not in err, err
    assert all(p in lines[-1] for p in parts), lines[-1]
    return lines[-1]


def _no_model(monkeypatch):
    monkeypatch.setattr(open_clip, 'create_model_and_transforms',
                        lambda *a, **k: pytest.fail('a model was built before the data was checked'))


# ---------------------------------------------------------------------------------------------------------------
# One run per folder

def test_second_run_on_a_held_folder_is_refused(digits, tmp_path, capsys, monkeypatch, fault_log):
    """A live run holds its folder: a second run on the same --name is refused at once, naming the holder's pid,
    and leaves the folder as it was."""
    fault_log.tried('second spikeclip train on the same --name', 'while the first holds logs/run')
    _no_model(monkeypatch)
    folder = tmp_path / 'logs' / 'run'
    with FolderLock(str(folder), 'spikeclip train'):
        (folder / 'spike_command.json').write_text('{"argv": ["the first run"]}\n')
        assert spike_train.main(train_cmd(digits, tmp_path / 'logs', 'run', '--lr', '1e-3')[3:]) == 2
        _one_line_error(capsys, str(folder), f'in use by process {os.getpid()}', 'pick another --name')
        assert (folder / 'spike_command.json').read_text() == '{"argv": ["the first run"]}\n'
    # released (as the kernel releases it when a process dies): the folder is free again
    with FolderLock(str(folder)):
        pass
    fault_log.survived()


def test_demo_folder_and_teacher_cache_are_held(tmp_path, capsys, fault_log):
    from open_clip_spike.cli.demo import main as demo_main
    from open_clip_spike.teacher_cache import TeacherFeatureCache
    from fault_helpers import FASHION_MNIST
    fault_log.tried('second spikeclip demo on the same --out; second run on one teacher cache', 'locks')
    out = tmp_path / 'd'
    with FolderLock(str(out), 'spikeclip demo'):
        assert demo_main(['--quick', '--out', str(out), '--data', str(FASHION_MNIST), '--no-progress']) == 2
        _one_line_error(capsys, str(out), f'in use by process {os.getpid()}')
    cache = TeacherFeatureCache(str(tmp_path / 'cache'), {'teacher': 't'}, lock=True)  # as spikeclip train opens it
    with pytest.raises(FolderInUseError, match=f'in use by process {os.getpid()}'):
        TeacherFeatureCache(str(tmp_path / 'cache'), {'teacher': 't'}, lock=True)
    TeacherFeatureCache(str(tmp_path / 'cache'), {'teacher': 't'}, rank=1, lock=True)  # the run's other ranks
    cache.close()
    TeacherFeatureCache(str(tmp_path / 'cache'), {'teacher': 't'}, lock=True).close()
    fault_log.survived()


# ---------------------------------------------------------------------------------------------------------------
# Training data, checked before any model is built

def _csv_cases(digits: Path, tmp: Path):
    rows = (digits / 'train.csv').read_text().splitlines()
    cases = {
        'no title column': ('filepath\tcaption\n' + '\n'.join(rows[1:]) + '\n',
                            ["has no column 'title'", '--csv-caption-key']),
        'zero rows': ('filepath\ttitle\n', ['has a header but no rows']),
        'empty file': ('', ['is empty']),
        'not UTF-8': (rows[0] + '\n' + rows[1] + '\n' + rows[2].split('\t')[0] + '\tcaf\xe9\n',
                      ['not UTF-8 text (byte 0xe9', 'save the file as UTF-8']),
        'missing image': (rows[0] + '\n' + rows[1] + '\n' + str(tmp / 'gone.png') + '\ta photo.\n',
                          ['1 of 2 image paths do not exist', 'gone.png', '(row 3)']),
    }
    out = {}
    for name, (text, parts) in cases.items():
        path = tmp / (name.replace(' ', '_') + '.csv')
        path.write_bytes(text.encode('latin-1'))
        out[name] = (path, parts)
    return out


CSV_CASES = ['no title column', 'zero rows', 'empty file', 'not UTF-8', 'missing image']


@pytest.mark.parametrize('case', CSV_CASES)
def test_bad_training_csv_is_refused_first(digits, tmp_path, capsys, monkeypatch, fault_log, case):
    fault_log.tried(f'training CSV: {case}', 'spikeclip train --train-data')
    _no_model(monkeypatch)
    path, parts = _csv_cases(digits, tmp_path)[case]
    cmd = train_cmd(digits, tmp_path / 'logs', 'never')[3:]
    cmd[cmd.index('--train-data') + 1] = str(path)
    assert spike_train.main(cmd) == 2
    _one_line_error(capsys, str(path), *parts)
    assert not (tmp_path / 'logs' / 'never').exists()
    fault_log.survived()


def test_unreadable_image_mid_run_is_skipped_and_counted(digits, tmp_path, fault_log):
    """A corrupt PNG and an empty file among the CSV's 12 rows: the run skips both (a warning names each file),
    records how many it skipped, and finishes; with --spike-max-bad-images 1 it stops at the second with one line
    naming it."""
    from fault_helpers import run_here
    fault_log.tried('a corrupt and an empty image in the training CSV', 'spikeclip train, first epoch')
    (tmp_path / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\0' * 40)
    (tmp_path / 'empty.png').write_bytes(b'')
    lines = (digits / 'train.csv').read_text().splitlines()
    csv = tmp_path / 'train.csv'
    csv.write_text('\n'.join(lines[:6] + [f'{tmp_path / "corrupt.png"}\ta photo.'] + lines[6:11]
                             + [f'{tmp_path / "empty.png"}\ta photo.']) + '\n')  # 12 rows: 3 whole batches

    def cmd(name, *extra):
        c = train_cmd(digits, tmp_path / 'logs', name, '--epochs', '1', *extra)
        c[c.index('--train-data') + 1] = str(csv)
        return c
    proc = run_here(cmd('a'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / 'logs' / 'a' / 'spike_epochs.jsonl').read_text().splitlines()[0])
    assert record['skipped_images'] == 2
    log = (tmp_path / 'logs' / 'a' / 'out.log').read_text() + proc.stderr
    assert all(f'cannot be read: {tmp_path / n}' in log for n in ('corrupt.png', 'empty.png'))
    proc = run_here(cmd('b', '--spike-max-bad-images', '1'))
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert 'spikeclip train: error: 2 training images could not be read, more than --spike-max-bad-images 1' in line
    assert str(tmp_path) in line and 'Traceback' not in proc.stderr
    fault_log.survived()


# ---------------------------------------------------------------------------------------------------------------
# Disk errors while a checkpoint is written

@pytest.mark.parametrize('error, message', [
    (OSError(errno.ENOSPC, 'No space left on device'), 'no space left on device'),
    (PermissionError(errno.EACCES, 'Permission denied'), 'permission denied: {folder}'),
    (OSError(errno.EROFS, 'Read-only file system'), 'permission denied: {folder}'),
])
def test_checkpoint_write_errors_are_named(tmp_path, fault_log, error, message):
    from open_clip_spike.train.resume import CheckpointWriteError, ResumeState
    fault_log.tried(f'{errno.errorcode[error.errno]} while a checkpoint is written', 'ResumeState.save')
    folder = tmp_path / 'checkpoints'
    folder.mkdir()
    (folder / 'epoch_1.pt').write_bytes(b'earlier')

    def save(obj, f):
        Path(f).write_bytes(b'half')
        raise error

    with pytest.raises(CheckpointWriteError) as e:
        ResumeState().save(save, {'epoch': 2, 'name': 'x', 'state_dict': {}, 'optimizer': {}},
                           str(folder / 'epoch_2.pt'))
    assert message.format(folder=folder) in str(e.value) and 'epoch_1.pt is intact' in str(e.value)
    assert sorted(p.name for p in folder.iterdir()) == ['epoch_1.pt']
    assert (folder / 'epoch_1.pt').read_bytes() == b'earlier'
    fault_log.survived()


def test_unwritable_logs_folder_is_refused_first(digits, tmp_path, capsys, monkeypatch, fault_log):
    fault_log.tried('logs folder not writable', 'spikeclip train --spike-logs')
    _no_model(monkeypatch)
    logs = tmp_path / 'ro'
    logs.mkdir()
    logs.chmod(0o555)
    if os.access(logs, os.W_OK):  # as root a chmod does not stop writes: the refusal of the OS, as it comes
        def refusing(real):
            def call(path, *a, **k):
                if str(path).startswith(str(logs)):
                    raise PermissionError(errno.EACCES, 'Permission denied', str(path))
                return real(path, *a, **k)
            return call
        monkeypatch.setattr(os, 'makedirs', refusing(os.makedirs))
        monkeypatch.setattr(os, 'open', refusing(os.open))
    try:
        assert spike_train.main(train_cmd(digits, logs, 'run')[3:]) == 2
    finally:
        logs.chmod(0o755)
    _one_line_error(capsys, f'permission denied: {logs}')
    fault_log.survived()


# ---------------------------------------------------------------------------------------------------------------
# Quiet logs

def test_torch_compiler_loggers_stay_quiet(monkeypatch, fault_log):
    """open_clip_train's logging set-up puts every logger at INFO; torch's keep the levels torch gave them."""
    import open_clip_train.main as oc_main
    from open_clip_spike.train.patches import log_patches, _applied
    fault_log.tried('open_clip_train.setup_logging at INFO', "torch._dynamo / torch._inductor loggers")
    names = ['torch._dynamo', 'torch._inductor', 'torch.fx', 'torch._subclasses.fake_tensor']
    monkeypatch.setattr(logging.getLogger('torch'), 'level', logging.WARNING)
    for n in names:
        monkeypatch.setattr(logging.getLogger(n), 'level', logging.NOTSET)
    mine = logging.getLogger('open_clip_spike.train')
    monkeypatch.setattr(mine, 'level', logging.NOTSET)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        with _applied(log_patches()):
            oc_main.setup_logging(None, logging.INFO)
        assert all(logging.getLogger(n).getEffectiveLevel() == logging.WARNING for n in names)
        assert mine.getEffectiveLevel() == logging.INFO  # upstream's own choice stands for everyone else
    finally:
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)
    fault_log.survived()


# ---------------------------------------------------------------------------------------------------------------
# When a mid-epoch checkpoint is written

def test_step_policy_steps_minutes_and_signals(monkeypatch):
    from open_clip_spike.train import safety
    now = [1000.0]
    monkeypatch.setattr(safety.time, 'monotonic', lambda: now[0])
    steps = safety.StepPolicy(every_steps=2)
    assert [steps.decide(s, first=False) for s in (1, 2, 3, 4)] == [(False, False), (True, False)] * 2
    assert steps.decide(4, first=True) == (False, False)  # the step a run (or epoch) starts at: nothing new
    minutes = safety.StepPolicy(every_minutes=1.5)
    now[0] += 89
    assert minutes.decide(7, first=False) == (False, False)
    now[0] += 1
    assert minutes.decide(8, first=False) == (True, False)
    minutes.saved()
    assert minutes.decide(9, first=False) == (False, False)
    with safety.PreemptionHandler() as handler:
        policy = safety.StepPolicy(handler=handler)
        assert policy.active and policy.decide(3, first=False) == (False, False)
        os.kill(os.getpid(), __import__('signal').SIGTERM)  # handled: the process lives on, the flag is set
        assert handler.signame == 'SIGTERM' and policy.decide(3, first=True) == (True, True)
    assert not safety.StepPolicy().active
