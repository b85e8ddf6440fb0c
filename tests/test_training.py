"""The fit loop (``anomaly_vae.training``) through the estimator: history, early stopping,
divergence, objectives, progress output and checkpoints that resume exactly."""

import os

import numpy as np
import pytest
import torch

from anomaly_vae import InputError, TrainingDivergedError, VAEAnomalyDetector
from anomaly_vae.training import TrainConfig

FAST = dict(epochs=30, random_state=0)


def test_history_and_early_stopping(cancer):
    det = VAEAnomalyDetector(epochs=200, patience=3, random_state=0, pair=False).fit(cancer[0])
    assert len(det.history_) < 200
    assert {"loss", "recon", "kl", "val_loss", "log_px", "log_pz", "log_qz"} <= set(det.history_[0])


def test_a_pairs_first_network_stops_early_and_its_long_one_trains_to_its_end(cancer):
    """The long run is never stopped early (quality-study.md section 21: a patience in epochs was a few
    dozen updates on a small table): it runs all of PAIR_UPDATES x epochs / 100 updates."""
    from anomaly_vae.detector import PAIR_UPDATES

    # 120 rows: about 60 to train on, one update an epoch, where the old patience of 30 epochs stopped the
    # long run after 136 of its 300 epochs
    det = VAEAnomalyDetector(epochs=10, patience=2, alpha=0.05, random_state=0).fit(cancer[0].iloc[:120])
    long_epochs = -(-PAIR_UPDATES * 10 // (100 * -(-det.fit_info_["n_train"] // 128)))  # 128: the batch size
    assert det.fit_info_["epochs_run_first"] < 10  # patience 2 stopped the first run
    assert det.fit_info_["epochs_run"] == len(det.history_) == long_epochs > 10


def test_divergence_is_a_clear_error(cancer):
    X = cancer[0].to_numpy() * 1e30  # standardised away...
    X[:, 0] = np.linspace(-1e38, 3e38, len(X))  # ...but a column so wide it overflows float32
    with pytest.raises((TrainingDivergedError, InputError)):
        VAEAnomalyDetector(epochs=2, random_state=0, learning_rate=1e3).fit(X)


def test_a_run_that_settles_far_above_where_it_started_is_divergence(cancer):
    """With the marginal floor (a table's default) a too-large step no longer overflows: the
    likelihood stays bounded while the KL grows, and the run settled at about 13,600 nats a sample
    (an untrained network: 41) with a finite loss, giving a model that flags nothing useful."""
    with pytest.raises(TrainingDivergedError, match=r"its best validation loss, 1\.\d+e\+04 nats a sample, is far "
                                                    r"above the untrained network's \(\d+\.\d+\)"):
        VAEAnomalyDetector(epochs=10, random_state=0, alpha=0.05, learning_rate=30).fit(cancer[0])


def test_a_checkpoint_of_another_network_names_what_differs(cancer, tmp_path):
    """A checkpoint written with marginal_floor=0 (the tables' default before session 12) does not
    go on under today's "auto" floor: the message says which field of the network differs."""
    ckpt = str(tmp_path / "ck")
    VAEAnomalyDetector(epochs=2, random_state=0, alpha=0.1, marginal_floor=0.0, checkpoint_dir=ckpt).fit(cancer[0])
    with pytest.raises(ValueError, match=r"the network: marginal_floor absent there, 0\.01 here"):
        VAEAnomalyDetector(epochs=4, random_state=0, alpha=0.1, checkpoint_dir=ckpt).fit(cancer[0])


def test_huge_learning_rate_diverges_with_clear_error(cancer):
    with pytest.raises(TrainingDivergedError, match="training diverged at epoch"):
        VAEAnomalyDetector(epochs=20, random_state=0, learning_rate=1e6, grad_clip=0.0).fit(cancer[0])


def test_verbose_zero_is_silent(cancer, capsys):
    VAEAnomalyDetector(epochs=2, random_state=0, verbose=0).fit(cancer[0])
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_verbose_one_shows_progress_with_loss_terms(cancer, capsys):
    VAEAnomalyDetector(epochs=2, random_state=0, verbose=1).fit(cancer[0])
    err = capsys.readouterr().err
    assert "training" in err and "recon=" in err and "kl=" in err


def test_mmd_objective_and_mc_kl_train(cancer):
    for kw in ({"objective": "mmd"}, {"kl_estimator": "mc"}, {"kl_warmup_epochs": 2}, {"likelihood": "gaussian-fixed"}):
        det = VAEAnomalyDetector(epochs=4, random_state=0, **kw).fit(cancer[0])
        assert np.isfinite(det.anomaly_score(cancer[1])).all()


def test_checkpoints_resume_to_exactly_the_uninterrupted_run(cancer, tmp_path):
    import json

    X = cancer[0]
    settings = dict(patience=100, random_state=0, alpha=0.1, pair=False)  # one network (a pair: the tests at the end)
    full = VAEAnomalyDetector(epochs=6, **settings).fit(X)
    ckpt = tmp_path / "ckpt"
    VAEAnomalyDetector(epochs=3, checkpoint_dir=str(ckpt), **settings).fit(X)  # "interrupted" after 3 epochs
    assert json.loads((ckpt / "checkpoint.json").read_text())["epoch"] == 3
    resumed = VAEAnomalyDetector(epochs=6, checkpoint_dir=str(ckpt), **settings).fit(X)
    assert [h["epoch"] for h in resumed.history_] == [1, 2, 3, 4, 5, 6]
    assert resumed.history_ == full.history_
    for (name, a), b in zip(full.model_.state_dict().items(), resumed.model_.state_dict().values()):
        assert torch.equal(a, b), name
    assert np.array_equal(full.anomaly_score(X), resumed.anomaly_score(X))
    with pytest.raises(ValueError, match="was written for other settings than this run's"):
        VAEAnomalyDetector(epochs=6, checkpoint_dir=str(ckpt), learning_rate=0.01, **settings).fit(X)
    # fewer epochs than the checkpoint ran returned the 6-epoch model as a 4-epoch fit's
    with pytest.raises(ValueError, match=r"is of epoch 6, past this run's 4 epochs: .* Give epochs >= 6"):
        VAEAnomalyDetector(epochs=4, checkpoint_dir=str(ckpt), **settings).fit(X)
    assert np.array_equal(full.anomaly_score(X),  # and the checkpoint is left as it was
                          VAEAnomalyDetector(epochs=6, checkpoint_dir=str(ckpt), **settings).fit(X).anomaly_score(X))
    with pytest.raises(ValueError, match="was written for other data than this run's"):
        VAEAnomalyDetector(epochs=6, checkpoint_dir=str(ckpt), **settings).fit(X.iloc[::-1])


def test_cosine_schedule_decays_the_step_and_resumes_exactly(cancer, tmp_path, monkeypatch):
    import json
    import math

    X = cancer[0]
    settings = dict(patience=100, random_state=0, alpha=0.1, lr_schedule="cosine", learning_rate=2e-3, pair=False)
    full = VAEAnomalyDetector(epochs=6, **settings).fit(X)
    expected = [2e-3 * 0.5 * (1 + math.cos(math.pi * e / 6)) for e in range(6)]
    assert [h["lr"] for h in full.history_] == pytest.approx(expected, rel=1e-12)
    assert full.history_[-1]["lr"] > 0  # the last epoch still moves
    constant = VAEAnomalyDetector(epochs=6, **{**settings, "lr_schedule": "constant"}).fit(X)
    assert [h["lr"] for h in constant.history_] == [2e-3] * 6
    assert not np.array_equal(full.anomaly_score(X), constant.anomaly_score(X))
    # a run killed after epoch 3 of 6 (its checkpoint written) goes on along the same schedule to
    # the uninterrupted run's weights
    import anomaly_vae.training as training

    save = training._save_checkpoint

    def save_then_die(path, epoch, *args):
        save(path, epoch, *args)
        if epoch == 3:
            raise KeyboardInterrupt

    ckpt = tmp_path / "ckpt"
    monkeypatch.setattr(training, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        VAEAnomalyDetector(epochs=6, checkpoint_dir=str(ckpt), **settings).fit(X)
    monkeypatch.undo()
    assert json.loads((ckpt / "checkpoint.json").read_text())["epoch"] == 3
    resumed = VAEAnomalyDetector(epochs=6, checkpoint_dir=str(ckpt), **settings).fit(X)
    assert resumed.history_ == full.history_
    assert np.array_equal(full.anomaly_score(X), resumed.anomaly_score(X))
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        VAEAnomalyDetector(epochs=2, lr_schedule="linear", random_state=0).fit(X)


@pytest.mark.parametrize("name,value", [("objective", "elbo"), ("kl_estimator", "analytic"), ("lr_schedule", "cosine")])
def test_a_string_setting_must_be_a_string_not_an_array_equal_to_one(name, value):
    # np.array("elbo") == "elbo" is true, but such a value is not JSON: it would fail writing a checkpoint
    TrainConfig(**{name: value}).check()
    with pytest.raises(ValueError, match=f"{name} must be"):
        TrainConfig(**{name: np.array(value)}).check()
    with pytest.raises(ValueError, match=f"{name} must be"):
        VAEAnomalyDetector(**{name: np.array(value)}).fit(np.random.RandomState(0).normal(size=(50, 3)))


def test_a_fit_without_a_seed_resumes_with_its_checkpoints_seed(cancer, tmp_path):
    """A seed drawn anew split the rows otherwise: every resume was refused as "other data". A
    finished run's checkpoint is refused instead (taking its seed would give its model again)."""
    X, ckpt = cancer[0], tmp_path / "ckpt"
    settings = dict(patience=100, alpha=0.1, checkpoint_dir=str(ckpt), pair=False)  # a pair's: the test below
    first = VAEAnomalyDetector(epochs=2, **settings).fit(X)
    seed = first.fit_info_["seed"]
    resumed = VAEAnomalyDetector(epochs=4, **settings).fit(X)  # "interrupted" after 2 of 4 epochs
    assert resumed.fit_info_["seed"] == seed
    full = VAEAnomalyDetector(epochs=4, patience=100, alpha=0.1, random_state=seed, pair=False).fit(X)
    assert resumed.history_ == full.history_
    assert np.array_equal(full.anomaly_score(X), resumed.anomaly_score(X))
    with pytest.raises(ValueError, match=f"is of a finished run \\(seed {seed}, 4 epochs\\): a fit with random_state=None "
                                         "would not start a new one"):
        VAEAnomalyDetector(epochs=4, **settings).fit(X)
    other = (seed + 1) % (2**31 - 1)
    with pytest.raises(ValueError, match=f"written by a run with seed {seed}, and this run's seed is {other}: fit with "
                                         f"that seed \\(random_state={seed}; the command line's --seed {seed}\\)"):
        VAEAnomalyDetector(epochs=6, random_state=other, **settings).fit(X)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_checkpoint_that_is_not_a_file_or_not_json_is_no_hang_and_no_traceback(cancer, tmp_path):
    X = cancer[0]
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "checkpoint.json")  # reading it would wait for a writer forever
    (fifo / "pair").mkdir()
    os.mkfifo(fifo / "pair" / "checkpoint.json")  # the default pair's long run's
    det = VAEAnomalyDetector(epochs=1, alpha=0.1, checkpoint_dir=str(fifo)).fit(X)
    assert det.pair_ and det.fit_info_["epochs_run_first"] == 1
    for text in ("[" * 100000, "not json", '{"seed": "abc"}', "[1, 2]"):
        bad = tmp_path / f"bad{len(text)}"
        bad.mkdir()
        (bad / "checkpoint.json").write_text(text)
        with pytest.raises(ValueError, match="checkpoint.json is not a checkpoint"):
            VAEAnomalyDetector(epochs=1, alpha=0.1, checkpoint_dir=str(bad)).fit(X)


def test_a_cosine_checkpoint_is_refused_for_another_number_of_epochs(cancer, tmp_path):
    X = cancer[0]
    settings = dict(patience=100, random_state=0, alpha=0.1, lr_schedule="cosine")
    ckpt = tmp_path / "ckpt"
    VAEAnomalyDetector(epochs=2, checkpoint_dir=str(ckpt), **settings).fit(X)
    # the schedule spans ``epochs``: going on to 4 would not be the run a 4-epoch fit makes
    with pytest.raises(ValueError, match=r"other settings than this run's \(epochs\); a cosine schedule spans epochs"):
        VAEAnomalyDetector(epochs=4, checkpoint_dir=str(ckpt), **settings).fit(X)
    with pytest.raises(ValueError, match=r"\(epochs, lr_schedule\)"):
        VAEAnomalyDetector(epochs=4, checkpoint_dir=str(ckpt), **{**settings, "lr_schedule": "constant"}).fit(X)


def test_a_checkpoint_written_before_the_schedule_option_resumes(cancer, tmp_path):
    """Checkpoints of earlier versions have no lr_schedule in their settings and no lr in their
    history: a constant-step run goes on from them, and the model it ends with saves and loads."""
    import json

    from anomaly_vae import load_detector

    X = cancer[0]
    settings = dict(patience=100, random_state=0, alpha=0.1, pair=False)  # one network (a pair: the tests at the end)
    ckpt = tmp_path / "ckpt"
    VAEAnomalyDetector(epochs=2, checkpoint_dir=str(ckpt), **settings).fit(X)
    meta = json.loads((ckpt / "checkpoint.json").read_text())
    assert "lr_schedule" not in meta["fingerprint"]["settings"]
    for row in meta["history"]:
        del row["lr"]
    (ckpt / "checkpoint.json").write_text(json.dumps(meta))
    resumed = VAEAnomalyDetector(epochs=4, checkpoint_dir=str(ckpt), **settings).fit(X)
    full = VAEAnomalyDetector(epochs=4, **settings).fit(X)
    assert resumed.history_ == full.history_
    assert np.array_equal(resumed.anomaly_score(X), full.anomaly_score(X))
    resumed.save(str(tmp_path / "model"))
    assert np.array_equal(load_detector(str(tmp_path / "model")).anomaly_score(X), full.anomaly_score(X))


def test_a_snapshot_rule_ends_with_the_weights_of_the_shorter_run(cancer):
    """train(long, snapshot=(short, epochs, patience)): ``short`` gets exactly the weights a run with
    those settings ends with, ``long`` those of the run with its own: one run, two rules."""
    from anomaly_vae import DenseVAE
    from anomaly_vae.training import train

    x = torch.from_numpy(((cancer[0] - cancer[0].mean()) / cancer[0].std()).to_numpy(np.float32, copy=True))
    x_train, x_val = x[:220], x[220:]

    def fresh() -> DenseVAE:
        torch.manual_seed(0)
        return DenseVAE(x.shape[1], latent_dim=4)

    def run(epochs: int, patience: int, warmup: int) -> DenseVAE:
        net = fresh()
        train(net, x_train, x_val, TrainConfig(epochs=epochs, patience=patience, kl_warmup_epochs=warmup),
              torch.Generator().manual_seed(1))
        return net

    # the snapshot's run shorter, then longer; then a snapshot whose epochs are all KL warm-up (no comparison:
    # it ends with the weights of its last epoch, as a run of its own would)
    for long_rule, short_rule, warmup in (((60, 30), (8, 2), 0), ((5, 30), (40, 3), 0), ((30, 5), (4, 2), 6)):
        long, short = fresh(), fresh()
        history = train(long, x_train, x_val, TrainConfig(epochs=long_rule[0], patience=long_rule[1],
                                                          kl_warmup_epochs=warmup),
                        torch.Generator().manual_seed(1), snapshot=(short, *short_rule))
        assert len(history) >= min(long_rule[0], short_rule[0])
        for got, expected in ((long, run(*long_rule, warmup)), (short, run(*short_rule, warmup))):
            assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), expected.state_dict().values()))


