import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import time
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sklearn.base import clone

import anomaly_vae
from anomaly_vae import ArtifactError, VAEAnomalyDetector, load_detector, read_model_card
from anomaly_vae import artifact, detector, weights
from anomaly_vae.card import PARAMS, CardProblem
from anomaly_vae.exceptions import AnomalyVAEError, ModelCardError

from .conftest import SINGLE

PACKAGE = Path(anomaly_vae.__file__).parent
EXE = shutil.which("anomaly-vae", path=str(Path(sys.executable).parent)) or "anomaly-vae"


@pytest.fixture(scope="module")
def fitted(cardio):
    df = cardio[cardio.label == "normal"].drop(columns="label").copy()
    df["shift"] = np.where(np.arange(len(df)) % 3 == 0, "night", "day")
    return VAEAnomalyDetector(epochs=3, random_state=0, **SINGLE).fit(df), df  # a format-2 card


@pytest.fixture(scope="module")
def saved(fitted, tmp_path_factory) -> Path:
    """The table model's directory, written once; tests change copies of it (see ``copy_of``)."""
    out = tmp_path_factory.mktemp("saved") / "m"
    fitted[0].save(out)
    return out


@pytest.fixture(scope="module")
def image_saved(fashion_sample, tmp_path_factory) -> Path:
    images, labels = fashion_sample
    out = tmp_path_factory.mktemp("image") / "img"
    VAEAnomalyDetector(epochs=1, random_state=0, alpha=0.2).fit(images[labels == 3]).save(out)
    return out


def copy_of(src: Path, tmp_path: Path) -> Path:
    d = tmp_path / "model"
    shutil.copytree(src, d)
    return d


def read_card(d: Path) -> dict:
    return json.loads((d / "model.json").read_text())


def write_card(d: Path, card: dict, rehash: bool = True) -> None:
    """Write ``card``; with ``rehash`` its card_sha256 is recomputed, as an author who writes a bad
    card on purpose (or a buggy writer) would: the hash cannot catch it, the checks must."""
    if rehash:
        body = {k: v for k, v in card.items() if k != "card_sha256"}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        card["card_sha256"] = hashlib.sha256(canonical.encode()).hexdigest()
    (d / "model.json").write_text(json.dumps(card, indent=2))


def edit_card(d: Path, change, rehash: bool = True) -> None:
    card = read_card(d)
    change(card)
    write_card(d, card, rehash)


def write_weights(d: Path, data: bytes) -> None:
    """Replace model.safetensors and record its sha256 (and the card's) as a consistent writer would."""
    (d / "model.safetensors").write_bytes(data)
    card = read_card(d)
    card["weights"]["sha256"] = hashlib.sha256(data).hexdigest()
    write_card(d, card)


