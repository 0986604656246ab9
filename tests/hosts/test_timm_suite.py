"""timm's own model tests (from the installed timm's sdist) pass over this project's models.

Runs ``run_timm_suite.run`` (timm's tests in a pytest subprocess) on the SpikeCLIP image towers, one per family
(``make test``); ``TIMM_SPIKE_SUITE_MODELS='*'`` runs every registered model (``make test-hosts``, CI's second
step: 22 models take 5 minutes on two threads, over 9 on the one thread a ``make test`` worker has). timm's slow
prune-at-every-index contract test is left out, as timm keeps it out of its own CI (``TIMM_SPIKE_SUITE_K=''``
includes it).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run_timm_suite import default_cache, fetch_sdist_tests, format_table, parse_junit, run  # noqa: E402

CI_MODELS = 'spikingformer_clip,spikformer_clip,sdt_clip,qkformer_clip,sew_resnet18_clip'
CI_KEYWORD = 'not prune_intermediate_layers_contract'


def test_format_table_counts_per_family(tmp_path):
    junit = tmp_path / 'j.xml'
    junit.write_text(
        '<testsuites><testsuite>'
        '<testcase name="test_model_forward[1-sdt_clip]"/>'
        '<testcase name="test_model_forward[1-spikingformer_clip]"><failure message="boom"/></testcase>'
        '<testcase name="test_model_forward_torchscript[1-sdt_clip]"><skipped message="no jit"/></testcase>'
        '</testsuite></testsuites>')
    rows = parse_junit(junit)
    assert [(r['test'], r['model'], r['outcome']) for r in rows] == [
        ('test_model_forward', 'sdt_clip', 'pass'), ('test_model_forward', 'spikingformer_clip', 'fail'),
        ('test_model_forward_torchscript', 'sdt_clip', 'skip')]
    table = format_table(rows)
    assert '| timm test | Spikingformer | SDT |' in table
    assert '| test_model_forward | 1 fail | 1 pass |' in table
    assert 'total: 1 passed, 1 skipped, 1 failed' in table


def test_timm_model_suite_passes_over_project_models(report, capsys):
    import timm
    try:
        fetch_sdist_tests(timm.__version__, default_cache())
    except (subprocess.SubprocessError, OSError) as e:
        pytest.skip(f'timm {timm.__version__} sdist could not be fetched from the package index: {e}')
    models = os.environ.get('TIMM_SPIKE_SUITE_MODELS', CI_MODELS)
    keyword = os.environ.get('TIMM_SPIKE_SUITE_K', CI_KEYWORD)
    status = run(models, keyword)  # the runner here, timm's tests in their own pytest process
    out = capsys.readouterr().out
    table = out[out.find('timm ' + timm.__version__ + ' tests/test_models.py'):]
    report(f"timm {timm.__version__}'s own model tests over this project's models", table)  # printed at the end
    assert status == 0, table
    assert 'total: ' in table and ' 0 failed' in table
    # the only skips are TorchScript's, each with its reason
    skips = [line for line in table.splitlines() if line.startswith('skip ')]
    assert skips and all('torchscript' in line and 'TorchScript cannot compile spikingjelly' in line
                         for line in skips), skips
