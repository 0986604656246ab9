import os
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
if _workers > 1:
    os.environ['OMP_NUM_THREADS'] = str(THREADS)

# The files that take minutes run first, longest first (``make test`` passes --no-loadscope-reorder so that xdist
# keeps this order), so the short files fill in around them and no worker is left with a long file at the end.
# A scheduling hint only: every test runs either way.
LONG_FIRST = (  # longest first (measured per file)
    'open_clip_spike/train/test_train.py',
    'faults/test_demo_faults.py',
    'open_clip_spike/experiments/test_paper.py',
    'faults/test_train_faults.py',
    'open_clip_spike/experiments/test_bench.py',
    'open_clip_spike/experiments/test_ablate.py',
    'timm_spike/test_spikingformer.py',
    'open_clip_spike/hub/test_hub.py',
    'hosts/test_timm_suite.py',
    'hosts/open_clip/test_open_clip_suite.py',
    'open_clip_spike/experiments/test_bench_memory.py',
    'open_clip_spike/experiments/test_demo.py',
    'open_clip_spike/train/test_rate_reg.py',
)
_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    rank = {str(_HERE / p): i for i, p in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(str(item.fspath), len(LONG_FIRST)))  # stable: file order kept otherwise


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


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