def test_a_snapshot_rule_is_refused_where_the_run_is_not_the_shorter_runs_prefix(cancer, tmp_path):
    from anomaly_vae import DenseVAE
    from anomaly_vae.training import train

    x = torch.zeros(20, 3)
    for cfg, kw in ((TrainConfig(epochs=3, lr_schedule="cosine"), {}),
                    (TrainConfig(epochs=3), {"checkpoint_dir": tmp_path})):
        with pytest.raises(ValueError, match="a snapshot rule needs the constant step and no checkpoint_dir"):
            train(DenseVAE(3), x, None, cfg, torch.Generator(), snapshot=(DenseVAE(3), 2, 1), **kw)
    with pytest.raises(ValueError, match="epochs and patience >= 1"):
        train(DenseVAE(3), x, None, TrainConfig(epochs=3), torch.Generator(), snapshot=(DenseVAE(3), 0, 1))


def _interrupt_after(monkeypatch, folder_name: str, saves: int) -> None:
    """KeyboardInterrupt once the run checkpointing in a folder named ``folder_name`` has saved ``saves`` times."""
    from anomaly_vae import training

    real, count = training._save_checkpoint, {"n": 0}

    def save(path, *args, **kw):
        real(path, *args, **kw)
        if path.name == folder_name:
            count["n"] += 1
            if count["n"] == saves:
                raise KeyboardInterrupt

    monkeypatch.setattr(training, "_save_checkpoint", save)


