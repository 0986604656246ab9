import os
import sys
from pathlib import Path

# The fused LIF runs eagerly in the tests (same math; TIMM_SPIKE_FUSED_COMPILE reaches every subprocess too):
# compiling it costs 8-40 s per process and neuron variant, which dozens of short test processes would each pay.
# The compiled kernel is tested where it is the subject (tests/timm_spike/test_fused_lif.py).
os.environ.setdefault('TIMM_SPIKE_FUSED_COMPILE', '0')

import pytest  # noqa: E402
import torch  # noqa: E402

# Two cores: keep each test process on the threads it has and make results repeatable. Under pytest-xdist
# (``make test`` runs ``-n 2``) the cores are shared among the workers, and every process a test starts gets the
# same share through OMP_NUM_THREADS, so a worker and its subprocesses never oversubscribe the machine.
_workers = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
THREADS = max(1, min(2, os.cpu_count() or 1) // max(1, _workers))
torch.set_num_threads(THREADS)
# the allocator the spikeclip commands run with (importing timm_spike leaves glibc's defaults); forks inherit it
from timm_spike.utils import tune_allocator  # noqa: E402
tune_allocator()
if _workers > 1:
    os.environ['OMP_NUM_THREADS'] = str(THREADS)

# The files that take minutes run first, longest first (``make test`` passes --no-loadscope-reorder so that xdist
# keeps this order), so the short files fill in around them and no worker is left with a long file at the end.
# A scheduling hint only: every test runs either way.
LONG_FIRST = (  # longest first (seconds per file in one `make test`, the two quick-demo files together: 138)
    'faults/test_demo_faults.py',
    'open_clip_spike/experiments/test_bench.py',  # 87
    'open_clip_spike/hub/test_hub.py',  # 84
    'open_clip_spike/experiments/test_ablate.py',  # 66
    'hosts/open_clip/test_open_clip_suite.py',  # 60
    'open_clip_spike/train/test_train.py',  # 57
    'hosts/test_timm_suite.py',  # 48
    'faults/test_train_faults.py',  # 38
    'open_clip_spike/cli/test_clip_benchmark.py',  # 36
    'open_clip_spike/experiments/test_paper.py',  # 21
    'open_clip_spike/cli/test_energy_command.py',  # 19
    'open_clip_spike/experiments/test_bench_memory.py',  # 18
    'open_clip_spike/experiments/test_sweep.py',  # 17
)
_HERE = Path(__file__).parent
sys.path.insert(0, str(_HERE / 'helpers'))  # the tests' shared helpers (forkrun.py) import by name


def pytest_collection_modifyitems(config, items):
    rank = {str(_HERE / p): i for i, p in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(str(item.fspath), len(LONG_FIRST)))  # stable: file order kept otherwise


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------------------------------------------------------
# One quick demo run for the session, shared by the demo's end-to-end test (tests/open_clip_spike/experiments/
# test_demo.py, which reruns and resumes it in place) and the demo fault chain (tests/faults/test_demo_faults.py, which
# compares its killed-and-rerun demo with a snapshot of this run's results). Files that share a session fixture go
# to the same xdist worker (``SHARED_SCOPES``), so the run happens once per session.

# The smallest demo that still has every stage and a training stage with two epochs: 100 images in batches of 50.
# spikingjelly's neuron and one thread, as the fault chain's subprocesses run (bit-identical). The bf16 evaluations
# are added by the end-to-end test's rerun.
DEMO_KNOBS = ['--quick', '--data', str(_HERE / 'fixtures' / 'fashion_mnist'), '--train-images',
              '100', '--test-images', '50', '--energy-images', '16', '--batch-size', '50', '--align-epochs', '2',
              '--no-bf16-eval', '--no-progress', '--lif-impl', 'spikingjelly']
DEMO_RESULTS = ('teacher.safetensors', 'align.safetensors', 'dual.safetensors', 'hub/open_clip_model.safetensors',
                'zeroshot_teacher.json', 'zeroshot_student.json', 'energy/energy.json', 'summary.json')
SHARED_SCOPES = {'faults/test_demo_faults.py': 'quick-demo', 'open_clip_spike/experiments/test_demo.py': 'quick-demo',
                 'open_clip_spike/experiments/test_bench_sparse.py': 'quick-demo'}


class QuickDemo:
    """``out``: the demo folder (tests may rerun and change it); ``results``: a copy of its results as first run."""

    def __init__(self, out: Path, results: Path, summary: dict, printed: str):
        self.out, self.results, self.summary, self.printed = out, results, summary, printed
        self.knobs = list(DEMO_KNOBS)


@pytest.fixture(scope='session')
def quick_demo(tmp_path_factory) -> QuickDemo:
    """``spikeclip demo`` with ``DEMO_KNOBS``, run once in this process through the command's own ``main``."""
    import contextlib
    import io
    import json
    import shutil

    from open_clip_spike.cli import main
    base = tmp_path_factory.mktemp('quick-demo')
    out, results = base / 'demo', base / 'results'
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the fault chain's processes (OMP_NUM_THREADS=1)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            rc = main(['demo', '--out', str(out), *DEMO_KNOBS])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0, printed.getvalue()[-3000:]
    for name in DEMO_RESULTS:
        (results / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(out / name, results / name)
    return QuickDemo(out, results, json.loads((out / 'summary.json').read_text()), printed.getvalue())


def pytest_xdist_make_scheduler(config, log):
    """xdist's per-file scheduling (``--dist loadfile``), with the files of ``SHARED_SCOPES`` kept together."""
    if config.getvalue('dist') != 'loadfile':
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedFixtureScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split('::', 1)[0]
            return next((scope for suffix, scope in SHARED_SCOPES.items() if path.endswith(suffix)), path)

    return SharedFixtureScheduling(config, log)


# Reports (``record_report(request, title, text)``) and fault rows (tests/faults' ``fault_log``) that tests attach
# to their results are printed at the end of the run, also under xdist (the properties travel with each test's
# report to the controller, which loads only this conftest).
REPORT_KEY = 'spikeclip_report'


def record_report(request, title: str, text: str) -> None:
    request.node.user_properties.append((REPORT_KEY, (title, text)))


@pytest.fixture
def report(request):
    """``report(title, text)``: print ``text`` in its own section at the end of the run."""
    return lambda title, text: record_report(request, title, text)


def _reports(terminalreporter):
    for reports in terminalreporter.stats.values():
        for rep in reports:
            if getattr(rep, 'when', None) == 'call':
                for key, value in getattr(rep, 'user_properties', ()):
                    yield key, value


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    tr = terminalreporter
    sections, faults = {}, []
    for key, value in _reports(tr):
        if key == REPORT_KEY:
            title, text = value
            sections.setdefault(title, []).append(text)
        elif key == 'spikeclip_fault':  # rows of tests/faults' fault_log
            faults.append(value)
    for title in sorted(sections):
        tr.section(title)
        for text in sections[title]:
            tr.write_line(text)
    if faults:
        tr.section('faults tried / survived')
        w = max(len(r['fault']) for r in faults)
        v = max(len(r['where']) for r in faults)
        for r in sorted(faults, key=lambda r: r['test']):
            tr.write_line(f"{r['fault']:<{w}}  {r['where']:<{v}}  {r['survived']}")
        tr.write_line(f"faults tried: {len(faults)}, survived: {sum(r['survived'] == 'yes' for r in faults)}")