def safetensors_parts(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def safetensors_bytes(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def set_at(path: str, value):
    """A change that sets the card field at ``path`` (``a.b[0].c``) to ``value``."""
    keys = [int(k) if k.isdigit() else k for k in re.findall(r"[^.\[\]]+", path)]

    def change(card):
        obj = card
        for k in keys[:-1]:
            obj = obj[k]
        obj[keys[-1]] = value
    return change


def delete_at(path: str):
    keys = [int(k) if k.isdigit() else k for k in re.findall(r"[^.\[\]]+", path)]

    def change(card):
        obj = card
        for k in keys[:-1]:
            obj = obj[k]
        del obj[keys[-1]]
    return change


# -- saving and loading a good model ------------------------------------------------------------
def test_round_trip_gives_identical_scores(fitted, tmp_path):
    det, df = fitted
    det.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "model.safetensors"]
    back = load_detector(tmp_path / "m")
    for score in ("elbo", "reconstruction", "iwae"):
        assert np.array_equal(back.anomaly_score(df, score=score), det.anomaly_score(df, score=score))
    assert back.threshold_ == det.threshold_ and back.alpha_ == det.alpha_
    assert np.array_equal(back.predict(df), det.predict(df))
    assert np.array_equal(back.calibration_scores_, det.calibration_scores_)
    back.set_alpha(0.2)  # calibration scores travel with the model
    assert back.threshold_ < det.threshold_


def test_image_model_round_trip(fashion_sample, image_saved):
    images, labels = fashion_sample
    det = VAEAnomalyDetector(epochs=1, random_state=0, alpha=0.2).fit(images[labels == 3])
    assert np.array_equal(load_detector(image_saved).anomaly_score(images[:70]), det.anomaly_score(images[:70]))


def test_model_json_has_the_contract_fields(fitted, saved):
    det, _ = fitted
    card = read_card(saved)
    for key in ("format_version", "package_version", "architecture", "input", "score", "calibration", "training",
                "weights", "card_sha256"):
        assert key in card
    assert card["score"]["units"] == "nats" and card["calibration"]["n"] == len(det.calibration_scores_)
    assert re.fullmatch(r"[0-9a-f]{64}", card["weights"]["sha256"])
    assert card["input"]["preprocessing"]["columns"][-1]["categories"] == ["day", "night", "<other>"]


def test_card_sha256_is_the_digest_of_the_canonical_card(saved):
    """Documented so that other tools can check it: sha256 of the card without card_sha256, keys
    sorted, no whitespace, ASCII."""
    card = read_card(saved)
    body = {k: v for k, v in card.items() if k != "card_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert card["card_sha256"] == hashlib.sha256(text.encode()).hexdigest() == artifact.card_sha256(card)


def test_read_model_card_checks_and_returns_the_card(saved):
    assert read_model_card(saved) == read_card(saved)


def test_every_detector_parameter_has_a_rule():
    """A new constructor parameter needs its rule in card.PARAMS, or models that set it will not load."""
    assert set(PARAMS.fields) == set(VAEAnomalyDetector().get_params())


def test_models_of_every_kind_load(tmp_path):
    """Contamination and best-F1 thresholds, an unusable threshold (Infinity, with its reason), a
    Bernoulli dense model, a dense model of colour images, a conv model with a shared variance."""
    rng = np.random.RandomState(0)
    x = rng.rand(200, 5)
    det = VAEAnomalyDetector(epochs=1, random_state=0, contamination=0.1, hidden_sizes=(16,), latent_dim=3,
                             likelihood="gaussian-fixed", n_threads=2).fit(x)
    det.save(tmp_path / "a")
    assert load_detector(tmp_path / "a").threshold_method_ == "contamination"
    det.set_threshold_best_f1(x, np.arange(200) % 10 == 0)
    det.save(tmp_path / "a")
    assert load_detector(tmp_path / "a").best_f1_ == det.best_f1_
    grey = (rng.rand(200, 8, 8) * 255).astype(np.uint8)
    det = VAEAnomalyDetector(epochs=1, random_state=0, model="dense", likelihood="bernoulli").fit(grey)
    det.set_alpha(1e-4)  # too few calibration scores for it: no usable threshold, and the reason why
    det.save(tmp_path / "b")
    back = load_detector(tmp_path / "b")
    assert back.threshold_ == np.inf and back.calibration_error_ == det.calibration_error_
    images = (rng.rand(30, 12, 10, 3) * 255).astype(np.uint8)
    VAEAnomalyDetector(epochs=1, random_state=0, model="dense", alpha=0.3).fit(images).save(tmp_path / "c")
    assert load_detector(tmp_path / "c").model_.kind == "dense"
    VAEAnomalyDetector(epochs=1, random_state=0, alpha=0.3, conv_channels=(4, 8, 8),
                       likelihood="gaussian-shared").fit(images).save(tmp_path / "d")
    assert load_detector(tmp_path / "d").model_.kind == "conv"


# -- integrity: model.json is covered by a hash ----------------------------------------------------
def test_modified_weights_are_refused(saved, tmp_path):
    d = copy_of(saved, tmp_path)
    w = d / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        load_detector(d)


def test_modified_model_json_is_refused(saved, tmp_path):
    """A hand edit of the threshold (or a flipped bit) in model.json is caught by card_sha256."""
    d = copy_of(saved, tmp_path)
    edit_card(d, set_at("calibration.threshold", 1e9), rehash=False)
    with pytest.raises(ModelCardError, match=r"model\.json: card_sha256: does not match the card.s content: .*modified"):
        load_detector(d)
    with pytest.raises(ModelCardError, match="card_sha256"):
        read_model_card(d)


def test_weights_of_another_model_are_refused(saved, image_saved, tmp_path):
    d = copy_of(saved, tmp_path)
    shutil.copyfile(image_saved / "model.safetensors", d / "model.safetensors")
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        load_detector(d)


def test_reformatted_model_json_still_loads(saved, tmp_path):
    """The hash is over the card's content, not its formatting: re-indenting is not a change."""
    d = copy_of(saved, tmp_path)
    card = read_card(d)
    (d / "model.json").write_text(json.dumps(card, sort_keys=True))
    assert load_detector(d).threshold_ == card["calibration"]["threshold"]


def test_old_model_directory_without_card_hash_still_loads(fitted, saved, tmp_path, caplog):
    det, df = fitted
    d = copy_of(saved, tmp_path)
    edit_card(d, delete_at("card_sha256"), rehash=False)
    with caplog.at_level(logging.WARNING, logger="anomaly_vae.artifact"):
        back = load_detector(d)
    assert "no card_sha256" in caplog.text
    assert np.array_equal(back.anomaly_score(df.iloc[:50]), det.anomaly_score(df.iloc[:50]))


def test_old_model_directory_is_still_checked_in_full(saved, tmp_path):
    d = copy_of(saved, tmp_path)
    card = read_card(d)
    del card["card_sha256"]
    card["params"]["n_threads"] = 1_000_000
    write_card(d, card, rehash=False)
    with pytest.raises(ModelCardError, match="params.n_threads"):
        load_detector(d)


def test_newer_format_is_refused(saved, tmp_path):
    d = copy_of(saved, tmp_path)
    edit_card(d, set_at("format_version", 99))
    with pytest.raises(ArtifactError, match="format 99.*upgrade anomaly-vae"):
        load_detector(d)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(ArtifactError, match="not a model directory"):
        load_detector(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="model.json is missing"):
        load_detector(tmp_path / "empty")


# -- the whole card is checked: one clear error naming the file and the field ----------------------
CARD_VARIANTS = [
    # (id, change to model.json, the field the error must name (regex), what it must say (regex))
    ("missing_key", delete_at("calibration.threshold"), r"calibration\.threshold", "missing"),
    ("missing_section", delete_at("input"), r"input", "missing"),
    ("missing_column_field", delete_at("input.preprocessing.columns[0].std"), r"input\.preprocessing\.columns\[0\]\.std", "missing"),
    ("wrong_type_string", set_at("architecture.latent_dim", "12"), r"architecture\.latent_dim", r'expected an integer .*got "12"'),
    ("wrong_type_float", set_at("architecture.n_features", 24.5), r"architecture\.n_features", "expected an integer"),
    ("wrong_type_list", set_at("architecture.hidden", 64), r"architecture\.hidden", "expected a list"),
    ("wrong_type_bool", set_at("input.preprocessing.columns[0].indicator", 0), r"input\.preprocessing\.columns\[0\]\.indicator", "true, false"),
    ("wrong_type_object", set_at("params", []), r"params", "expected an object"),
    ("negative_size", set_at("architecture.latent_dim", -3), r"architecture\.latent_dim", "1..4096, got -3"),
    ("negative_layer", set_at("architecture.hidden", [-64, 32]), r"architecture\.hidden\[0\]", "got -64"),
    ("zero_features", set_at("architecture.n_features", 0), r"architecture\.n_features", "got 0"),
    ("negative_count", set_at("calibration.n", -1), r"calibration\.n", "got -1"),
    ("threshold_null", set_at("calibration.threshold", None), r"calibration\.threshold", "got null"),
    ("threshold_nan", set_at("calibration.threshold", float("nan")), r"calibration\.threshold", "got NaN"),
    ("alpha_out_of_range", set_at("calibration.alpha", 1.5), r"calibration\.alpha", r"in \(0, 1\)"),
    ("huge_hidden", set_at("architecture.hidden", [15000, 15000]), r"architecture\.hidden\[0\]", "1..4096, got 15000"),
    ("hidden_the_weights_contradict", set_at("architecture.hidden", [4096, 4096]), r"architecture\.hidden\[0\]",
     r"expected 64 to match the weights \(model\.safetensors: model\.encoder\.0\.weight\), got 4096"),
    ("extra_layer", set_at("architecture.hidden", [64, 32, 16]), r"architecture\.hidden", "expected 2 layer sizes"),
    ("huge_n_threads", set_at("params.n_threads", 1_000_000), r"params\.n_threads", "1..1024, got 1000000"),
    ("huge_n_score_samples", set_at("score.n_score_samples", 10**9), r"score\.n_score_samples", "got 1000000000"),
    ("unknown_likelihood", set_at("architecture.likelihood", "poisson"), r"architecture\.likelihood", '"gaussian".*got "poisson"'),
    ("unknown_activation", set_at("architecture.activation", "gelu"), r"architecture\.activation", 'got "gelu"'),
    ("unknown_score", set_at("score.name", "magic"), r"score\.name", 'got "magic"'),
    ("unknown_kind", set_at("architecture.kind", "transformer"), r"architecture\.kind", 'got "transformer"'),
    ("unknown_param", set_at("params.foo", 1), r"params\.foo", "unknown parameter"),
    ("unknown_field", set_at("architecture.dropout", 0.5), r"architecture\.dropout", "unknown field"),
    ("weights_outside_the_directory", set_at("weights.file", "../../secret"), r"weights\.file", '"model.safetensors"'),
    ("zero_std", set_at("input.preprocessing.columns[0].std", 0), r"input\.preprocessing\.columns\[0\]\.std", "> 0, got 0"),
    ("infinite_mean", set_at("input.preprocessing.columns[0].mean", float("inf")), r"input\.preprocessing\.columns\[0\]\.mean", "Infinity"),
    ("no_other_category", set_at("input.preprocessing.columns[21].categories", ["day", "night"]),
     r"input\.preprocessing\.columns\[21\]\.categories", "<other>"),
    ("duplicate_column", set_at("input.preprocessing.columns[1].name", "f00"), r"input\.preprocessing\.columns", "twice"),
    ("width_mismatch", set_at("input.preprocessing.columns[0].indicator", True), r"architecture\.n_features", "expected 25"),
    ("n_features_in_mismatch", set_at("input.n_features_in", 30), r"input\.n_features_in", "expected 22"),
    ("score_kind_mismatch", set_at("params.score_kind", "iwae"), r"score\.name", "params.score_kind"),
    ("history_row", set_at("training.history[0]", "loss"), r"training\.history\[0\]", "expected an object"),
    ("summary_field", set_at("training.summary.n_train", "many"), r"training\.summary\.n_train", "expected an integer"),
    ("key_with_a_newline", set_at("params.bad\nkey", 1), r'params\."bad\\nkey"', "unknown parameter"),
]


@pytest.mark.parametrize("change,field,says", [v[1:] for v in CARD_VARIANTS], ids=[v[0] for v in CARD_VARIANTS])
def test_bad_card_is_refused_naming_file_and_field(saved, tmp_path, change, field, says):
    d = copy_of(saved, tmp_path)
    edit_card(d, change)
    with pytest.raises(ModelCardError, match=rf"^{re.escape(str(d / 'model.json'))}: {field}: .*{says}") as err:
        load_detector(d)
    assert "\n" not in str(err.value) and isinstance(err.value, AnomalyVAEError)
    assert err.value.file == str(d / "model.json")


RAW_CARDS = [
    ("deep_json_100k_levels", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("deep_object_100k_levels", '{"a":' * 100_000 + "1" + "}" * 100_000, "nested too deeply"),
    ("not_json", "{'format': 'anomaly-vae model'}", "not valid JSON"),
    ("not_utf8", b"\xff\xfe{}", "not UTF-8"),
    ("not_an_object", "[1, 2, 3]", "expected a JSON object"),
    ("empty_object", "{}", "not an anomaly-vae model"),
    ("duplicate_key", '{"format_version": 1, "format_version": 2}', "duplicate key"),
    ("huge_integer", '{"format_version": ' + "9" * 5000 + "}", "not valid JSON"),
]


@pytest.mark.parametrize("text,says", [v[1:] for v in RAW_CARDS], ids=[v[0] for v in RAW_CARDS])
def test_card_that_is_not_a_card_is_refused(saved, tmp_path, text, says):
    d = copy_of(saved, tmp_path)
    path = d / "model.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ModelCardError, match=rf"^{re.escape(str(path))}: .*{says}"):
        load_detector(d)


def test_deep_nesting_in_a_free_form_field_is_refused(saved, tmp_path):
    """The training summary may hold extra diagnostics, but not nesting that could exhaust the stack."""
    d = copy_of(saved, tmp_path)
    edit_card(d, set_at("training.summary.notes", json.loads("[" * 40 + "]" * 40)))
    with pytest.raises(ModelCardError, match="nested more than 32 levels"):
        load_detector(d)


def test_image_card_must_match_its_network(image_saved, tmp_path):
    d = copy_of(image_saved, tmp_path)
    edit_card(d, set_at("input.preprocessing.height", 32))
    with pytest.raises(ModelCardError, match=r"model\.json: architecture\.height: expected 32 like input\.preprocessing\.height"):
        load_detector(d)
    shutil.rmtree(d)
    d = copy_of(image_saved, tmp_path)
    edit_card(d, lambda c: (set_at("architecture.height", 32)(c), set_at("input.preprocessing.height", 32)(c),
                            set_at("input.n_features_in", 32 * 28)(c)))
    with pytest.raises(ModelCardError, match=r"model\.safetensors: model\.encoder\.5\.weight: expected shape \[256, 3584\]"):
        load_detector(d)
    shutil.rmtree(d)
    d = copy_of(image_saved, tmp_path)
    edit_card(d, set_at("architecture.channels", [64, 64]))
    with pytest.raises(ModelCardError, match=r"architecture\.channels\[0\]: expected 32 to match the weights"):
        load_detector(d)


def test_nothing_is_allocated_before_the_card_is_checked(saved, tmp_path, monkeypatch):
    """hidden=[15000, 15000] once allocated 2.1 GB before failing: now neither the tensors are read
    nor the network built until the whole directory has passed, for a card out of bounds or one
    in bounds that the weights contradict."""
    def forbidden(*args, **kwargs):
        raise AssertionError("allocated before the checks")

    monkeypatch.setattr(artifact, "load", forbidden)
    monkeypatch.setattr(weights, "build_model", forbidden)
    monkeypatch.setattr(detector, "build_model", forbidden)  # the real network is built by the estimator
    for hidden in ([15000, 15000], [4096, 4096]):
        d = copy_of(saved, tmp_path / str(hidden[0]))
        edit_card(d, set_at("architecture.hidden", hidden))
        with pytest.raises(ModelCardError, match=r"architecture\.hidden\[0\]"):
            load_detector(d)


# -- the weights file is checked against the card, from its header -----------------------------------
def test_truncated_weights_are_refused(saved, tmp_path):
    d = copy_of(saved, tmp_path)
    data = (d / "model.safetensors").read_bytes()
    for cut in (len(data) // 2, 100, 4, 0):
        write_weights(d, data[:cut])  # even with the sha256 recorded for the truncated file
        with pytest.raises(ModelCardError, match=rf"^{re.escape(str(d / 'model.safetensors'))}: truncated"):
            load_detector(d)


def test_header_length_beyond_the_file_is_refused(saved, tmp_path):
    d = copy_of(saved, tmp_path)
    data = (d / "model.safetensors").read_bytes()
    write_weights(d, struct.pack("<Q", 2**63) + data[8:])
    with pytest.raises(ModelCardError, match=r"model\.safetensors: truncated or not a safetensors file"):
        load_detector(d)


def test_header_lying_about_a_shape_is_refused(saved, tmp_path):
    """Same bytes, another shape: the card's layer size no longer matches what the weights say."""
    d = copy_of(saved, tmp_path)
    header, data = safetensors_parts(d / "model.safetensors")
    assert header["model.encoder.0.weight"]["shape"] == [64, 24]
    header["model.encoder.0.weight"]["shape"] = [32, 48]
    write_weights(d, safetensors_bytes(header, data))
    with pytest.raises(ModelCardError, match=r"model\.json: architecture\.hidden\[0\]: expected 32 to match the weights"):
        load_detector(d)


def test_header_lying_about_a_dtype_is_refused(saved, tmp_path):
    d = copy_of(saved, tmp_path)
    header, data = safetensors_parts(d / "model.safetensors")
    header["calibration.scores"]["dtype"] = "I64"  # same size as F64
    write_weights(d, safetensors_bytes(header, data))
    with pytest.raises(ModelCardError, match=r"model\.safetensors: calibration\.scores: expected dtype F64, got I64"):
        load_detector(d)


def test_header_lying_about_byte_ranges_is_refused(saved, tmp_path):
    d = copy_of(saved, tmp_path)
    header, data = safetensors_parts(d / "model.safetensors")
    header["scoring.noise"]["shape"] = [16, 1000]  # the bytes it points at hold 16 x 12 floats
    write_weights(d, safetensors_bytes(header, data))
    with pytest.raises(ModelCardError, match=r"model\.safetensors: scoring\.noise: its data_offsets span 768 bytes"):
        load_detector(d)
    header, data = safetensors_parts(saved / "model.safetensors")
    header["scoring.noise"]["data_offsets"] = [0, 768]  # overlaps another tensor
    write_weights(d, safetensors_bytes(header, data))
    with pytest.raises(ModelCardError, match="must not overlap"):
        load_detector(d)


def test_extra_tensor_is_refused(saved, tmp_path):
    d = copy_of(saved, tmp_path)
    tensors = load_file(saved / "model.safetensors")
    tensors["model.backdoor.weight"] = torch.zeros(3)
    save_file(tensors, d / "x")
    write_weights(d, (d / "x").read_bytes())
    with pytest.raises(ModelCardError, match=r"model\.safetensors: model\.backdoor\.weight: unexpected tensor"):
        load_detector(d)


@pytest.mark.parametrize("name", ["scoring.noise", "calibration.scores", "model.likelihood.raw_scale", "model.decoder.1.bias"])
def test_missing_tensor_is_refused(saved, tmp_path, name):
    d = copy_of(saved, tmp_path)
    tensors = load_file(saved / "model.safetensors")
    del tensors[name]
    save_file(tensors, d / "x")
    write_weights(d, (d / "x").read_bytes())
    with pytest.raises(ModelCardError, match=rf"model\.safetensors: {re.escape(name)}: missing"):
        load_detector(d)


def test_calibration_count_must_match_the_scores(saved, tmp_path):
    d = copy_of(saved, tmp_path)
    edit_card(d, set_at("calibration.n", 5))
    with pytest.raises(ModelCardError, match=r"calibration\.scores: expected shape \[5\] from model\.json's calibration\.n"):
        load_detector(d)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_fifo_in_place_of_a_model_file_does_not_hang(saved, tmp_path):
    for name in ("model.json", "model.safetensors"):
        d = copy_of(saved, tmp_path / name)
        (d / name).unlink()
        os.mkfifo(d / name)
        with pytest.raises(ArtifactError, match=rf"{re.escape(name)} is not a regular file"):
            load_detector(d)


# -- the command line: one `anomaly-vae: error:` line, exit 1, no traceback ---------------------------
def run_cli(*args) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


CLI_VARIANTS = [
    ("huge_n_threads", lambda d: edit_card(d, set_at("params.n_threads", 1_000_000)), "model.json", r"params\.n_threads"),
    ("huge_hidden", lambda d: edit_card(d, set_at("architecture.hidden", [15000, 15000])), "model.json", r"architecture\.hidden\[0\]"),
    ("deep_json", lambda d: (d / "model.json").write_text("[" * 100_000 + "]" * 100_000), "model.json", "nested too deeply"),
    ("threshold_null", lambda d: edit_card(d, set_at("calibration.threshold", None)), "model.json", r"calibration\.threshold"),
    ("modified_model_json", lambda d: edit_card(d, set_at("calibration.threshold", 1.0), rehash=False), "model.json", "card_sha256"),
    ("truncated_weights", lambda d: write_weights(d, (d / "model.safetensors").read_bytes()[:5000]), "model.safetensors", "truncated"),
]


# every variant through `info`; through `score` the three that differ most (one is the segfault)
CLI_CASES = [("info", *v) for v in CLI_VARIANTS] + [("score", *v) for v in CLI_VARIANTS
                                                    if v[0] in ("huge_n_threads", "modified_model_json", "truncated_weights")]


@pytest.mark.parametrize("command,change,file,field", [c[:1] + c[2:] for c in CLI_CASES],
                         ids=[f"{c[0]}-{c[1]}" for c in CLI_CASES])
def test_cli_refuses_a_bad_model_directory_in_one_line(saved, fitted, tmp_path, command, change, file, field):
    """`params.n_threads=1000000` made `anomaly-vae score` segfault (exit 139) and `info` print it;
    the others ended in tracebacks."""
    d = copy_of(saved, tmp_path)
    change(d)
    data = tmp_path / "rows.csv"
    fitted[1].iloc[:20].to_csv(data, index=False)
    args = ["info", d] if command == "info" else ["score", d, data, "--out", tmp_path / "out.csv", "--quiet"]
    r = run_cli(*args)
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert re.match(rf"anomaly-vae: error: {re.escape(str(d / file))}: .*{field}", lines[0]), lines[0]
    assert r.stdout == "" and not (tmp_path / "out.csv").exists()


# -- no pickle ----------------------------------------------------------------------------------
def test_save_before_fit_is_an_error(tmp_path):
    from anomaly_vae import NotFittedError

    with pytest.raises(NotFittedError):
        VAEAnomalyDetector().save(tmp_path / "m")


def test_no_pickle_in_any_load_path():
    """No pickle, joblib, torch.load or allow_pickle=True anywhere in the package or the service
    (and no bentoml.pytorch / picklable_model, which pickle a whole module)."""
    pattern = re.compile(r"import (c?pickle|dill|joblib|cloudpickle)|pickle\.(loads?|dumps?)|joblib\.|torch\.load\(|"
                         r"allow_pickle\s*=\s*True|bentoml\.(pytorch|picklable_model)")
    files = [*PACKAGE.rglob("*.py"), *(PACKAGE.parent / "service").rglob("*.py")]
    assert len(files) > 20
    offenders = [f"{p.name}:{i}" for p in files
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


def test_the_card_schema_names_exactly_the_estimators_parameters_and_accepts_their_defaults():
    """card.PARAMS is declared apart from the estimator (importing it would be a cycle); this keeps
    the two in step: a new parameter needs a rule, a changed default must pass its rule."""
    import inspect

    from anomaly_vae.card import PARAMS

    defaults = {k: p.default for k, p in inspect.signature(VAEAnomalyDetector.__init__).parameters.items()
                if p.kind is p.KEYWORD_ONLY}
    assert set(PARAMS.fields) == set(defaults)
    auto = {k for k, v in defaults.items() if v == "auto" and k != "model"}
    # "auto" is resolved by the fit and never written: the card holds what it became (fitted_state)
    assert auto == {"marginal_floor", "pair", "pair_hidden_sizes"} and auto <= set(detector.CARD_OFF_VALUES)
    for k, v in defaults.items():
        if k in auto:
            with pytest.raises(CardProblem):
                PARAMS.fields[k].check(v, f"params.{k}")
            v = detector.CARD_OFF_VALUES[k]  # what a card without the field means
        PARAMS.fields[k].check(list(v) if isinstance(v, tuple) else v, f"params.{k}")  # raises if refused


def test_format_1_model_without_categorical_likelihood_still_loads_and_scores_as_it_did(fitted, saved, tmp_path):
    """Format 2 gave categorical columns a categorical likelihood (architecture.categorical); a
    format 1 card has no such field and its one-hot features keep the Gaussian of format 1."""
    det, df = fitted
    assert read_card(saved)["format_version"] == 2 and read_card(saved)["architecture"]["categorical"] == [[21, 3]]
    d = copy_of(saved, tmp_path)

    def as_format_1(card):
        card["format_version"] = 1
        del card["architecture"]["categorical"]

    edit_card(d, as_format_1)
    old = load_detector(d)
    assert old.model_.categorical == ()
    # the same weights read as the old model: the numeric features' terms are the same, the one-hot ones differ
    new_fs, old_fs = det.feature_scores(df.iloc[:20]), old.feature_scores(df.iloc[:20])
    assert np.allclose(new_fs.drop(columns="shift"), old_fs.drop(columns="shift"), rtol=1e-6)
    assert not np.allclose(new_fs["shift"], old_fs["shift"])
    # saved again (as `anomaly-vae calibrate` does, in place), it stays format 1 and scores the same
    again = tmp_path / "again"
    old.save(again)
    assert read_card(again)["format_version"] == 1 and "categorical" not in read_card(again)["architecture"]
    assert np.array_equal(load_detector(again).anomaly_score(df.iloc[:20]), old.anomaly_score(df.iloc[:20]))


@pytest.mark.parametrize("groups", [None, [], [[21, 2]], [[20, 3]], [[21, 3], [24, 2]]])
def test_format_2_card_must_declare_exactly_the_one_hot_groups(saved, tmp_path, groups):
    d = copy_of(saved, tmp_path)
    edit_card(d, delete_at("architecture.categorical") if groups is None else set_at("architecture.categorical", groups))
    with pytest.raises(ModelCardError, match=r"architecture.categorical: expected"):
        load_detector(d)


# -- format 3: the marginal floor ---------------------------------------------------------------
@pytest.fixture(scope="module")
def floor_saved(fitted, tmp_path_factory) -> Path:
    _, df = fitted
    out = tmp_path_factory.mktemp("floor") / "m"
    VAEAnomalyDetector(epochs=3, random_state=0, pair=False, marginal_floor=0.002).fit(df).save(out)
    return out


def test_a_model_with_a_marginal_floor_is_format_3_and_one_without_stays_format_2(fitted, floor_saved, tmp_path):
    det, df = fitted
    card = read_card(floor_saved)
    assert card["format_version"] == 3 and card["architecture"]["marginal_floor"] == 0.002
    assert card["params"]["marginal_floor"] == 0.002
    loaded = load_detector(floor_saved)
    assert loaded.model_.marginal_floor == 0.002
    again = VAEAnomalyDetector(epochs=3, random_state=0, pair=False, marginal_floor=0.002).fit(df)
    assert np.array_equal(loaded.anomaly_score(df), again.anomaly_score(df))
    none = tmp_path / "none"
    VAEAnomalyDetector(epochs=3, random_state=0, **SINGLE).fit(df).save(none)
    assert read_card(none)["format_version"] == 2 and "marginal_floor" not in read_card(none)["architecture"]


@pytest.mark.parametrize("change,match", [
    (set_at("format_version", 2), r"format_version: expected 3 or more for architecture.marginal_floor"),
    (set_at("architecture.marginal_floor", 1.0), r"architecture.marginal_floor: expected"),
    (set_at("architecture.marginal_floor", 0), r"architecture.marginal_floor: expected"),
    (set_at("architecture.marginal_floor", "0.002"), r"architecture.marginal_floor: expected"),
    (set_at("params.marginal_floor", -1), r"params.marginal_floor: expected"),
    (set_at("params.marginal_floor", 0.5), r"params.marginal_floor: expected 0.002 like architecture"),
    (delete_at("architecture.marginal_floor"), r"params.marginal_floor: expected 0 like architecture"),
    (delete_at("params.marginal_floor"), r"params.marginal_floor: expected 0.002 like architecture"),
])
def test_a_tampered_marginal_floor_is_refused(floor_saved, tmp_path, change, match):
    d = copy_of(floor_saved, tmp_path)
    edit_card(d, change)
    with pytest.raises(ModelCardError, match=match):
        load_detector(d)


def test_a_newer_release_reading_format_3_is_what_an_older_one_refuses(floor_saved, tmp_path, monkeypatch):
    """A release that reads format 2 at most refuses a format 3 card, saying to upgrade (not a
    misread model: the floor would otherwise be dropped silently and every score change)."""
    from anomaly_vae import card as card_module

    monkeypatch.setattr(artifact, "FORMAT_VERSION", 2)
    monkeypatch.setattr(card_module, "FORMAT_VERSION", 2)
    with pytest.raises(ArtifactError, match="written in model format 3.*upgrade anomaly-vae"):
        load_detector(floor_saved)


# the parameters that releases reading format 2 know (anomaly-vae before lr_schedule and marginal_floor):
# they refuse a card naming any other, so a model without the newer settings must not name them
FORMAT_2_PARAMS = {
    "model", "latent_dim", "hidden_sizes", "conv_channels", "activation", "likelihood", "score_kind", "n_score_samples",
    "min_scale", "alpha", "contamination", "calibration_size", "validation_size", "epochs", "batch_size",
    "learning_rate", "weight_decay", "beta", "objective", "mmd_weight", "kl_estimator", "kl_warmup_epochs",
    "grad_clip", "patience", "max_categories", "random_state", "n_threads", "device", "verbose", "checkpoint_dir"}


def test_a_model_without_the_newer_settings_names_only_parameters_older_releases_know(fitted, saved, image_saved):
    for d in (saved, image_saved):
        card = read_card(d)
        assert card["format_version"] == 2 and set(card["params"]) <= FORMAT_2_PARAMS, set(card["params"]) - FORMAT_2_PARAMS
    # and such a card loads here with the newer settings off, as they were in that fit (not today's "auto"
    # defaults: a table fitted now gets a pair and a floor), so that its params refit to the same scores
    det = load_detector(saved)
    assert det.lr_schedule == "constant" and det.marginal_floor == 0.0
    assert det.pair is False and det.pair_hidden_sizes is None and not det.pair_ and det.marginal_floor_ == 0.0
    assert np.array_equal(det.anomaly_score(fitted[1].iloc[:20]), fitted[0].anomaly_score(fitted[1].iloc[:20]))
    again = clone(det).fit(fitted[1])
    assert "pair" not in again.model_.config() and np.array_equal(again.anomaly_score(fitted[1].iloc[:20]),
                                                                 fitted[0].anomaly_score(fitted[1].iloc[:20]))


def test_save_writes_the_floor_the_network_has_after_set_params(fitted, tmp_path):
    """set_params on a fitted detector changes a setting for the next fit, not the fitted network:
    the card records the network's floor, so that params and architecture agree and the model loads."""
    _, df = fitted
    det = VAEAnomalyDetector(epochs=2, random_state=0, pair=False, marginal_floor=0.01).fit(df)
    for later in (0.02, 0.0, "auto"):
        det.set_params(marginal_floor=later)
        det.save(tmp_path / f"m{later}")
        loaded = load_detector(tmp_path / f"m{later}")
        assert loaded.marginal_floor == loaded.model_.marginal_floor == 0.01
        assert np.array_equal(loaded.anomaly_score(df.iloc[:20]), det.anomaly_score(df.iloc[:20]))
        assert clone(loaded).get_params()["marginal_floor"] == 0.01
    plain = VAEAnomalyDetector(epochs=2, random_state=0, **SINGLE).fit(df).set_params(marginal_floor="auto", pair="auto")
    plain.save(tmp_path / "plain")
    assert "marginal_floor" not in read_card(tmp_path / "plain")["params"]
    assert "pair" not in read_card(tmp_path / "plain")["params"]
    assert load_detector(tmp_path / "plain").model_.marginal_floor == 0.0


def test_the_card_records_the_fit_whatever_set_params_says_since(fitted, tmp_path):
    """set_params after a fit is for the next fit: the card's params are the fit's, so that a clone of
    the loaded model refits the same network (a hostile review: epochs=7 after the fit wrote a card
    that refit to other scores, lr_schedule='cosine' after a pair's fit one whose refit raised); the
    settings of how a model runs (RUNTIME_PARAMS) are recorded as they are now."""
    _, df = fitted
    det = VAEAnomalyDetector(epochs=3, random_state=0).fit(df.iloc[:400])  # the default pair
    want = det.anomaly_score(df.iloc[:30])
    det.set_params(epochs=7, lr_schedule="cosine", hidden_sizes=(8,), score_kind="reconstruction",
                   learning_rate=0.1, n_threads=1, alpha=0.05)
    assert np.array_equal(det.anomaly_score(df.iloc[:30]), want)  # still the fit's score, the one calibrated
    det.save(tmp_path / "m")
    params = read_card(tmp_path / "m")["params"]
    assert params["epochs"] == 3 and "lr_schedule" not in params and params["hidden_sizes"] is None
    assert params["score_kind"] == "elbo" and params["learning_rate"] == 1e-3
    assert params["alpha"] == 0.01  # the fit's: it chose how many rows calibrate (set_alpha moves the threshold)
    assert params["n_threads"] == 1  # how the model runs: as set now
    loaded = load_detector(tmp_path / "m")
    assert loaded.get_params()["epochs"] == 3 and loaded.score_kind_ == "elbo"
    refit = clone(loaded).fit(df.iloc[:400])
    assert np.array_equal(refit.anomaly_score(df.iloc[:30]), want)
    loaded.set_params(epochs=5).save(tmp_path / "again")  # and a loaded model's card the same way
    assert read_card(tmp_path / "again")["params"]["epochs"] == 3


def test_a_card_that_would_not_load_is_not_saved_and_leaves_the_saved_model(fitted, saved, tmp_path):
    """A hostile review: set_params(n_threads=0) after a fit saved a card that load_detector refused,
    and device=torch.device("cpu") raised a raw TypeError after the new weights had replaced the old
    ones beside the old card. Both are refused before anything is written."""
    det, df = fitted
    d = copy_of(saved, tmp_path)
    other = VAEAnomalyDetector(epochs=2, random_state=1, **SINGLE).fit(df)
    for bad, field in (({"n_threads": 0}, "n_threads"), ({"verbose": -1}, "verbose"), ({"device": "tpu"}, "device")):
        other.set_params(**bad)
        with pytest.raises(ModelCardError, match=rf"params\.{field}: .*not saved, a model with this card would not load"):
            other.save(d)
        other.set_params(n_threads=None, verbose=0, device="cpu")
        assert np.array_equal(load_detector(d).anomaly_score(df.iloc[:20]), det.anomaly_score(df.iloc[:20]))
    other.set_params(device=torch.device("cpu"), hidden_sizes=np.array([8]))  # written as "cpu" and [8]
    other.save(tmp_path / "ok")
    assert load_detector(tmp_path / "ok").device == "cpu"
    assert [p.name for p in d.iterdir()] == [p.name for p in saved.iterdir()]  # no temporary files left


def test_params_an_older_card_recorded_after_the_fit_are_taken_from_the_network(saved, fitted, tmp_path, caplog):
    """Cards written before session 13 recorded set_params made after the fit: loading takes the
    network's settings where they contradict it (and says so), so that a refit gives this network."""
    d = copy_of(saved, tmp_path)
    edit_card(d, lambda c: c["params"].update(latent_dim=5, hidden_sizes=[64, 64], activation="tanh", n_score_samples=2))
    with caplog.at_level(logging.WARNING, logger="anomaly_vae.detector"):
        loaded = load_detector(d)
    assert "the network was fitted with" in caplog.text and "latent_dim=5" in caplog.text
    arch = read_card(d)["architecture"]
    assert loaded.latent_dim == arch["latent_dim"] and list(loaded.hidden_sizes) == arch["hidden"]
    assert loaded.activation == "relu" and loaded.n_score_samples == fitted[0].n_score_samples
    assert np.array_equal(clone(loaded).fit(fitted[1]).anomaly_score(fitted[1].iloc[:20]),
                          fitted[0].anomaly_score(fitted[1].iloc[:20]))


def test_numpy_scalar_settings_are_saved_as_plain_numbers(fitted, tmp_path):
    _, df = fitted
    det = VAEAnomalyDetector(epochs=np.int64(2), alpha=np.float32(0.1), marginal_floor=np.float32(0.01),
                             hidden_sizes=(np.int64(16), 8), random_state=np.int64(0)).fit(df)
    det.save(tmp_path / "m")
    params = read_card(tmp_path / "m")["params"]
    assert params["epochs"] == 2 and params["alpha"] == pytest.approx(0.1) and params["hidden_sizes"] == [16, 8]
    assert params["marginal_floor"] == pytest.approx(0.01) and params["random_state"] == 0
    assert np.array_equal(load_detector(tmp_path / "m").anomaly_score(df.iloc[:20]), det.anomaly_score(df.iloc[:20]))


@pytest.mark.parametrize("name,value", [("score_kind", "elbo"), ("model", "dense"), ("likelihood", "gaussian"),
                                        ("activation", "relu"), ("device", "cpu")])
def test_a_string_setting_given_as_a_numpy_array_is_refused_before_any_work(fitted, name, value):
    with pytest.raises(ValueError, match=f"{name} must be a string"):
        VAEAnomalyDetector(**{name: np.array(value)}, epochs=1).fit(fitted[1])


# -- format 4: the pair -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pair_saved(fitted, tmp_path_factory) -> Path:
    _, df = fitted
    out = tmp_path_factory.mktemp("pair") / "m"
    VAEAnomalyDetector(epochs=3, random_state=0, pair=True, pair_hidden_sizes=None, marginal_floor=0.0
                       ).fit(df.iloc[:400]).save(out)
    return out


def test_a_pair_is_format_4_and_loads_to_the_same_scores(fitted, pair_saved):
    _, df = fitted
    card = read_card(pair_saved)
    assert card["format_version"] == 4 and card["params"]["pair"] is True
    assert card["architecture"]["pair"] == {**{k: v for k, v in card["architecture"].items() if k != "pair"},
                                            "aggregate_prior": card["training"]["summary"]["n_train"]}
    tensors = load_file(str(pair_saved / "model.safetensors"))
    assert tensors["model.second.prior_mu"].shape == (card["architecture"]["pair"]["aggregate_prior"],
                                                       card["architecture"]["latent_dim"])
    loaded = load_detector(pair_saved)
    again = VAEAnomalyDetector(epochs=3, random_state=0, pair=True, pair_hidden_sizes=None, marginal_floor=0.0
                               ).fit(df.iloc[:400])
    assert loaded.pair is True and loaded.pair_hidden_sizes is None and loaded.marginal_floor == 0.0
    assert np.array_equal(loaded.anomaly_score(df), again.anomaly_score(df))


@pytest.mark.parametrize("change,match", [
    (set_at("format_version", 3), r"format_version: expected 4 or more for architecture.pair"),
    (set_at("params.pair", False), r"params.pair: expected true like architecture.pair"),
    (delete_at("params.pair"), r"params.pair: expected true like architecture.pair"),
    (set_at("params.pair", "true"), r"params.pair: expected"),
    (delete_at("architecture.pair"), r"params.pair: expected false like architecture.pair"),
    (set_at("architecture.pair.latent_dim", 2), r"architecture.pair.latent_dim: expected .* like architecture"),
    (set_at("architecture.pair.marginal_floor", 0.1), r"architecture.pair.marginal_floor: expected null like"),
    (delete_at("architecture.pair.aggregate_prior"), r"architecture.pair.aggregate_prior: missing"),
    (set_at("architecture.pair.aggregate_prior", 0), r"architecture.pair.aggregate_prior: expected"),
    (set_at("architecture.pair.aggregate_prior", 10**6), r"architecture.pair.aggregate_prior: expected"),
    (set_at("architecture.pair.aggregate_prior", 5), r"model.second.prior_mu: expected shape \[5, "),
    (set_at("architecture.pair.pair", {}), r"architecture.pair.pair: unknown field"),
    # the first network's own run: a one-run pair has none (`info` would show "5 + N epochs")
    (set_at("training.summary.epochs_run_first", 5),
     r"training.summary.epochs_run_first: expected present only with params.pair_hidden_sizes"),
])
def test_a_tampered_pair_is_refused(pair_saved, tmp_path, change, match):
    d = copy_of(pair_saved, tmp_path)
    edit_card(d, change)
    with pytest.raises(ModelCardError, match=match):
        load_detector(d)


@pytest.mark.parametrize("name,value,match", [
    ("model.second.prior_logvar", float("nan"), "expected finite numbers, found NaN or infinity"),
    ("model.second.prior_mu", float("inf"), "expected finite numbers, found NaN or infinity"),
    ("model.second.prior_logvar", -1e30, r"expected log-variances in \[-12, 8\], got -1e\+30"),
    ("model.second.prior_logvar", 9.0, r"expected log-variances in \[-12, 8\]"),
    ("model.second.prior_mu", 3e38, r"expected code means within \+-1e\+06, got 3e\+38"),
    ("model.encoder.0.weight", float("nan"), "expected finite numbers"),  # any network's weights, pair or not
    ("model.second.decoder.1.bias", float("-inf"), "expected finite numbers"),
])
def test_a_pair_whose_tensors_hold_impossible_values_is_refused(pair_saved, tmp_path, name, value, match):
    """Values the header cannot show: a NaN weight, or a code a writer never makes (its log-variance
    is clamped), would mark every row anomalous; refused, naming the file and tensor."""
    d = copy_of(pair_saved, tmp_path)
    tensors = load_file(str(d / "model.safetensors"))
    tensors[name].view(-1)[3] = value
    save_file(tensors, str(d / "fresh.safetensors"))
    write_weights(d, (d / "fresh.safetensors").read_bytes())
    with pytest.raises(ModelCardError, match=rf"model\.safetensors: {re.escape(name)}: {match}"):
        load_detector(d)


def test_a_pair_card_bounds_the_work_of_its_prior(pair_saved, tmp_path):
    """n_score_samples x codes is what a row's aggregate prior holds at scoring: bounded by the card."""
    from anomaly_vae.card import MAX_PRIOR_WORK
    from anomaly_vae.detector import PAIR_CODES, pair_codes

    d = copy_of(pair_saved, tmp_path)
    edit_card(d, lambda c: (set_at("score.n_score_samples", 64)(c),
                            set_at("architecture.pair.aggregate_prior", 5000)(c)))
    with pytest.raises(ModelCardError, match=r"architecture.pair.aggregate_prior: expected at most 4096 codes with "
                                             r"score.n_score_samples 64"):
        load_detector(d)
    assert pair_codes(16) == PAIR_CODES and pair_codes(1024) == MAX_PRIOR_WORK // 1024 == 256 and pair_codes(10**9) == 1


# -- format 5: a pair whose long network has layers of its own -------------------------------------
@pytest.fixture(scope="module")
def own_pair_saved(fitted, tmp_path_factory) -> Path:
    _, df = fitted
    out = tmp_path_factory.mktemp("own-pair") / "m"
    VAEAnomalyDetector(epochs=3, random_state=0, pair=True, pair_hidden_sizes=(48, 24)).fit(df.iloc[:400]).save(out)
    return out


def test_a_pair_with_its_own_layers_is_format_5_and_loads_to_the_same_scores(fitted, own_pair_saved, pair_saved):
    _, df = fitted
    card = read_card(own_pair_saved)
    assert card["format_version"] == 5 and card["params"]["pair_hidden_sizes"] == [48, 24]
    assert card["architecture"]["pair"]["hidden"] == [48, 24] and card["architecture"]["hidden"] == [64, 32]
    loaded = load_detector(own_pair_saved)
    again = VAEAnomalyDetector(epochs=3, random_state=0, pair=True, pair_hidden_sizes=(48, 24)).fit(df.iloc[:400])
    assert tuple(loaded.pair_hidden_sizes) == (48, 24) and np.array_equal(loaded.anomaly_score(df), again.anomaly_score(df))
    assert "pair_hidden_sizes" not in read_card(pair_saved)["params"]  # other pairs stay format 4


@pytest.mark.parametrize("change,match", [
    (set_at("format_version", 4), r"format_version: expected 5 or more for params.pair_hidden_sizes"),
    (set_at("params.pair_hidden_sizes", [64, 32]), r"architecture.pair.hidden: expected \[64, 32\] like params.pair_hidden"),
    (delete_at("params.pair_hidden_sizes"), r"architecture.pair.hidden: expected \[64, 32\] like architecture.hidden"),
    (set_at("params.pair_hidden_sizes", [0]), r"params.pair_hidden_sizes"),
    (set_at("architecture.pair.hidden", [64, 32]), r"architecture.pair.hidden: expected \[48, 24\] like params"),
])
def test_a_tampered_pair_with_its_own_layers_is_refused(own_pair_saved, tmp_path, change, match):
    d = copy_of(own_pair_saved, tmp_path)
    edit_card(d, change)
    with pytest.raises(ModelCardError, match=match):
        load_detector(d)


def test_the_card_says_how_the_pair_was_fitted_whatever_set_params_says_since(fitted, own_pair_saved, pair_saved,
                                                                               tmp_path):
    """The card's params rebuild the fit: a set_params after it wrote a format-5 card for a one-run
    pair (and the reverse), whose refit gave other scores."""
    _, df = fitted
    one_run = load_detector(pair_saved).set_params(pair_hidden_sizes=(48, 24))
    one_run.save(tmp_path / "a")
    assert read_card(tmp_path / "a")["format_version"] == 4
    assert "pair_hidden_sizes" not in read_card(tmp_path / "a")["params"]
    two_runs = load_detector(own_pair_saved).set_params(pair_hidden_sizes=None)
    two_runs.save(tmp_path / "b")
    card = read_card(tmp_path / "b")
    assert card["format_version"] == 5 and card["params"]["pair_hidden_sizes"] == [48, 24]
    refit = clone(load_detector(tmp_path / "b")).fit(df.iloc[:400])
    assert np.array_equal(refit.anomaly_score(df.iloc[:50]), load_detector(own_pair_saved).anomaly_score(df.iloc[:50]))


def test_widths_written_as_whole_floats_load_as_integers_and_refit(fitted, own_pair_saved, tmp_path):
    _, df = fitted
    d = copy_of(own_pair_saved, tmp_path)
    edit_card(d, set_at("params.pair_hidden_sizes", [48.0, 24.0]))
    loaded = load_detector(d)
    assert loaded.pair_hidden_sizes == (48, 24) and all(type(h) is int for h in loaded.pair_hidden_sizes)
    assert clone(loaded).set_params(epochs=1).fit(df.iloc[:200]).model_.config()["pair"]["hidden"] == [48, 24]


def test_pair_hidden_sizes_without_a_pair_is_refused(pair_saved, tmp_path):
    d = copy_of(pair_saved, tmp_path)
    edit_card(d, lambda c: (delete_at("architecture.pair")(c), delete_at("params.pair")(c),
                            set_at("params.pair_hidden_sizes", [8])(c)))
    with pytest.raises(ModelCardError, match=r"params.pair_hidden_sizes: expected absent without architecture.pair"):
        load_detector(d)


def test_a_release_reading_format_4_refuses_a_pair_with_its_own_layers(own_pair_saved, monkeypatch):
    from anomaly_vae import card as card_module

    monkeypatch.setattr(artifact, "FORMAT_VERSION", 4)
    monkeypatch.setattr(card_module, "FORMAT_VERSION", 4)
    with pytest.raises(ArtifactError, match="written in model format 5.*upgrade anomaly-vae"):
        load_detector(own_pair_saved)


def test_a_release_reading_format_3_refuses_a_pair(pair_saved, monkeypatch):
    from anomaly_vae import card as card_module

    monkeypatch.setattr(artifact, "FORMAT_VERSION", 3)
    monkeypatch.setattr(card_module, "FORMAT_VERSION", 3)
    with pytest.raises(ArtifactError, match="written in model format 4.*upgrade anomaly-vae"):
        load_detector(pair_saved)


def test_a_model_replaced_while_it_loads_is_read_whole_from_one_of_them(saved, tmp_path, monkeypatch):
    """A job that loads ``current`` while a deployment repoints that symlink to a new model, or renames
    new weights over the old file, reads one model whole: the card and the weights of the folder it
    opened, the very bytes whose sha256 it checked. Before, the weights were opened by path after the
    card had been read (the new model's weights under the old card: a refused load) and read a second
    time after their hash was checked (another file's tensors, unchecked, under the checked card)."""
    from safetensors.torch import load_file, save_file

    old = copy_of(saved, tmp_path / "old")
    new = copy_of(saved, tmp_path / "new")  # the same network with other numbers, as a retrained model
    tensors = {k: v * 1.5 if v.is_floating_point() else v for k, v in load_file(old / "model.safetensors").items()}
    save_file(tensors, str(tmp_path / "w"))
    write_weights(new, (tmp_path / "w").read_bytes())
    expected = artifact.read_model(old)
    current = tmp_path / "current"
    current.symlink_to(old)

    def repoint() -> None:
        (tmp_path / "next").symlink_to(new)
        os.replace(tmp_path / "next", current)

    check_card, check_header = artifact.check_card, artifact.check_header
    monkeypatch.setattr(artifact, "check_card", lambda *a: (check_card(*a), repoint())[0])
    card, got = artifact.read_model(current)
    assert card == expected[0] and all(torch.equal(got[k], expected[1][k]) for k in got)
    assert current.resolve() == new.resolve()  # it was swapped, mid-load
    monkeypatch.setattr(artifact, "check_card", check_card)

    def rename_over(*a: object) -> None:  # the weights file itself replaced after its bytes were hashed
        check_header(*a)
        os.replace(new / "model.safetensors", old / "model.safetensors")

    monkeypatch.setattr(artifact, "check_header", rename_over)
    card, got = artifact.read_model(old)
    assert card == expected[0] and all(torch.equal(got[k], expected[1][k]) for k in got)
    monkeypatch.setattr(artifact, "check_header", check_header)
    with pytest.raises(ModelCardError, match="does not match the sha256"):  # and it was replaced: loading again sees it
        artifact.read_model(old)


def test_a_model_saved_in_place_while_it_loads_is_read_again_not_called_corrupt(saved, tmp_path, monkeypatch):
    """``anomaly-vae calibrate`` saves in place: the new weights are renamed in, then the new card. A load
    that read the old card and then the new weights is refused by the sha256 and read again once, since
    the card on disk changed: the new model, whole. A weights file that does not match a card that did
    not change is still refused."""
    from safetensors.torch import load_file, save_file

    d = copy_of(saved, tmp_path / "d")
    new = copy_of(saved, tmp_path / "new")
    save_file({k: v * 2 if v.is_floating_point() else v for k, v in load_file(d / "model.safetensors").items()},
              str(tmp_path / "w"))
    write_weights(new, (tmp_path / "w").read_bytes())
    expected = artifact.read_model(new)[1]
    check_card, calls = artifact.check_card, []

    def save_in_place(*a: object) -> None:
        check_card(*a)
        calls.append(1)
        if len(calls) == 1:  # as save_model does: the weights first, then the card
            for name in ("model.safetensors", "model.json"):
                shutil.copyfile(new / name, tmp_path / "tmp")
                os.replace(tmp_path / "tmp", d / name)

    monkeypatch.setattr(artifact, "check_card", save_in_place)
    card, tensors = artifact.read_model(d)
    assert len(calls) == 2 and card == read_card(new)
    assert tensors.keys() == expected.keys() and all(torch.equal(t, expected[k]) for k, t in tensors.items())
    shutil.copyfile(saved / "model.safetensors", d / "model.safetensors")
    with pytest.raises(ModelCardError, match="does not match the sha256"):
        artifact.read_model(d)
    assert len(calls) == 3  # checked once: the card read again only to see that it did not change


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors in /proc/self/fd (Linux)")
def test_what_is_not_a_file_or_a_folder_is_refused_by_name_and_leaks_no_descriptor(saved, tmp_path):
    """A folder, a socket or a loop of links where a model file or the model folder should be: one
    ArtifactError naming the path (a folder once gave "[Errno 21] Is a directory: 4" and leaked the
    descriptor; a socket and a loop gave a bare OSError with the file's name only)."""
    import socket

    cases = {}
    d = copy_of(saved, tmp_path / "dir")
    os.remove(d / "model.safetensors")
    (d / "model.safetensors").mkdir()
    cases[d] = rf"{re.escape(str(d / 'model.safetensors'))} is not a regular file"
    s = copy_of(saved, tmp_path / "sock")
    os.remove(s / "model.json")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(s / "model.json"))
    cases[s] = rf"{re.escape(str(s / 'model.json'))} is not a regular file"
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    cases[loop] = rf"{re.escape(str(loop))} is not a model directory \(.*links"
    w = copy_of(saved, tmp_path / "wloop")
    os.remove(w / "model.safetensors")
    (w / "model.safetensors").symlink_to(w / "model.safetensors")
    cases[w] = rf"{re.escape(str(w / 'model.safetensors'))} cannot be opened: .*links"
    try:
        before = _open_descriptors()
        for _ in range(3):
            for folder, message in cases.items():
                for read in (artifact.read_model, artifact.read_model_card):
                    with pytest.raises(ArtifactError, match=message):
                        read(folder)
        assert _open_descriptors() == before
    finally:
        server.close()


def test_a_header_the_card_does_not_describe_is_refused_before_the_file_is_read(saved, tmp_path):
    """A weights file that declares a tensor of 4 GiB (sparse: no disk) with its sha256 recorded: refused
    by the header check, before the body is read into memory (the whole file was read and hashed first);
    an odd tensor name is said escaped (a NameError once, json not imported where the check moved)."""
    d = copy_of(saved, tmp_path)
    header, data = safetensors_parts(d / "model.safetensors")
    header['odd "name"\n'] = {"dtype": "U8", "shape": [4 << 30], "data_offsets": [len(data), len(data) + (4 << 30)]}
    text = json.dumps(header).encode()
    with open(d / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)
        f.truncate(8 + len(text) + len(data) + (4 << 30))
    with pytest.raises(ModelCardError, match=r'model\.safetensors: "odd \\"name\\"\\n": unexpected tensor'):
        artifact.read_model(d)


def test_json_that_would_take_gigabytes_to_parse_is_refused_before_it_is_parsed(saved, tmp_path):
    """64 MB of "[]," made 3 GB of Python lists before the card's checks could refuse it."""
    d = copy_of(saved, tmp_path)
    (d / "model.json").write_bytes(b"[" + b"[]," * (1 << 20) + b"[]]")
    with pytest.raises(ModelCardError, match=r"model\.json: 1048578 JSON arrays and objects, more than the 1048576"):
        load_detector(d)


def test_a_header_safetensors_cannot_read_is_a_model_card_error(saved, tmp_path):
    """A lone surrogate in the header's metadata: Python's JSON takes it, safetensors' parser does not
    (it escaped as a SafetensorError, a traceback in the CLI)."""
    d = copy_of(saved, tmp_path)
    header, data = safetensors_parts(d / "model.safetensors")
    header["__metadata__"] = {"note": "\ud800"}
    text = json.dumps(header).encode()
    write_weights(d, struct.pack("<Q", len(text)) + text + data)
    for read in (load_detector, read_model_card):  # `info` too, not only `score`
        with pytest.raises(ModelCardError, match=r"model\.safetensors: not a safetensors file: its header escapes a lone"):
            read(d)


def test_brackets_inside_strings_are_not_counted_as_json_containers_and_save_refuses_what_load_would():
    """The 2^20 cap counts arrays and objects, not "[" in a column's name or a category; a card past it
    is refused by save, not written for the loader to refuse."""
    from anomaly_vae.card import MAX_CONTAINERS, parse_json

    names = json.dumps(["x[" + "[{" * 8 + f"]{i}" for i in range(MAX_CONTAINERS // 8)]).encode()
    assert len(parse_json(names, "t")) == MAX_CONTAINERS // 8
    with pytest.raises(ModelCardError, match="JSON arrays and objects"):
        parse_json(b"[" + b"[]," * MAX_CONTAINERS + b"[]]", "t")
    assert parse_json(b'[[0, [1]], {"a": "]"}]', "t") == [[0, [1]], {"a": "]"}]


def test_a_load_between_the_two_renames_of_a_save_in_place_waits_for_the_new_card(fitted, saved, tmp_path, monkeypatch):
    """A save in place renames the new weights in, then writes the card: a load in that gap read the old
    card with the new weights and was refused as corrupt. It now waits (a second at most, and only for
    weights written in the last seconds) for the card to change, and loads the new model whole."""
    import threading

    d = copy_of(saved, tmp_path)
    real, in_gap, result = artifact.atomic_output, threading.Event(), {}

    @contextlib.contextmanager
    def slow_card(path):
        if path.name == "model.json":
            in_gap.set()
            time.sleep(0.3)
        with real(path) as tmp:
            yield tmp

    monkeypatch.setattr(artifact, "atomic_output", slow_card)
    det = clone(fitted[0]).set_params(epochs=1, random_state=1).fit(fitted[1].iloc[:300])
    saver = threading.Thread(target=lambda: result.setdefault("saved", det.save(d)))
    saver.start()
    assert in_gap.wait(60)
    card, tensors = artifact.read_model(d)
    saver.join()
    assert card == read_card(d) and card["weights"]["sha256"] == hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs /proc/self/mem: a regular file whose read fails")
def test_a_file_whose_read_fails_is_an_artifact_error_naming_it(saved, tmp_path):
    """/proc/self/mem is a regular file whose read at offset 0 fails with EIO, as a failing disk's would:
    an ArtifactError naming the file, not a bare OSError."""
    d = copy_of(saved, tmp_path)
    os.remove(d / "model.json")
    (d / "model.json").symlink_to("/proc/self/mem")
    for read in (artifact.read_model, artifact.read_model_card):
        with pytest.raises(ArtifactError, match=r"model\.json cannot be read: Input/output error"):
            read(d)


def test_a_card_too_large_to_load_is_not_saved_and_the_old_model_stays(fitted, saved, tmp_path, monkeypatch):
    """save checks the card as a loader will read it, its size first: a card over the limit is refused
    with "not saved", and the model saved there before still loads."""
    d = copy_of(saved, tmp_path)
    before = read_card(d)
    monkeypatch.setattr(artifact, "MAX_CARD_BYTES", 1000)
    with pytest.raises(ModelCardError, match=r"model\.json: \d+ bytes, more than the 1000 a model card may have: not saved"):
        fitted[0].save(d)
    monkeypatch.undo()
    assert read_card(d) == before and artifact.read_model_card(d) == before


def test_counting_brackets_outside_strings_is_linear_and_exact():
    """Only a JSON text with more than 2^20 brackets is scanned for strings; the scan skips escaped quotes
    and stops once past the limit (a regex was quadratic on an unterminated string of escapes)."""
    from anomaly_vae.card import _containers_outside_strings as outside

    assert outside(rb'[[0, [1]], {"a": "]"}]', 10) == 4
    assert outside(rb'["a\\", [1]]', 10) == 2  # an escaped backslash, then the closing quote
    assert outside(rb'["a\"[", [1]]', 10) == 2  # an escaped quote inside the string
    assert outside(b"[" * 100, 10) > 10 and outside(b"[\"\"" * 100, 10) == 11  # stops once past the limit
    assert outside(b'"' + b'\\"' * 200_000, 10) == 0  # unterminated: one pass
