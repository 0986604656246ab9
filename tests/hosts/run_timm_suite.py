"""Run timm's own model tests (``tests/test_models.py`` of the installed timm's sdist) over timm_spike's models.

The sdist is fetched with pip from the package index (``pip download --no-binary :all: --no-deps
timm==<installed>``) into a cache folder, never into this repository; ``timm/suite_conftest.py`` is placed next to
its tests as their ``conftest.py``. The run prints pass / skip / fail counts per test and per model family.

Usage::

    python tests/hosts/run_timm_suite.py [--models 'spikingformer_*,sdt_clip'] [-k expr] [--cache DIR]

Exit status: 0 when nothing failed, 1 on test failures, 2 when the suite could not be fetched or run.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CONFTEST = HERE / 'timm' / 'suite_conftest.py'

# Model name prefix -> family, for the per-family table of results.
FAMILIES = {
    'spikingformer_': 'Spikingformer', 'spikformer_': 'Spikformer', 'sdt_': 'SDT', 'qkformer_': 'QKFormer',
    'sew_resnet': 'SEW-ResNet',
}


def default_cache() -> Path:
    base = os.environ.get('XDG_CACHE_HOME') or str(Path.home() / '.cache')
    return Path(base) / 'spikeclip' / 'hosts'


def fetch_sdist_tests(version: str, cache: Path) -> Path:
    """Download and extract timm's sdist once per version; return its ``tests`` folder (with our conftest)."""
    root = cache / f'timm-{version}'
    tests = root / 'tests'
    if not (tests / 'test_models.py').exists():
        cache.mkdir(parents=True, exist_ok=True)
        archive = cache / f'timm-{version}.tar.gz'
        if not archive.exists():
            subprocess.run(
                [sys.executable, '-m', 'pip', 'download', '--quiet', '--no-binary', ':all:', '--no-deps',
                 f'timm=={version}', '-d', str(cache)], check=True, timeout=600)
        tmp = cache / f'.extract-{os.getpid()}'
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(f'timm-{version}/tests/')]
            tar.extractall(tmp, members=members, filter='data')
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tests, ignore_errors=True)
        os.replace(tmp / f'timm-{version}' / 'tests', tests)
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.copyfile(CONFTEST, tests / 'conftest.py')
    return tests


def family(model: str) -> str:
    return next((f for p, f in FAMILIES.items() if model.startswith(p)), 'other')


def parse_junit(path: Path) -> List[Dict[str, str]]:
    """One row per test case: test (function), model, outcome ('pass', 'skip', 'fail'), message."""
    rows = []
    for case in ET.parse(path).getroot().iter('testcase'):
        name = case.get('name', '')
        test, _, params = name.partition('[')
        model = next((p for p in params.rstrip(']').split('-') if p and not p.isdigit()), '')
        outcome, message = 'pass', ''
        for tag, out in (('skipped', 'skip'), ('failure', 'fail'), ('error', 'fail')):
            el = case.find(tag)
            if el is not None:
                outcome, message = out, (el.get('message') or '').splitlines()[0][:500] if el.get('message') else ''
                break
        rows.append(dict(test=test, model=model, outcome=outcome, message=message))
    return rows


def format_table(rows: Sequence[Dict[str, str]]) -> str:
    """Markdown table: one line per timm test, one column per family, 'P pass / S skip / F fail' in each cell."""
    families = [f for f in dict.fromkeys(FAMILIES.values()) if any(family(r['model']) == f for r in rows)]
    cells = defaultdict(Counter)
    for r in rows:
        cells[(r['test'], family(r['model']))][r['outcome']] += 1
    tests = list(dict.fromkeys(r['test'] for r in rows))
    lines = ['| timm test | ' + ' | '.join(families) + ' |', '|---|' + '---|' * len(families)]
    for t in tests:
        row = []
        for f in families:
            c = cells.get((t, f))
            row.append('-' if not c else ' / '.join(f'{c[o]} {o}' for o in ('pass', 'skip', 'fail') if c[o]))
        lines.append(f'| {t} | ' + ' | '.join(row) + ' |')
    total = Counter(r['outcome'] for r in rows)
    lines.append(f"\ntotal: {total['pass']} passed, {total['skip']} skipped, {total['fail']} failed")
    return '\n'.join(lines)


def run(models: str = '', keyword: str = '', cache: Optional[Path] = None, extra: Sequence[str] = (),
        timeout: int = 3600) -> int:
    import timm
    tests = fetch_sdist_tests(timm.__version__, cache or default_cache())
    junit = tests / f'.junit-{os.getpid()}.xml'
    env = dict(os.environ, TIMM_SPIKE_SUITE_MODELS=models)
    env['PYTHONPATH'] = os.pathsep.join([str(REPO)] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
    cmd = [sys.executable, '-m', 'pytest', 'test_models.py', '-q', '-p', 'no:cacheprovider', '--rootdir', str(tests),
           '-W', 'ignore::pytest.PytestUnknownMarkWarning', f'--junitxml={junit}', '-o', 'addopts=',
           '-o', 'tmp_path_retention_policy=failed',  # passed tests leave no folders behind
           *(['-k', keyword] if keyword else []), *extra]
    proc = subprocess.run(cmd, cwd=tests, env=env, timeout=timeout)
    if not junit.exists():
        print(f'timm suite did not run (pytest exit {proc.returncode})', file=sys.stderr)
        return 2
    rows = parse_junit(junit)
    junit.unlink()
    print(f'\ntimm {timm.__version__} tests/test_models.py over timm_spike models' + (f' ({models})' if models else ''))
    print(format_table(rows))
    skips = sorted({(r['test'], r['message']) for r in rows if r['outcome'] == 'skip'})
    for test, message in skips:
        print(f'skip {test}: {message}')
    for r in rows:
        if r['outcome'] == 'fail':
            print(f"FAIL {r['test']}[{r['model']}]: {r['message']}")
    if not rows:
        return 2
    return 1 if any(r['outcome'] == 'fail' for r in rows) else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', default='', help='comma-separated fnmatch patterns of model names (default: all)')
    parser.add_argument('-k', dest='keyword', default='', help='pytest -k expression over timm\'s test names')
    parser.add_argument('--cache', type=Path, default=None, help=f'sdist cache folder (default {default_cache()})')
    args, extra = parser.parse_known_args(argv)
    return run(args.models, args.keyword, args.cache, extra)


if __name__ == '__main__':
    sys.exit(main())
