"""The offline demo end to end (``--quick`` on the committed Fashion-MNIST subset) and its resumption."""
import dataclasses
import json
import os
from pathlib import Path

import pytest

from open_clip_spike.cli.demo import main
from open_clip_spike.experiments.demo import DemoConfig, DemoError, find_fashion_mnist, run_demo, write_captioned_csv

FIXTURE = str(Path(__file__).parents[2] / 'fixtures' / 'fashion_mnist')
SUMMARY_KEYS = {'teacher_top1', 'student_top1', 'teacher_energy_mj', 'student_energy_mj', 'seconds'}


def test_find_fashion_mnist_errors(tmp_path):
    assert find_fashion_mnist(FIXTURE) == FIXTURE
    with pytest.raises(FileNotFoundError, match='holds no Fashion-MNIST IDX files'):
        find_fashion_mnist(str(tmp_path))


def test_captioned_csv(tmp_path):
    csv = write_captioned_csv(FIXTURE, 'train', str(tmp_path), limit=30, seed=1)
    lines = Path(csv).read_text().splitlines()
    assert lines[0] == 'filepath\ttitle' and len(lines) == 31
    path, caption = lines[1].split('\t')
    assert os.path.isfile(path) and caption.endswith('.') and '{}' not in caption
    # written once: a second call keeps the file (its presence marks a finished split)
    mtime = os.path.getmtime(csv)
    assert write_captioned_csv(FIXTURE, 'train', str(tmp_path), limit=30, seed=1) == csv
    assert os.path.getmtime(csv) == mtime


def test_quick_demo_end_to_end_and_resume(quick_demo, capsys):
    """The session's quick demo (tests/conftest.py: ``spikeclip demo`` with ``DEMO_KNOBS``), then reruns of it."""
    out, summary = quick_demo.out, quick_demo.summary
    # the same settings as DEMO_KNOBS, as the command builds them
    cfg = DemoConfig.quick(out=str(out), data=FIXTURE, train_images=100, test_images=50, energy_images=16,
                           batch_size=50, align_epochs=2, bf16_eval=False, progress=False, lif_impl='spikingjelly')
    assert SUMMARY_KEYS <= set(summary)
    on_disk = json.loads((quick_demo.results / 'summary.json').read_text())
    assert on_disk['student_top1'] == summary['student_top1'] and on_disk['test_images'] == 50
    for key in ('teacher_top1', 'student_top1'):
        assert 0.0 <= summary[key] <= 1.0
    assert summary['student_energy_mj'] > 0 and summary['teacher_energy_mj'] > 0
    assert summary['energy_ratio'] == pytest.approx(summary['student_energy_mj'] / summary['teacher_energy_mj'])
    assert summary['hub_roundtrip_identical'] is True
    assert (out / 'summary.png').stat().st_size > 10_000
    assert (out / 'hub' / 'open_clip_model.safetensors').is_file() and (out / 'hub' / 'model.safetensors').is_file()
    stages = {'data', 'teacher', 'align', 'dual', 'zeroshot_teacher', 'zeroshot_student', 'energy', 'publish'}
    assert set(summary['stage_seconds']) == stages and 'bf16_inference' not in summary
    assert summary['seconds'] == pytest.approx(sum(summary['stage_seconds'].values()))
    assert '[publish] done in' in quick_demo.printed and 'bf16 autocast top-1' not in quick_demo.printed

    # bf16 autocast inference added: only the two bf16 evaluations run, reported next to fp32, their time kept out
    # of the run's time target
    cfg = dataclasses.replace(cfg, bf16_eval=True)
    capsys.readouterr()
    with_bf16 = run_demo(cfg)
    log = capsys.readouterr().out
    assert log.count('done already') == 8 and '[zeroshot_student_bf16] done in' in log
    assert set(with_bf16['stage_seconds']) == stages | {'zeroshot_teacher_bf16', 'zeroshot_student_bf16'}
    b = with_bf16['bf16_inference']
    assert b['student_top1_change'] == pytest.approx(b['student_top1'] - summary['student_top1'])
    assert b['teacher_top1_change'] == pytest.approx(b['teacher_top1'] - summary['teacher_top1'])
    assert json.loads((out / 'zeroshot_student_bf16.json').read_text())['precision'] == 'bf16'
    assert with_bf16['seconds'] == pytest.approx(summary['seconds'])
    assert 'bf16 autocast top-1' in log

    # A finished run: every stage is skipped and the summary is the same.
    again = run_demo(cfg)
    log = capsys.readouterr().out
    assert log.count('done already') == 10
    assert again['student_top1'] == summary['student_top1'] and again['seconds'] == summary['seconds']
    assert again['bf16_inference'] == with_bf16['bf16_inference']

    # An interrupted stage 2 (its final weights missing, its epoch checkpoint kept) resumes instead of retraining,
    # and the later stages rerun on its output.
    (out / 'dual.safetensors').unlink()
    for stale in ('zeroshot_student.json', 'zeroshot_student_bf16.json', 'energy/energy.json', 'publish.json'):
        (out / stale).unlink()
    again = run_demo(cfg)
    log = capsys.readouterr().out
    assert '[dual] done in' in log and '[teacher] done already' in log and '[align] done already' in log
    assert 'resuming checkpoint' in (out / 'dual.log').read_text()  # the same command continued the stage
    assert again['student_top1'] == summary['student_top1']

    # Other evaluation settings rerun the evaluations (and what reads them), not the training stages.
    capsys.readouterr()
    fewer = run_demo(dataclasses.replace(cfg, test_images=40, bf16_eval=False))
    log = capsys.readouterr().out
    assert fewer['test_images'] == 40 and json.loads((out / 'zeroshot_teacher.json').read_text())['n'] == 40
    assert '[zeroshot_teacher] done in' in log and '[zeroshot_student] done in' in log and '[publish] done in' in log
    assert all(f'[{s}] done already' in log for s in ('data', 'teacher', 'align', 'dual', 'energy'))
    # Other training settings: the epoch checkpoints on disk were made with the old ones, so no silent resume.
    with pytest.raises(DemoError, match=r'stage align .* other settings \(lr: 0\.005 -> 0\.001\)'):
        run_demo(dataclasses.replace(cfg, align_lr=1e-3))
    assert (out / 'align.safetensors').is_file()


