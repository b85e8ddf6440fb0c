"""The command line through its real entry point (a subprocess running `anomaly-vae`), on real
data: ADBench cardio written as CSV with an id and a string column, and Fashion-MNIST as PNGs."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anomaly_vae import load_detector
from anomaly_vae.io.tables import EXACT_FLOATS

from .conftest import SIGNAL_SHIM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from procstat import peak_rss_mib  # noqa: E402

PIL = pytest.importorskip("PIL.Image")

EXE = shutil.which("anomaly-vae", path=str(Path(sys.executable).parent)) or "anomaly-vae"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.fixture(scope="module")
def table(cardio: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cardio with an id column and a string column (site), as a CSV file."""
    df = cardio.copy()
    df.insert(0, "id", [f"p{i:05d}" for i in range(len(df))])
    df["site"] = np.random.RandomState(0).choice(["north", "south", "east"], len(df))
    path = tmp_path_factory.mktemp("table") / "cardio.csv"
    df.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def table_model(table: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("model") / "cardio-model"
    r = run("train", table, "--out", out, "--label-column", "label", "--normal-label", "normal",
            "--id-column", "id", "--epochs", "30", "--quiet")
    assert r.returncode == 0, r.stderr
    return out, r


@pytest.fixture(scope="module")
def single_model(table: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One network (`--no-pair`): about 10x the pair's rows a second, for the tests of the command
    that streams large files (memory, signals), where the model's own cost is not what is tested."""
    out = tmp_path_factory.mktemp("model") / "cardio-single"
    r = run("train", table, "--out", out, "--label-column", "label", "--normal-label", "normal",
            "--id-column", "id", "--epochs", "30", "--no-pair", "--quiet")
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def png_folders(fashion_sample: tuple[np.ndarray, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/normal/*.png (all 100 T-shirts) and root/other/*.png (50 sneakers), real Fashion-MNIST."""
    images, labels = fashion_sample
    root = tmp_path_factory.mktemp("fmnist")
    for cls, name, take in ((0, "normal", 100), (7, "other", 50)):
        (root / name).mkdir()
        for i in np.flatnonzero(labels == cls)[:take]:
            PIL.fromarray(images[i]).save(root / name / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def image_model(png_folders: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("imodel") / "fmnist-model"
    r = run("train", png_folders, "--out", out, "--normal-label", "normal", "--epochs", "3", "--alpha", "0.1",
            "--latent-dim", "4", "--quiet")
    assert r.returncode == 0, r.stderr
    return out


def test_parse_size() -> None:
    from anomaly_vae.cli.commands import parse_size
    from anomaly_vae.exceptions import InputError

    assert parse_size("28x32") == (28, 32)
    with pytest.raises(InputError, match="HxW"):
        parse_size("28")


def test_flag_choices_are_the_core_modules_own_and_help_does_not_import_torch() -> None:
    """The allowed values of --likelihood, --score, --activation and plot's KIND come from the
    modules that own them, read only when that command's flags are needed."""
    code = textwrap.dedent("""
        import sys
        from anomaly_vae.cli import build_parser
        parser = build_parser()
        parser.format_help()
        parser.parse_args(["score", "m", "d", "--out", "o"])
        print("torch" in sys.modules)
        parser.parse_args(["train", "d", "--out", "m"])
        from anomaly_vae import models, objectives, plots, scoring
        train = parser._subparsers._group_actions[0].choices["train"]
        plot = parser._subparsers._group_actions[0].choices["plot"]
        plot.format_usage()
        choices = {a.dest: tuple(a.choices) for p in (train, plot) for a in p._actions if a.choices}
        print(choices["likelihood"] == objectives.LIKELIHOODS, choices["score"] == scoring.SCORES,
              choices["activation"] == tuple(models.ACTIVATIONS), choices["kind"] == plots.KINDS)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "True", "True", "True", "True"]


def test_help_teaches_commands_and_exit_codes() -> None:
    r = run("--help")
    assert r.returncode == 0
    for word in ("train", "score", "evaluate", "calibrate", "info", "demo", "exit codes"):
        assert word in r.stdout
    r = run("score", "--help")
    assert r.returncode == 0 and "--explain" in r.stdout and "p_value" in r.stdout
    assert "130 / 143 / 129 stopped by SIGINT (Ctrl-C) / SIGTERM / SIGHUP" in " ".join(r.stdout.split())


def test_train_with_labels_reports_held_out_metrics(table_model: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    model, r = table_model
    assert "AUROC" in r.stdout and "false-alarm rate" in r.stdout
    auroc = float(r.stdout.split("AUROC")[1].split()[0])
    assert auroc > 0.85  # cardio, normal-only training: the Python API gets ~0.93
    card = json.loads((model / "model.json").read_text())
    names = [c["name"] for c in card["input"]["preprocessing"]["columns"]]
    assert "id" not in names and "label" not in names and "site" in names
    assert card["training"]["summary"]["holdout"]["n_anomalous"] == 176


def test_info_shows_the_model_card(table_model: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    r = run("info", table_model[0])
    assert r.returncode == 0
    for word in ("site (cat)", "threshold", "calibration scores", "dense VAE", "held-out check", "torch"):
        assert word in r.stdout
    assert "a pair: a second network of layers [256, 128]" in r.stdout and "marginal floor 0.01" in r.stdout
    assert re.search(r"training +\d+ rows, \d+ \+ \d+ epochs", r.stdout), r.stdout  # the pair's two runs
    r = run("info", table_model[0], "--json")
    assert json.loads(r.stdout)["format_version"] == 5  # the default on a table: the pair of its own layers


def test_train_with_a_marginal_floor_and_info_shows_it(table: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "floored"
    r = run("train", table, "--out", out, "--label-column", "label", "--normal-label", "normal", "--id-column", "id",
            "--epochs", "2", "--marginal-floor", "0.02", "--no-pair", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "trained dense VAE on" in r.stdout
    card = json.loads((out / "model.json").read_text())
    assert card["format_version"] == 3 and card["architecture"]["marginal_floor"] == 0.02
    r = run("info", out)
    assert r.returncode == 0 and "marginal floor 0.02" in r.stdout and "a pair" not in r.stdout
    off = tmp_path / "off"
    r = run("train", table, "--out", off, "--label-column", "label", "--normal-label", "normal", "--id-column", "id",
            "--epochs", "2", "--marginal-floor", "0", "--no-pair", "--quiet")
    assert r.returncode == 0, r.stderr
    assert json.loads((off / "model.json").read_text())["format_version"] == 2  # one network, no floor: as before
    r = run("train", table, "--out", tmp_path / "no", "--marginal-floor", "1", "--quiet")
    assert r.returncode == 2 and "marginal floor must be" in r.stderr
    from anomaly_vae.cli import build_parser

    for bad in ("-0.1", "nan", "x", "Auto"):  # the same parser, in this process (a usage error is exit 2)
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(["train", str(table), "--out", str(tmp_path / "no"), "--marginal-floor", bad])
        assert exit_.value.code == 2 and "marginal floor must be" in capsys.readouterr().err


def test_score_round_trip_matches_python_api_exactly(table: Path, table_model: tuple[Path, subprocess.CompletedProcess[str]],
                                                     tmp_path: Path) -> None:
    out = tmp_path / "scores.csv"
    r = run("score", table_model[0], table, "--out", out, "--id-column", "id", "--batch-size", "500", "--quiet")
    assert r.returncode == 0, r.stderr
    res = pd.read_csv(out, **EXACT_FLOATS)
    df = pd.read_csv(table, **EXACT_FLOATS)
    assert list(res.columns) == ["id", "score", "p_value", "is_anomaly", "threshold", "error"]
    assert res["id"].tolist() == df["id"].tolist()  # one row per input row, in order
    det = load_detector(table_model[0])
    expected = det.anomaly_score(df)
    np.testing.assert_array_equal(res["score"].to_numpy(), expected)  # the same scores as Python, bit for bit
    np.testing.assert_array_equal(res["is_anomaly"].to_numpy(dtype=bool), expected > det.threshold_)
    np.testing.assert_allclose(res["p_value"], det.p_values_from_scores(expected))
    assert res["error"].isna().all()
    assert f"scored {len(df)} of {len(df)} rows" in r.stdout and "anomalies flagged" in r.stdout


def test_score_columns_in_another_order_give_the_same_scores(table: Path, table_model: tuple[Path, subprocess.CompletedProcess[str]],
                                                             tmp_path: Path) -> None:
    df = pd.read_csv(table, **EXACT_FLOATS).head(300)
    shuffled = tmp_path / "shuffled.csv"
    df[list(reversed(df.columns))].to_csv(shuffled, index=False)
    r = run("score", table_model[0], shuffled, "--out", tmp_path / "s.csv", "--quiet")
    assert r.returncode == 0, r.stderr
    res = pd.read_csv(tmp_path / "s.csv", **EXACT_FLOATS)
    assert res["row"].tolist() == list(range(300))
    np.testing.assert_array_equal(res["score"], load_detector(table_model[0]).anomaly_score(df))


def test_bad_rows_are_flagged_and_nothing_is_lost(table: Path, table_model: tuple[Path, subprocess.CompletedProcess[str]],
                                                  tmp_path: Path) -> None:
    lines = table.read_text().splitlines()[:41]  # header + 40 rows
    header = lines[0].split(",")
    f02 = header.index("f02")
    row = lines[4].split(",")
    row[f02] = "12,5".replace(",", ";")  # an unparsable number
    lines[4] = ",".join(row)
    lines[9] = lines[9] + ",surplus"  # a line with one field too many
    lines[15] = ",".join(lines[15].split(",")[:-3])  # three fields short
    row = lines[20].split(",")
    row[f02] = "inf"
    lines[20] = ",".join(row)
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    out = tmp_path / "bad-scores.csv"
    r = run("score", table_model[0], bad, "--out", out, "--id-column", "id", "--quiet")
    assert r.returncode == 3, r.stderr  # documented: some rows had errors
    res = pd.read_csv(out, keep_default_na=False, **EXACT_FLOATS)
    assert len(res) == 40
    errors = dict(zip(range(40), res["error"]))
    assert "column 'f02': expected a number, got '12;5'" in errors[3]
    assert "line 10: expected 24 fields, found 25" in errors[8]
    assert "line 16: expected 24 fields, found 21" in errors[14]
    assert "not finite" in errors[19]
    assert res.loc[3, "id"] == "p00003" and res.loc[8, "id"] == "p00008"  # the id survives a malformed line
    flagged = {3, 8, 14, 19}
    for i in range(40):
        assert (res.loc[i, "score"] == "") == (i in flagged)
    assert "rows with errors     4" in r.stdout
    good = pd.read_csv(table, **EXACT_FLOATS).head(40).drop(index=list(flagged))
    np.testing.assert_array_equal(res.loc[[i for i in range(40) if i not in flagged], "score"].astype(float),
                                  load_detector(table_model[0]).anomaly_score(good))


def test_missing_column_is_a_clear_fatal_error_and_keeps_an_old_output(
        table: Path, table_model: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    df = pd.read_csv(table, **EXACT_FLOATS).head(20).drop(columns=["f07"])
    path = tmp_path / "missing.csv"
    df.to_csv(path, index=False)
    out = tmp_path / "out.csv"
    out.write_text("previous results\n")
    r = run("score", table_model[0], path, "--out", out, "--quiet")
    assert r.returncode == 1
    assert "missing column(s) ['f07']" in r.stderr
    assert out.read_text() == "previous results\n"  # never replaced by a half or empty file
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_empty_and_header_only_files(table_model: tuple[Path, subprocess.CompletedProcess[str]], table: Path,
                                     tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    r = run("score", table_model[0], empty, "--out", tmp_path / "o.csv", "--quiet")
    assert r.returncode == 1 and "empty.csv: the file is empty" in r.stderr
    header = tmp_path / "header.csv"
    header.write_text(table.read_text().splitlines()[0] + "\n")
    r = run("score", table_model[0], header, "--out", tmp_path / "o.csv", "--quiet")
    assert r.returncode == 0, r.stderr
    assert pd.read_csv(tmp_path / "o.csv").columns.tolist() == ["row", "score", "p_value", "is_anomaly", "threshold", "error"]


def test_paths_that_do_not_exist(table_model: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    r = run("score", table_model[0], tmp_path / "nope.csv", "--out", tmp_path / "o.csv")
    assert r.returncode == 1 and "nope.csv: no such file or directory" in r.stderr
    r = run("score", tmp_path / "no-model", tmp_path / "nope.csv", "--out", tmp_path / "o.csv")
    assert r.returncode == 1 and "not a model directory" in r.stderr


def test_an_alpha_the_calibration_cannot_serve_is_said_once_before_anything_starts(
        table: Path, table_model: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path, cli_here,
        caplog: pytest.LogCaptureFixture) -> None:
    """It was a warning, an empty progress bar, then the same words as the error."""
    out = tmp_path / "o.csv"
    with caplog.at_level(logging.WARNING):
        r = cli_here("score", table_model[0], table, "--out", out, "--alpha", "0.0001")
    assert r.returncode == 1
    said = r.stdout + r.stderr + caplog.text
    assert said.count("alpha=0.0001 needs at least 9999 calibration samples") == 1, said
    assert "rows" not in r.stderr and not out.exists()


def test_usage_errors_exit_2(table_model: tuple[Path, subprocess.CompletedProcess[str]], table: Path, tmp_path: Path) -> None:
    assert run("score", table_model[0], table).returncode == 2  # --out is required
    r = run("train", table, "--out", tmp_path / "m", "--alpha", "2")
    assert r.returncode == 2 and "alpha must be in (0, 1)" in r.stderr
    r = run("evaluate", table_model[0], table)
    assert r.returncode == 2 and "--label-column" in r.stderr
    assert run("frobnicate").returncode == 2


def test_evaluate_writes_metrics_and_plots(table: Path, table_model: tuple[Path, subprocess.CompletedProcess[str]],
                                           tmp_path: Path) -> None:
    r = run("evaluate", table_model[0], table, "--label-column", "label", "--normal-label", "normal",
            "--id-column", "id", "--json", tmp_path / "m.json", "--plots", tmp_path / "plots")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["n"] == 1831 and m["n_anomalous"] == 176
    assert m["auroc"] > 0.85 and 0 <= m["false_alarm_rate"] < 0.05
    c = m["confusion"]
    assert c["normal"]["flagged"] + c["normal"]["not_flagged"] == 1655
    assert "confusion" in r.stdout and "AUROC" in r.stdout
    for name, size in (("roc.png", (500, 500)), ("scores.png", (700, 400))):
        with PIL.open(tmp_path / "plots" / name) as img:
            assert img.size == size


def test_calibrate_rechooses_the_threshold_without_retraining(table: Path, table_model: tuple[Path, subprocess.CompletedProcess[str]],
                                                               tmp_path: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(table_model[0], model)
    before = load_detector(model)
    df = pd.read_csv(table, **EXACT_FLOATS)
    normal = df[df.label == "normal"].sample(600, random_state=1)
    path = tmp_path / "new-normal.csv"
    normal.to_csv(path, index=False)
    r = run("calibrate", model, path, "--alpha", "0.05", "--id-column", "id", "--label-column", "label")
    assert r.returncode == 0, r.stderr
    after = load_detector(model)
    assert after.calibration_scores_.size == 600 and after.alpha_ == 0.05
    np.testing.assert_array_equal(np.sort(after.calibration_scores_), np.sort(before.anomaly_score(normal)))
    for a, b in zip(before.model_.parameters(), after.model_.parameters()):
        assert np.array_equal(a.detach().numpy(), b.detach().numpy())
    assert "-> 600" in r.stdout


def test_parquet_and_tsv_inputs_and_parquet_output(table: Path, table_model: tuple[Path, subprocess.CompletedProcess[str]],
                                                   tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    df = pd.read_csv(table, **EXACT_FLOATS).head(200)
    expected = load_detector(table_model[0]).anomaly_score(df)
    df.to_parquet(tmp_path / "t.parquet")
    df.to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    df.to_csv(tmp_path / "semi.csv", sep=";", index=False)
    for name in ("t.parquet", "t.tsv", "semi.csv"):
        r = run("score", table_model[0], tmp_path / name, "--out", tmp_path / "o.parquet", "--id-column", "id",
                "--batch-size", "64", "--explain", "2", "--quiet")
        assert r.returncode == 0, (name, r.stderr)
        res = pd.read_parquet(tmp_path / "o.parquet")
        assert res["id"].tolist() == df["id"].tolist(), name
        np.testing.assert_array_equal(res["score"], expected)
        assert {"top1_feature", "top1_nats", "top2_feature", "top2_nats"} <= set(res.columns)
        assert (res["top1_nats"] >= res["top2_nats"]).all()


def test_image_folder_with_a_corrupt_file(png_folders: Path, image_model: Path, fashion_sample: tuple[np.ndarray, np.ndarray],
                                          tmp_path: Path) -> None:
    images, labels = fashion_sample
    folder = tmp_path / "incoming"
    (folder / "b").mkdir(parents=True)
    for k, i in enumerate(np.flatnonzero(labels == 0)[:3]):
        PIL.fromarray(images[i]).save(folder / f"a{k}.png")
    PIL.fromarray(images[0]).convert("RGB").resize((40, 40)).save(folder / "b" / "colour.jpg")  # resized, converted
    good = (folder / "a0.png").read_bytes()
    (folder / "b" / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "b" / "garbage.png").write_bytes(b"not an image at all")
    (folder / "README.txt").write_text("not an image")
    out = tmp_path / "scores.csv"
    r = run("score", image_model, folder, "--out", out, "--explain", "3", "--quiet")
    assert r.returncode == 3, r.stderr
    res = pd.read_csv(out, keep_default_na=False, **EXACT_FLOATS)
    assert res["path"].tolist() == ["a0.png", "a1.png", "a2.png", "b/colour.jpg", "b/garbage.png", "b/truncated.png"]
    err = dict(zip(res["path"], res["error"]))
    assert "truncated" in err["b/truncated.png"] and "not an image" in err["b/garbage.png"]
    assert err["a0.png"] == "" and err["b/colour.jpg"] == ""
    det = load_detector(image_model)
    x = np.stack([images[i] for i in np.flatnonzero(labels == 0)[:3]])
    np.testing.assert_array_equal(res["score"][:3].astype(float), det.anomaly_score(x))
    assert res.loc[0, "top1_feature"].startswith("y")
    assert "not images, skipped  1" in r.stdout


def test_evaluate_image_folders_by_subfolder(png_folders: Path, image_model: Path) -> None:
    r = run("evaluate", image_model, png_folders)
    assert r.returncode == 0, r.stderr
    assert "100 normal with label 'normal', 50 others" in r.stdout


def test_image_model_refuses_a_table(image_model: Path, table: Path, tmp_path: Path) -> None:
    r = run("score", image_model, table, "--out", tmp_path / "o.csv", "--quiet")
    assert r.returncode == 1 and "scores images" in r.stderr


def test_memory_is_flat_in_the_input_size(table: Path, single_model: Path, tmp_path: Path) -> None:
    """Streaming: a CSV 4x larger must not need more than 1.2x the memory (peak RSS of the process)."""
    df = pd.read_csv(table, **EXACT_FLOATS)
    small, big = tmp_path / "small.csv", tmp_path / "big.csv"
    pd.concat([df] * 30, ignore_index=True).to_csv(small, index=False)  # 55k rows
    pd.concat([df] * 120, ignore_index=True).to_csv(big, index=False)  # 220k rows, ~60 MB
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux /proc to read a process's peak RSS (VmHWM)")
    peaks = [peak_rss_mib([EXE, "score", str(single_model), str(path), "--out", str(tmp_path / "o.csv"), "--quiet"])
             for path in (small, big)]
    assert peaks[1] <= 1.2 * peaks[0], f"peak RSS {peaks[0]:.0f} MiB -> {peaks[1]:.0f} MiB"


# -- signals -----------------------------------------------------------------------------------
# The child gets SIGINT, SIGTERM and SIGHUP at their defaults (or ignored, as nohup does) whatever
# this test process inherited (conftest's SIGNAL_SHIM), then execs the real entry point.


@pytest.fixture(scope="module")
def big_table(table: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cardio repeated to 300k rows (62 MB): several seconds of scoring, time to stop it midway."""
    header, *body = table.read_text().splitlines(keepends=True)
    path = tmp_path_factory.mktemp("big") / "big.csv"
    path.write_text(header + "".join(body) * 164)
    return path


def start_scoring(model: Path, data: Path, out: Path, ignored: tuple[int, ...] = ()) -> subprocess.Popen[str]:
    """`anomaly-vae score` started, and returned once it has written part of its output."""
    ignore = ",".join(str(int(s)) for s in ignored)
    proc = subprocess.Popen([sys.executable, "-c", SIGNAL_SHIM, ignore, EXE, "score", str(model), str(data),
                             "--out", str(out), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p.stat().st_size > 0 for p in out.parent.glob(f".{out.name}.*.part")):
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"the job ended (exit {proc.returncode}) before it could be stopped midway: {err}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            pytest.fail("no partial output after 120 s")
        time.sleep(0.02)
    return proc


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)],
                         ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_sigterm_removes_the_part_file_and_exits_128_plus_signum(
        big_table: Path, table_model: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path,
        signum: int, code: int) -> None:
    """SIGTERM (timeout, systemd, Kubernetes, Airflow) and SIGHUP stop a job as Ctrl-C does: no
    .part left behind, no output that looks whole, exit 128 + the signal's number."""
    out = tmp_path / "scores.csv"
    proc = start_scoring(table_model[0], big_table, out)
    proc.send_signal(signum)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"still running 60 s after {signal.Signals(signum).name}")
    assert proc.returncode == code, err
    assert f"anomaly-vae: interrupted by {signal.Signals(signum).name}" in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # neither the .part nor an output


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")
def test_a_signal_ignored_at_start_stays_ignored(big_table: Path, single_model: Path, tmp_path: Path) -> None:
    """`nohup anomaly-vae score ...` must survive the end of the session."""
    out = tmp_path / "scores.csv"
    proc = start_scoring(single_model, big_table, out, ignored=(signal.SIGHUP,))
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    with out.open() as got, big_table.open() as given:
        assert sum(1 for _ in got) == sum(1 for _ in given)  # a header and every row
    assert [p.name for p in tmp_path.iterdir()] == ["scores.csv"]


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")
def test_a_second_signal_during_cleanup_exits_at_once_without_part_files(tmp_path: Path) -> None:
    """The first signal's cleanup may wait (a read that does not return): a second one must not."""
    script = textwrap.dedent("""
        import os, signal, sys, time
        from anomaly_vae.cli import _stop_signals
        from anomaly_vae.io import ResultWriter
        with _stop_signals():
            writer = ResultWriter(sys.argv[1])  # its .part exists now
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)
            except KeyboardInterrupt:  # the cleanup, stuck
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(30)
        sys.exit(0)
    """)
    r = subprocess.run([sys.executable, "-c", SIGNAL_SHIM, "", sys.executable, "-c", script, str(tmp_path / "o.csv")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 130, r.stderr
    assert "SIGINT again: exiting now" in r.stderr
    assert list(tmp_path.iterdir()) == []


# -- files that are not regular files ----------------------------------------------------------
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_fifo_in_an_image_folder_is_an_error_row_not_a_hang(image_model: Path, fashion_sample: tuple[np.ndarray, np.ndarray],
                                                           tmp_path: Path) -> None:
    images, labels = fashion_sample
    folder = tmp_path / "incoming"
    folder.mkdir()
    for k, i in enumerate(np.flatnonzero(labels == 0)[:2]):
        PIL.fromarray(images[i]).save(folder / f"a{k}.png")
    os.mkfifo(folder / "x.png")  # nobody ever writes to it
    out = tmp_path / "scores.csv"
    try:
        r = subprocess.run([EXE, "score", str(image_model), str(folder), "--out", str(out), "--quiet"],
                           capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the job hung on the FIFO")
    assert r.returncode == 3, r.stderr  # done, one row with an error
    res = pd.read_csv(out, keep_default_na=False, **EXACT_FLOATS)
    assert res["path"].tolist() == ["a0.png", "a1.png", "x.png"]
    assert res["error"].tolist()[:2] == ["", ""] and res["score"].tolist()[2] == ""
    assert res["error"][2].endswith("x.png: not a regular file but a named pipe (FIFO); not opened")
    assert "rows with errors     1" in r.stdout


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_fifo_as_the_input_file_is_refused_not_waited_on(table_model: tuple[Path, subprocess.CompletedProcess[str]],
                                                         tmp_path: Path) -> None:
    fifo = tmp_path / "in.csv"
    os.mkfifo(fifo)
    try:
        r = subprocess.run([EXE, "score", str(table_model[0]), str(fifo), "--out", str(tmp_path / "o.csv"), "--quiet"],
                           capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the job waited for a writer on the FIFO")
    assert r.returncode == 1
    assert "in.csv: not a regular file but a named pipe (FIFO); not opened" in r.stderr


def test_train_a_pair_with_its_own_layers(table: Path, tmp_path: Path, cli_here) -> None:
    small = tmp_path / "small.csv"
    pd.read_csv(table, **EXACT_FLOATS).iloc[:300].to_csv(small, index=False)
    out = tmp_path / "own"
    r = cli_here("train", small, "--out", out, "--label-column", "label", "--normal-label", "normal", "--id-column",
                 "id", "--epochs", "2", "--pair", "--pair-hidden-sizes", "24,12", "--alpha", "0.05", "--quiet")
    assert r.returncode == 0, r.stderr
    card = json.loads((out / "model.json").read_text())
    assert card["format_version"] == 5 and card["architecture"]["pair"]["hidden"] == [24, 12]
    r = cli_here("info", out)
    assert "a pair: a second network of layers [24, 12] with the aggregate prior" in r.stdout, r.stdout
    r = cli_here("train", small, "--out", tmp_path / "x", "--no-pair", "--pair-hidden-sizes", "24,12")
    assert r.returncode == 2 and "--pair-hidden-sizes is the long network of a pair: not with --no-pair" in r.stderr
    for flags in (["--pair", "--pair-hidden-sizes", "24;12"], ["--pair", "--pair-hidden-sizes", "0,5"],
                  ["--pair", "--pair-hidden-sizes", ""], ["--hidden-sizes", "4097"], ["--hidden-sizes", "0"]):
        r = cli_here("train", small, "--out", tmp_path / "x", *flags)
        assert r.returncode == 2 and f"{flags[-2]} takes 1 to 16 layer widths (integers in 1..4096)" in r.stderr, flags
    r = cli_here("train", small, "--out", tmp_path / "x", "--pair-hidden-sizes", "")
    assert r.returncode == 2 and "--pair-hidden-sizes takes 1 to 16 layer widths" in r.stderr
    # a flag conflict: a usage error, not exit 1
    r = cli_here("train", small, "--out", tmp_path / "x", "--checkpoint-dir", tmp_path / "ck", "--pair-hidden-sizes", "same")
    assert r.returncode == 2 and "the one-run pair (--pair-hidden-sizes same) is not checkpointed" in r.stderr
    assert not (tmp_path / "x").exists()


def test_train_a_one_run_pair_and_info_shows_it(table: Path, tmp_path: Path) -> None:
    small = tmp_path / "small.csv"
    pd.read_csv(table, **EXACT_FLOATS).iloc[:400].to_csv(small, index=False)
    out = tmp_path / "pair"
    r = run("train", small, "--out", out, "--label-column", "label", "--normal-label", "normal", "--id-column", "id",
            "--epochs", "2", "--pair", "--pair-hidden-sizes", "same", "--alpha", "0.05", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "trained dense VAE pair on" in r.stdout and re.search(r"epochs +\d+ \(", r.stdout), r.stdout  # one run
    card = json.loads((out / "model.json").read_text())
    assert card["format_version"] == 4 and card["params"]["pair"] is True and "pair_hidden_sizes" not in card["params"]
    r = run("info", out)
    assert r.returncode == 0 and "a pair: a second network with the aggregate prior of" in r.stdout, r.stdout
    r = run("score", out, small, "--out", tmp_path / "s.csv", "--id-column", "id")
    assert r.returncode == 0, r.stderr
    assert len(pd.read_csv(tmp_path / "s.csv", **EXACT_FLOATS)) == 400