@pytest.mark.parametrize("where", ["first", "long"])
def test_the_default_pair_checkpoints_both_runs_and_resumes_to_the_uninterrupted_pair(cancer, tmp_path, monkeypatch,
                                                                                       where):
    """Until session 13 a checkpoint_dir gave a table one network instead of the default pair: the pair's
    first run is checkpointed where one network's is, its long run in checkpoint_dir/pair."""
    X, ckpt = cancer[0], tmp_path / "ckpt"
    settings = dict(epochs=4, patience=100, random_state=0, alpha=0.1)  # the default: a pair of two runs
    full = VAEAnomalyDetector(**settings).fit(X)
    assert full.pair_ and full.pair_hidden_sizes_ == (256, 128)
    with monkeypatch.context() as m:
        _interrupt_after(m, "ckpt" if where == "first" else "pair", 2)
        with pytest.raises(KeyboardInterrupt):
            VAEAnomalyDetector(checkpoint_dir=str(ckpt), **settings).fit(X)
    assert (ckpt / "checkpoint.json").is_file() and (ckpt / "pair" / "checkpoint.json").is_file() == (where == "long")
    resumed = VAEAnomalyDetector(checkpoint_dir=str(ckpt), **settings).fit(X)
    assert resumed.pair_ and resumed.history_ == full.history_
    assert resumed.fit_info_["epochs_run_first"] == full.fit_info_["epochs_run_first"]
    assert np.array_equal(resumed.anomaly_score(X), full.anomaly_score(X))


