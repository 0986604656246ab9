"""recipes/paper/slurm.sbatch under a fake SLURM: a preempted run (exit code 75, or SIGUSR1 from --signal) is
requeued, any other failure is not."""
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

RECIPES = Path(__file__).parents[2] / 'recipes' / 'paper'


def _fake_slurm(tmp_path: Path, srun_body: str) -> dict:
    bin_ = tmp_path / 'bin'
    bin_.mkdir()
    log = tmp_path / 'calls.log'
    (bin_ / 'srun').write_text('#!/bin/bash\n' + srun_body + '\n')
    for tool in ('scontrol', 'scancel'):
        (bin_ / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n'
                                 + ('printf "node-a\\n"\n' if tool == 'scontrol' else ''))
    for f in bin_.iterdir():
        f.chmod(0o755)
    return dict(os.environ, PATH=f"{bin_}:{os.environ['PATH']}", SLURM_JOB_ID='77', SLURM_NNODES='1',
                SLURM_JOB_NODELIST='node-a')


def _calls(tmp_path: Path):
    log = tmp_path / 'calls.log'
    return [line for line in log.read_text().splitlines() if 'show hostnames' not in line] if log.exists() else []


@pytest.mark.parametrize('code, requeued', [(75, True), (1, False)])
def test_slurm_requeues_a_preempted_run(tmp_path, fault_log, code, requeued):
    fault_log.tried(f'training step exits {code}', 'recipes/paper/slurm.sbatch')
    env = _fake_slurm(tmp_path, f'exit {code}')
    proc = subprocess.run(['bash', str(RECIPES / 'slurm.sbatch'), 'recipe.sh'], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == (0 if requeued else code), proc.stderr
    assert _calls(tmp_path) == (['scontrol requeue 77'] if requeued else [])
    fault_log.survived()


def test_slurm_passes_usr1_on_and_requeues(tmp_path, fault_log):
    """SIGUSR1 to the batch shell (#SBATCH --signal=B:USR1@...) goes on to the training step (scancel --signal),
    whose failure status through torchrun is not 75: the job is requeued all the same."""
    fault_log.tried('SIGUSR1 to the batch shell', 'recipes/paper/slurm.sbatch')
    env = _fake_slurm(tmp_path, 'sleep 3; exit 1')
    proc = subprocess.Popen(['bash', str(RECIPES / 'slurm.sbatch'), 'recipe.sh'], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert _calls(tmp_path) == ['scancel --signal=USR1 77.0', 'scontrol requeue 77']
    fault_log.survived()
