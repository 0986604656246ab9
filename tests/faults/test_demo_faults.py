"""``spikeclip demo --quick`` killed (SIGKILL to the whole process group, as an OOM killer or a closed terminal)
and interrupted (SIGINT to the group, as Ctrl-C) at a named point of each stage, rerun with the same command each
time: it ends with the weights, metrics and summary of an uninterrupted run, and nothing half-written is left."""
import json
import sys
from pathlib import Path


from fault_helpers import assert_same_weights, killed, litter, load_weights, run_cmd

TIMES = {'seconds', 'stage_seconds', 'config', 'hub_dir', 'pretrained'}  # wall times and paths of the out folder

# One demo folder, killed again and again with the same command, each time at another point.
CHAIN = [
    ('teacher.batch@2:KILLGROUP', "inside the teacher stage's first epoch (upstream loop)"),
    ('align.batch@3:INTGROUP', "inside the align stage's second epoch (Ctrl-C)"),
    ('checkpoint.write@1:KILLGROUP', "while align's epoch_2.pt is written"),
    ('dual.batch@2:KILLGROUP', "inside the dual stage's first epoch"),
    ('hub.write:KILLGROUP', 'while the Hub folder is written'),
    ('atomic:summary.json:KILLGROUP', 'while summary.json is written'),
]


def _demo(out: Path, knobs):
    return [sys.executable, '-c', 'import sys; from open_clip_spike.cli import main; sys.exit(main())', 'demo',
            '--out', str(out), *knobs]


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _summary(out: Path):
    return {k: v for k, v in json.loads((out / 'summary.json').read_text()).items() if k not in TIMES}


def test_killed_demo_resumes_exactly(quick_demo, tmp_path, fault_log):
    """The reference is the session's uninterrupted quick demo (tests/conftest.py), run with the same knobs."""
    out = tmp_path / 'd'
    for i, (fault, where) in enumerate(CHAIN):
        point, how = fault.rsplit(':', 1)
        fault_log.tried(f'{how.replace("GROUP", "")} at {point}', f'spikeclip demo --quick: {where}')
        # the first run is a new interpreter; the others are forks of this process (fault_helpers.run_forked)
        proc = run_cmd(_demo(out, quick_demo.knobs), fault=fault, fork=i > 0)
        assert killed(proc), proc.stdout[-2000:] + proc.stderr[-3000:]
        if how == 'INTGROUP':
            assert 'rerun the same command' in proc.stderr and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    _ok(run_cmd(_demo(out, quick_demo.knobs), fork=True))
    ref = quick_demo.results
    for name in ('teacher', 'align', 'dual'):
        assert_same_weights(load_weights(out / f'{name}.safetensors'), load_weights(ref / f'{name}.safetensors'))
    assert_same_weights(load_weights(out / 'hub' / 'open_clip_model.safetensors'),
                        load_weights(ref / 'hub' / 'open_clip_model.safetensors'))
    for f in ('zeroshot_teacher.json', 'zeroshot_student.json'):
        a, b = (json.loads((d / f).read_text()) for d in (out, ref))
        assert {k: v for k, v in a.items() if k not in TIMES} == {k: v for k, v in b.items() if k not in TIMES}
    energy = [json.loads((d / 'energy' / 'energy.json').read_text()) for d in (out, ref)]
    assert energy[0]['energy_mj_per_image'] == energy[1]['energy_mj_per_image']
    assert _summary(out) == _summary(ref)
    assert litter(out) == []
    # every stage resumed or reran: the logs show the kills were real
    assert (out / 'align.log').read_text().count('resuming checkpoint') >= 2
    fault_log.survived()