def test_a_pair_trained_on_for_more_epochs_starts_its_long_run_again(cancer, tmp_path):
    """The long run starts from the random draws the first run leaves: after the first run trained on
    (more epochs), the long run's checkpoint is of another start and is not gone on with."""
    X, ckpt = cancer[0], tmp_path / "ckpt"
    settings = dict(patience=100, random_state=0, alpha=0.1, checkpoint_dir=str(ckpt))
    VAEAnomalyDetector(epochs=2, **settings).fit(X)
    longer = VAEAnomalyDetector(epochs=4, **settings).fit(X)
    full = VAEAnomalyDetector(epochs=4, patience=100, random_state=0, alpha=0.1).fit(X)
    assert np.array_equal(longer.anomaly_score(X), full.anomaly_score(X))
    # random_state=None: an unfinished long run goes on with the checkpoint's seed; a finished pair is refused
    settings.pop("random_state")
    with pytest.raises(ValueError, match="is of a finished run \\(seed 0, .*: a fit with random_state=None"):
        VAEAnomalyDetector(epochs=4, **settings).fit(X)
    (ckpt / "pair" / "checkpoint.json").unlink()
    again = VAEAnomalyDetector(epochs=4, **settings).fit(X)
    assert again.fit_info_["seed"] == 0 and np.array_equal(again.anomaly_score(X), full.anomaly_score(X))


