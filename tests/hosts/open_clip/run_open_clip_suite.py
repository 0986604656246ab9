"""Run open_clip's own tests (``tests/`` of the installed open_clip_torch's sdist) over the SpikeCLIP configs.

The sdist is fetched with pip from the package index (``pip download --no-binary :all: --no-deps
open_clip_torch==<installed>``) into a cache folder, never into this repository; ``suite_conftest.py`` is placed
next to its tests as their ``conftest.py``. Before the tests run, the reference outputs of ``test_inference.py``
are made in a separate process with open_clip's ``util_test.create_test_data`` (one batch of one image and one
text, its defaults), so the inference test checks that a fresh process rebuilds the same model and outputs.
The run prints pass / skip / fail counts per test and per model, every skip's reason and what was deselected.

Usage::

    python tests/hosts/open_clip/run_open_clip_suite.py [--models 'SpikeCLIP-Tiny*'] [--train-models PATTERNS]
        [-k expr] [--cache DIR]

Exit status: 0 when nothing failed, 1 on test failures, 2 when the suite could not be fetched or run.
"""
import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
CONFTEST = HERE / 'suite_conftest.py'
DIST = 'open_clip_torch'


class SuiteUnavailable(RuntimeError):
    """The sdist could not be fetched (no network and nothing cached) or unpacked."""


def default_cache() -> Path:
    base = os.environ.get('XDG_CACHE_HOME') or str(Path.home() / '.cache')
    return Path(base) / 'spikeclip' / 'hosts'


def fetch_sdist_tests(dist: str, version: str, cache: Path, timeout: int = 600) -> Path:
    """Download ``dist==version``'s sdist once and extract its ``tests`` folder; return that folder.

    Raises:
        SuiteUnavailable: pip could not fetch the sdist, or it holds no ``tests`` folder.
    """
    root = cache / f'{dist}-{version}'
    tests = root / 'tests'
    if (tests / 'util_test.py').exists():
        return tests
    cache.mkdir(parents=True, exist_ok=True)
    archives = sorted(cache.glob(f'{dist}-{version}.tar.gz')) + sorted(cache.glob(f'{dist.replace("_", "-")}-{version}.tar.gz'))
    if not archives:
        proc = subprocess.run(
            [sys.executable, '-m', 'pip', 'download', '--quiet', '--no-binary', ':all:', '--no-deps',
             f'{dist}=={version}', '-d', str(cache)], capture_output=True, text=True, timeout=timeout)
        archives = sorted(cache.glob(f'*{version}.tar.gz'))
        archives = [a for a in archives if a.name.lower().replace('-', '_').startswith(dist.lower())]
        if proc.returncode != 0 or not archives:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['no output']
            raise SuiteUnavailable(f'pip download of the {dist}=={version} sdist failed: {tail[0]}')
    tmp = cache / f'.extract-{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(archives[0]) as tar:
        top = tar.getnames()[0].split('/')[0]
        members = [m for m in tar.getmembers() if m.name.startswith(f'{top}/tests/')]
        if not members:
            raise SuiteUnavailable(f'{archives[0].name} holds no tests/ folder')
        tar.extractall(tmp, members=members, filter='data')
    root.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tests, ignore_errors=True)
    os.replace(tmp / top / 'tests', tests)
    shutil.rmtree(tmp, ignore_errors=True)
    return tests