def test_interrupted_png_write_leaves_no_partial_image(tmp_path, monkeypatch):
    """A kill while the data stage writes PNGs never leaves a truncated PNG that a rerun would reuse."""
    from PIL import Image
    real_save = Image.Image.save
    calls = []

    def dying_save(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 3:  # half an image on disk, then the process is interrupted
            Path(fp).write_bytes(b'\x89PNG\r\n')
            raise KeyboardInterrupt
        return real_save(self, fp, *args, **kwargs)
    monkeypatch.setattr(Image.Image, 'save', dying_save)
    with pytest.raises(KeyboardInterrupt):
        write_captioned_csv(FIXTURE, 'train', str(tmp_path), limit=5, seed=1)
    monkeypatch.undo()
    pngs = sorted((tmp_path / 'train').iterdir())
    assert len(pngs) == 2 and all(not p.name.startswith('.') for p in pngs)
    write_captioned_csv(FIXTURE, 'train', str(tmp_path), limit=5, seed=1)
    pngs = sorted((tmp_path / 'train').iterdir())
    assert len(pngs) == 5
    for p in pngs:
        with Image.open(p) as im:
            im.load()  # a truncated PNG would raise here


def test_failed_stage_records_no_settings(tmp_path):
    """A stage that fails binds nothing: the rerun with corrected settings is not refused (was: batch_size 0
    recorded, the fixed rerun refused as 'other settings')."""
    from open_clip_spike.experiments.demo import _Stages

    def fail():
        raise ZeroDivisionError('integer division by zero')
    stages = _Stages(str(tmp_path))
    with pytest.raises(ZeroDivisionError):
        stages.run('align', str(tmp_path / 'align.safetensors'), fail, settings=dict(batch_size=0), resumable=True)
    assert 'align' not in _Stages(str(tmp_path)).records
    out = _Stages(str(tmp_path)).run('align', str(tmp_path / 'x'), lambda: 'done', settings=dict(batch_size=64),
                                     resumable=True)
    assert out == 'done' and _Stages(str(tmp_path)).records['align']['key'] == {'batch_size': 64}


def test_cli_errors(tmp_path, capsys):
    assert main(['--data', str(tmp_path), '--out', str(tmp_path / 'o'), '--quick', '--no-progress']) == 2
    assert 'holds no Fashion-MNIST IDX files' in capsys.readouterr().err
    assert main(['--quick', '--out', str(tmp_path / 'o'), '--data', FIXTURE, '--align-epochs', '0']) == 2
    assert '--align-epochs must be an integer >= 1, got 0' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(['--teacher', 'ViT-B-16', '--out', str(tmp_path / 'o')])
    assert 'needs --teacher-pretrained' in capsys.readouterr().err