def test_a_long_run_checkpoint_of_another_end_of_the_first_run_is_not_gone_on_with(cancer, tmp_path):
    """A hostile review: one network (pair=False) trained the first run's checkpoint on from 3 to 5
    epochs, and the pair fitted next went on with a long run that had started after epoch 3."""
    X, ckpt = cancer[0], tmp_path / "ckpt"
    settings = dict(patience=100, random_state=0, alpha=0.1, checkpoint_dir=str(ckpt))
    VAEAnomalyDetector(epochs=3, **settings).fit(X)
    VAEAnomalyDetector(epochs=5, pair=False, **settings).fit(X)
    got = VAEAnomalyDetector(epochs=5, **settings).fit(X)
    full = VAEAnomalyDetector(epochs=5, patience=100, random_state=0, alpha=0.1).fit(X)
    assert np.array_equal(got.anomaly_score(X), full.anomaly_score(X))


def test_a_long_run_checkpoint_of_the_early_stopped_rule_is_started_again(cancer, tmp_path):
    """Before session 14 the long run stopped after 30 epochs without improvement, and its checkpoint
    says so (patience 30) and has a start mark without the rule: it is neither refused for a patience
    the user never set nor gone on with to a model of neither rule; the long run starts again."""
    import json

    X, ckpt = cancer[0], tmp_path / "ckpt"
    settings = dict(epochs=3, patience=100, random_state=0, alpha=0.1)
    VAEAnomalyDetector(checkpoint_dir=str(ckpt), **settings).fit(X)
    meta = json.loads((ckpt / "pair" / "checkpoint.json").read_text())
    meta["fingerprint"]["settings"]["patience"] = 30  # as the old rule wrote it
    (ckpt / "pair" / "checkpoint.json").write_text(json.dumps(meta))
    mark = ckpt / "pair" / "start"
    mark.write_text(mark.read_text().rsplit("-", 1)[0])  # "{epochs}-{hash}", the old mark
    got = VAEAnomalyDetector(checkpoint_dir=str(ckpt), **settings).fit(X)
    assert np.array_equal(got.anomaly_score(X), VAEAnomalyDetector(**settings).fit(X).anomaly_score(X))
    assert mark.read_text().endswith("-to-end")
    with pytest.raises(ValueError, match="finished"):  # and now it is finished: random_state=None refuses it
        VAEAnomalyDetector(checkpoint_dir=str(ckpt), **{**settings, "random_state": None}).fit(X)
    mark.unlink()
    mark.mkdir()  # a folder where the mark should be: one line, and the long run's checkpoint is left as it was
    with pytest.raises(ValueError, match=r"pair/start is a folder: it should be the long run's start mark"):
        VAEAnomalyDetector(checkpoint_dir=str(ckpt), **settings).fit(X)
    assert (ckpt / "pair" / "checkpoint.json").is_file()