def load_conftest() -> ModuleType:
    """``suite_conftest.py`` as a module (its model lists and the reasons of what it deselects or skips)."""
    spec = importlib.util.spec_from_file_location('open_clip_spike_suite_conftest', CONFTEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The training-loop tests run a handful of steps on fresh models: compiling the fused CPU LIF for each would cost
# more than the steps (every LIF implementation computes the same spikes; tests/timm_spike checks that).
DEFAULT_LIF_IMPL = 'spikingjelly'


def _env(models: str, train_models: str, lif_impl: str = DEFAULT_LIF_IMPL) -> Dict[str, str]:
    env = dict(os.environ, OPEN_CLIP_SPIKE_SUITE_MODELS=models, OPEN_CLIP_SPIKE_SUITE_TRAIN_MODELS=train_models,
               CUDA_VISIBLE_DEVICES='', TIMM_SPIKE_LIF_IMPL=lif_impl)
    env['PYTHONPATH'] = os.pathsep.join([str(REPO)] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
    return env


def make_reference_data(tests: Path, models: Sequence[str], env: Dict[str, str], timeout: int) -> None:
    """Reference outputs of ``test_inference.py`` for ``models``, with open_clip's ``util_test`` (new process)."""
    shutil.rmtree(tests / 'data', ignore_errors=True)  # made by this code, now: never a stale reference
    code = ('import sys, open_clip_spike, util_test; '
            'made = util_test.create_test_data(sys.argv[1:]); '
            'assert sorted(made) == sorted(sys.argv[1:]), (made, sys.argv[1:])')
    subprocess.run([sys.executable, '-c', code, *models], cwd=tests, env=env, check=True, timeout=timeout,
                   stdout=subprocess.DEVNULL)


def _split_id(name: str, models: Sequence[str]) -> tuple:
    """'test_inference_with_data[SpikeCLIP-Tiny-False]' -> ('test_inference_with_data', 'SpikeCLIP-Tiny')."""
    test, _, params = name.partition('[')
    params = params.rstrip(']')
    model = max((m for m in models if params.startswith(m)), key=len, default=params)
    rest = params[len(model):]
    if rest.startswith('+'):
        test += f' {rest}'
    return test, model


def parse_junit(path: Path, models: Sequence[str]) -> List[Dict[str, str]]:
    """One row per test case: test, model, outcome ('pass', 'skip', 'fail'), message, seconds."""
    rows = []
    for case in ET.parse(path).getroot().iter('testcase'):
        test, model = _split_id(case.get('name', ''), models)
        outcome, message = 'pass', ''
        for tag, out in (('skipped', 'skip'), ('failure', 'fail'), ('error', 'fail')):
            el = case.find(tag)
            if el is not None:
                outcome = out
                message = (el.get('message') or '').splitlines()[0][:300] if el.get('message') else ''
                break
        rows.append(dict(test=test, model=model, outcome=outcome, message=message, seconds=case.get('time', '')))
    return rows


def format_table(rows: Sequence[Dict[str, str]]) -> str:
    """Markdown table: one line per model, one column per open_clip test, pass / skip / fail in each cell."""
    tests = list(dict.fromkeys(r['test'] for r in rows))
    models = list(dict.fromkeys(r['model'] for r in rows))
    cells = defaultdict(Counter)
    for r in rows:
        cells[(r['model'], r['test'])][r['outcome']] += 1
    lines = ['| SpikeCLIP config | ' + ' | '.join(tests) + ' |', '|---|' + '---|' * len(tests)]
    for m in models:
        row = []
        for t in tests:
            c = cells.get((m, t))
            row.append('-' if not c else ' / '.join(o for o in ('pass', 'skip', 'fail') if c[o]))
        lines.append(f'| {m} | ' + ' | '.join(row) + ' |')
    total = Counter(r['outcome'] for r in rows)
    lines.append(f"\ntotal: {total['pass']} passed, {total['skip']} skipped, {total['fail']} failed")
    return '\n'.join(lines)


def run(models: str = '', train_models: str = '', keyword: str = '', cache: Optional[Path] = None,
        extra: Sequence[str] = (), timeout: int = 1800, lif_impl: str = DEFAULT_LIF_IMPL) -> tuple:
    """Fetch, prepare and run the suite. Returns (exit status, rows, report text).

    Raises:
        SuiteUnavailable: the sdist could not be fetched.
    """
    from importlib.metadata import version
    oc_version = version(DIST)
    tests = fetch_sdist_tests(DIST, oc_version, cache or default_cache())
    shutil.copyfile(CONFTEST, tests / 'conftest.py')
    env = _env(models, train_models, lif_impl)
    conftest = load_conftest()
    os.environ['OPEN_CLIP_SPIKE_SUITE_MODELS'] = models  # what load_conftest's suite_models() reads
    names = conftest.suite_models()
    if not names:
        raise ValueError(f'--models {models!r} matches no SpikeCLIP config')
    make_reference_data(tests, names, env, timeout)
    junit = tests / f'.junit-{os.getpid()}.xml'
    cmd = [sys.executable, '-m', 'pytest', '.', '-q', '-p', 'no:cacheprovider', '--rootdir', str(tests),
           '-W', 'ignore::pytest.PytestUnknownMarkWarning', f'--junitxml={junit}', '-o', 'addopts=',
           '-o', 'tmp_path_retention_policy=failed',  # each training test saves a checkpoint with optimizer state
           *(['-k', keyword] if keyword else []), *extra]
    proc = subprocess.run(cmd, cwd=tests, env=env, timeout=timeout, capture_output=True, text=True)
    if not junit.exists():
        return 2, [], f'open_clip suite did not run (pytest exit {proc.returncode})\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}'
    rows = parse_junit(junit, names)
    junit.unlink()
    lines = [f'open_clip_torch {oc_version} tests/ over the SpikeCLIP configs' + (f' ({models})' if models else ''),
             format_table(rows)]
    for (test, message) in sorted({(r['test'], r['message']) for r in rows if r['outcome'] == 'skip'}):
        lines.append(f'skip {test}: {message}')
    for r in rows:
        if r['outcome'] == 'fail':
            lines.append(f"FAIL {r['test']}[{r['model']}]: {r['message']}")
    for what, reason in {**conftest.NOT_APPLICABLE, **conftest.NOT_APPLICABLE_TRAINING}.items():
        lines.append(f'deselected {what}: {reason}')
    report = '\n'.join(lines)
    if any(r['outcome'] == 'fail' for r in rows):
        report += '\n\n' + proc.stdout[-6000:]
    status = 2 if not rows else 1 if any(r['outcome'] == 'fail' for r in rows) else 0
    return status, rows, report


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', default='', help='comma-separated fnmatch patterns of SpikeCLIP configs')
    parser.add_argument('--train-models', default='',
                        help='patterns of the configs the training-loop tests run on (default: all of --models)')
    parser.add_argument('-k', dest='keyword', default='', help='pytest -k expression over open_clip\'s test names')
    parser.add_argument('--cache', type=Path, default=None, help=f'sdist cache folder (default {default_cache()})')
    parser.add_argument('--lif-impl', default=DEFAULT_LIF_IMPL, choices=('auto', 'fused', 'spikingjelly'),
                        help=f'TIMM_SPIKE_LIF_IMPL of the test processes (default {DEFAULT_LIF_IMPL})')
    args, extra = parser.parse_known_args(argv)
    try:
        status, _, report = run(args.models, args.train_models, args.keyword, args.cache, extra,
                                lif_impl=args.lif_impl)
    except (SuiteUnavailable, ValueError) as e:
        print(f'run_open_clip_suite: error: {e}', file=sys.stderr)
        return 2
    print(report)
    return status


if __name__ == '__main__':
    sys.exit(main())
