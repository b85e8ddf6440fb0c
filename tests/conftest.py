from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# The in-process service tests run prometheus-client in multiprocess mode, as `bentoml serve` does
# (BentoML's /metrics needs it). prometheus-client reads this when it is first imported, so it is
# set here, before any test imports it; server subprocesses get an environment without it. Each
# pytest-xdist worker makes its own: the workers inherit the controller's environment, and two
# processes writing one directory would add up each other's counters.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ or os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="anomaly-vae-prometheus-")
    atexit.register(shutil.rmtree, os.environ["PROMETHEUS_MULTIPROC_DIR"], True)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a container's or taskset's share, not the
    machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# `make test` runs `pytest -n auto`. Two workers on 2 CPUs, each with torch's default of a thread a
# CPU, took 17 minutes where one process took 11.5: each worker's OpenMP threads spun waiting for a
# CPU the other held. So each worker (and every process a test starts from it: the command line,
# `bentoml serve`, Spark's Python workers) gets its share of the CPUs. An OMP_NUM_THREADS set by the
# caller is kept. Set here, before any test imports torch, which reads it once.
# THREAD_SHARE records the share given (the thread_share fixture below reads it).
THREAD_SHARE = "_ANOMALY_VAE_TEST_THREAD_SHARE"
if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
    _share = max(1, usable_cpus() // max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)))
    os.environ["OMP_NUM_THREADS"] = os.environ[THREAD_SHARE] = str(_share)
    if "torch" in sys.modules:  # a plugin imported it already
        sys.modules["torch"].set_num_threads(_share)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's: no error where it is not installed
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: a worker a usable CPU, at most 4 (each worker holds torch, a model or two, and may
    run a JVM or a server: about 1.5 GB), none (this process) on one CPU. ``-n logical`` and a
    ``PYTEST_XDIST_AUTO_NUM_WORKERS`` that is a number are left to pytest-xdist (None), which counts
    logical CPUs for the one and takes the other as the count; any other value of the variable is
    ignored, with a line that says so, as pytest-xdist ignores it."""
    given = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS")
    if given:
        try:
            int(given)
            return None
        except ValueError:
            sys.stderr.write(f"PYTEST_XDIST_AUTO_NUM_WORKERS is not a number: {given!r}; ignored\n")
    if config.getoption("numprocesses", None) == "logical":
        return None
    cpus = usable_cpus()
    return 0 if cpus < 2 else min(cpus, 4)


@pytest.fixture
def thread_share() -> int | None:
    """The share of the CPUs this file gave this pytest-xdist worker's torch; None where it gave none
    (not a worker, or OMP_NUM_THREADS set by the caller)."""
    given = os.environ.get(THREAD_SHARE)
    return int(given) if given else None


def pytest_unconfigure(config: pytest.Config) -> None:
    """Close prometheus-client's multiprocess files (the in-process service's metrics) before this
    process's folder is removed at exit: left to the garbage collector at interpreter exit, each
    printed an unclosed-file ResourceWarning in a pytest-xdist worker's output."""
    values = sys.modules.get("prometheus_client.values")
    close = getattr(values, "close_all_multiprocess_files", None)
    if close is not None:
        close()


ROOT = Path(__file__).resolve().parents[1]
FAST = dict(epochs=30, random_state=0)
# one network and no floor: the tables' default before the pair (session 12), for tests of a single
# network or of the model formats it writes (2 and 3)
SINGLE = dict(pair=False, marginal_floor=0.0)
# ``python -c SIGNAL_SHIM IGNORED PROGRAM ARGS...``: PROGRAM with SIGINT, SIGTERM and SIGHUP at their defaults
# but the signal numbers in IGNORED (comma-separated) ignored, whatever this test process inherited (a
# shell's `&` starts jobs with SIGINT ignored, nohup with SIGHUP ignored, and a command must keep an
# ignored signal ignored): for the tests that signal a command
SIGNAL_SHIM = """
import os, signal, sys
ignored = {int(v) for v in sys.argv[1].split(",") if v}
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, signal.SIG_IGN if s in ignored else signal.SIG_DFL)
os.execvp(sys.argv[2], sys.argv[2:])
"""
DATA = ROOT / "data"
SHARED = Path(os.environ.get("ANOMALY_VAE_DATASETS", ROOT.parent / "shared" / "datasets"))


@pytest.fixture
def cli_here(capsys: pytest.CaptureFixture[str]):
    """``anomaly-vae ARGS...`` through ``anomaly_vae.cli.main`` in the test process, as a
    ``CompletedProcess`` (exit code, stdout, stderr): the same code as the installed command
    without a process start and a torch import (about 4 s) each. Tests that need the real process
    (exit by signal, a segfault, what reaches the terminal) run the executable instead."""
    import subprocess

    from anomaly_vae.cli import main

    def run(*args: object) -> subprocess.CompletedProcess[str]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess([str(a) for a in args], code, out, err)

    return run


@pytest.fixture(scope="session")
def cardio() -> pd.DataFrame:
    """ADBench cardio (real, 1831 rows, 21 numeric features + a 'label' column), read exactly."""
    from anomaly_vae.io.tables import EXACT_FLOATS

    return pd.read_csv(DATA / "cardio.csv", **EXACT_FLOATS)


@pytest.fixture(scope="session")
def fashion_sample() -> tuple[np.ndarray, np.ndarray]:
    """1000 real Fashion-MNIST test images (100 a class), uint8 (N, 28, 28), and labels."""
    with np.load(DATA / "fashion_mnist_sample.npz", allow_pickle=False) as f:
        return f["images"], f["labels"]


def shared_or_skip(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not found: the shared datasets are not beside this checkout (set ANOMALY_VAE_DATASETS)")
    return p


@pytest.fixture(scope="module")
def cancer():
    """scikit-learn's breast-cancer table: 250 benign rows to fit, the other benign rows, the malignant."""
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    normal, anomalous = X[y == 1], X[y == 0]  # benign is the normal class
    return normal.iloc[:250], normal.iloc[250:], anomalous


@pytest.fixture(scope="module")
def cancer_model(cancer):
    """A detector fitted on ``cancer``'s 250 benign rows (one per test module: tests may re-set alpha)."""
    from anomaly_vae import VAEAnomalyDetector

    train, _, _ = cancer
    return VAEAnomalyDetector(alpha=0.05, **FAST).fit(train)


@pytest.fixture(scope="module")
def mixed(cardio: pd.DataFrame):
    """A model of cardio's features plus a categorical column, with missing values in training."""
    from anomaly_vae import VAEAnomalyDetector

    df = cardio.drop(columns=["label"]).iloc[:, :6].copy()
    rng = np.random.RandomState(0)
    df["site"] = rng.choice(["north", "south", "east"], len(df))
    df.loc[rng.rand(len(df)) < 0.05, "f01"] = np.nan  # f01 gets a missing indicator
    det = VAEAnomalyDetector(epochs=3, random_state=0).fit(df.iloc[:1200])
    return det, df.iloc[1200:1300].reset_index(drop=True)


@pytest.fixture(scope="module")
def numeric(cardio: pd.DataFrame):
    """A model of cardio's 21 numeric columns (f03 with missing values in training) and 200 rows to score."""
    from anomaly_vae import VAEAnomalyDetector

    df = cardio.drop(columns=["label"])
    train = df.iloc[:1200].copy()
    train.loc[np.random.RandomState(1).rand(1200) < 0.05, "f03"] = np.nan
    det = VAEAnomalyDetector(epochs=3, random_state=0).fit(train)
    return det, df.iloc[1200:1400].reset_index(drop=True)