def test_a_long_run_checkpoint_past_this_fits_epochs_is_refused_in_the_callers_terms(cancer, tmp_path):
    """A hostile review: the first run stopped early, so a fit with fewer epochs (still more than the
    first run's) kept the long run's checkpoint, and ``train`` refused it in the long run's epochs
    ("past this run's 27 epochs ... Give epochs >= 120"), numbers the caller never gave. Now the
    refusal names ``epochs`` and ``checkpoint_dir`` and the epochs that go on with it."""
    import re

    X, ckpt = cancer[0].iloc[:120], tmp_path / "ckpt"  # one update an epoch: the long run is 300 epochs at epochs=10
    settings = dict(patience=2, alpha=0.05, random_state=0, checkpoint_dir=str(ckpt))
    full = VAEAnomalyDetector(epochs=10, **settings).fit(X)
    first = full.fit_info_["epochs_run_first"]
    assert first < 10 and full.fit_info_["epochs_run"] == 300  # patience 2 stopped the first run
    with pytest.raises(ValueError, match=re.escape(f"the checkpoint in {ckpt} is of a pair fitted with more epochs: its "
                                                   f"long run (in {ckpt / 'pair'}) is at epoch 300, past the {30 * first}"
                                                   f" that epochs={first} gives it. Give epochs >= 10 to go on with it")):
        VAEAnomalyDetector(epochs=first, **settings).fit(X)
    again = VAEAnomalyDetector(epochs=10, **settings).fit(X)  # the refusal changed nothing: it goes on as said
    assert again.history_ == full.history_ and np.array_equal(again.anomaly_score(X), full.anomaly_score(X))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_torn_or_garbled_checkpoint_is_a_one_line_error_not_a_hang_or_another_model(cancer, tmp_path):
    import shutil

    X = cancer[0]
    settings = dict(patience=100, random_state=0, alpha=0.1, pair=False)
    a, b = tmp_path / "a", tmp_path / "b"
    VAEAnomalyDetector(epochs=1, checkpoint_dir=str(a), **settings).fit(X)
    VAEAnomalyDetector(epochs=2, checkpoint_dir=str(b), **settings).fit(X)
    shutil.copy(b / "checkpoint.safetensors", a / "checkpoint.safetensors")  # killed between the two renames
    with pytest.raises(ValueError, match=r"cannot be resumed \(ValueError: its tensors are of epoch 2 and checkpoint"
                                         r"\.json of epoch 1"):
        VAEAnomalyDetector(epochs=3, checkpoint_dir=str(a), **settings).fit(X)
    (a / "checkpoint.safetensors").unlink()
    os.mkfifo(a / "checkpoint.safetensors")  # reading it would wait for a writer forever
    with pytest.raises(ValueError, match="checkpoint.safetensors is missing or not a regular file"):
        VAEAnomalyDetector(epochs=3, checkpoint_dir=str(a), **settings).fit(X)
    (a / "checkpoint.safetensors").unlink()
    (a / "checkpoint.safetensors").write_bytes((b / "checkpoint.safetensors").read_bytes()[:100])  # truncated
    import json

    meta = json.loads((b / "checkpoint.json").read_text())
    for broken in ({k: v for k, v in meta.items() if k != "history"}, {**meta, "epoch": "x"}):
        (a / "checkpoint.json").write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=r"cannot be resumed \(\w+: .*\); remove it, or give another checkpoint_dir"):
            VAEAnomalyDetector(epochs=3, checkpoint_dir=str(a), **settings).fit(X)
