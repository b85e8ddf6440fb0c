"""The model card, ``model.json``: its schema, and the checks made on it before a model is allocated.

A model directory may come from anywhere (a colleague, a model store, a download), so loading treats
it as untrusted input. Before a tensor is read or a network is built, this module checks

1. the card's JSON itself: size, nesting depth, duplicate keys (``parse_card``);
2. every field: type, bounds, choices, no unknown keys (``CARD``: the whole format, declared below);
3. the fields against each other: the preprocessing's output width against the network's input, the
   image size against the convolutional network, ... (``_check_consistency``);

and ``artifact`` then checks the weights file's header against the card (tensor names, dtypes and
shapes) and its byte ranges against the file's size, still without reading a tensor. After that, a
model takes the memory of its weights file and no more, and a bad directory has ended in one
``ModelCardError`` naming the file and the field, e.g.
``m/model.json: architecture.hidden[0]: expected an integer 1..4096, got 15000``.

It is longer than the package's few-hundred-line rule on purpose: it is one declaration of one
file format (every field of the card, its bounds and its cross-checks) and reads best whole.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from .exceptions import ModelCardError
from .models import ACTIVATIONS
from .objectives import LIKELIHOODS
from .preprocessing import OTHER
from .preprocessing.marginals import MARGINALS, MAX_KNOTS, check_column_map
from .preprocessing.tables import TablePreprocessor
from .scoring import SCORES
from .training import LR_SCHEDULES

__all__ = ["CARD", "PARAMS", "FORMAT_NAME", "FORMAT_VERSION", "MAX_CARD_BYTES", "CardProblem", "describe", "parse_json",
           "parse_card", "check_card", "Spec", "Int", "Num", "Number", "Str", "Choice", "Bool", "Opt", "ListOf", "Obj",
           "Tagged", "Anything"]

FORMAT_NAME = "anomaly-vae model"
FORMAT_VERSION = 6
# format 2: a table model's categorical columns have a categorical likelihood,
# declared in architecture.categorical; format 1 cards (no such field) load and score as before.
# format 3: architecture.marginal_floor (a dense model's features mixed with their marginal N(0, 1));
# written only by a model that has one, so that any other model stays format 2 (or 1) and loads in
# the releases that read those
# format 4: architecture.pair (a second network whose prior is the aggregate posterior of
# architecture.pair.aggregate_prior training rows; the score is the sum of the two networks'),
# written only by a model that has one (VAEAnomalyDetector(pair=True))
# format 5: params.pair_hidden_sizes, a pair whose second network has hidden layers of its own
# (architecture.pair.hidden, trained in a run of its own), written only by such a model
MAX_CARD_BYTES = 64 << 20  # a 100,000-column table with 50 categories a column is a few MB
MAX_DEPTH = 32  # the card nests 6 levels deep; free-form diagnostics get some room
MAX_CONTAINERS = 1 << 20  # arrays and objects in a card or a weights header

# bounds: far beyond any model this package trains, small enough that a card cannot ask for an
# absurd network (the weights must match it anyway, and they cannot be larger than their file)
MAX_WIDTH = 4096  # a dense or conv layer, the latent size, an image side
MAX_LAYERS = 16
MAX_COLUMNS = 100_000
MAX_CATEGORIES = 100_000
MAX_FEATURES = 3 * MAX_WIDTH * MAX_WIDTH  # a colour image of the largest size, seen by a dense network
MAX_SCORE_SAMPLES = 1024  # each one is a decoder pass per row at scoring time
MAX_THREADS = 1024  # torch.set_num_threads(1_000_000) crashes the process
MAX_ROWS = 10**9
MAX_TEXT = 10_000
MAX_PRIOR_CODES = 10_000  # the aggregate prior's components: scoring holds (rows x samples x codes) numbers
MAX_PRIOR_WORK = 2**18  # score.n_score_samples x the codes: 128 MB of float64 a 64-row block (16 x 1000 by default)


class CardProblem(Exception):
    """One problem at ``field`` (a JSON path such as ``architecture.hidden[0]``); the caller adds the file."""

    def __init__(self, field: str | None, problem: str) -> None:
        super().__init__(problem)
        self.field, self.problem = field, problem


def describe(v: Any) -> str:
    """A value as the JSON file spells it, short and on one line."""
    if isinstance(v, dict):
        return "an object"
    if isinstance(v, list):
        if len(v) <= 8 and all(isinstance(x, (int, float, bool, str, type(None))) for x in v):
            text = json.dumps(v, ensure_ascii=True)  # a short list of numbers, such as a network's layers
            if len(text) <= 60:
                return text
        return f"a list of {len(v)} item{'s' if len(v) != 1 else ''}"
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) > 10**30:
        return "an integer of %d digits" % len(str(abs(v)))
    text = json.dumps(v, ensure_ascii=True)
    return text if len(text) <= 60 else text[:56] + '..."'


def _key(path: str, key: str) -> str:
    shown = key if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", key) else json.dumps(key[:64], ensure_ascii=True)
    return f"{path}.{shown}" if path else shown


# -- the schema language: each spec checks a value at a path, or raises CardProblem ------------------
class Spec:
    what = "a value"

    def check(self, v: Any, path: str) -> None:
        raise NotImplementedError

    def fail(self, v: Any, path: str) -> CardProblem:
        return CardProblem(path, f"expected {self.what}, got {describe(v)}")


class Number(Spec):
    """Any JSON number, NaN and infinities included (diagnostics: a loss can be NaN)."""

    what = "a number"

    def check(self, v: Any, path: str) -> None:
        if type(v) not in (int, float):
            raise self.fail(v, path)


class Anything(Spec):
    """Any JSON value (used for free-form diagnostics; the nesting depth is bounded for the whole card)."""

    what = "any JSON value"

    def check(self, v: Any, path: str) -> None:
        pass


@dataclass
class Int(Spec):
    lo: int
    hi: int
    whole_floats: bool = False  # accept 2.0 for 2 (constructor parameters, which fit() passes through int())

    def __post_init__(self) -> None:
        self.what = f"an integer {self.lo}..{self.hi}"

    def check(self, v: Any, path: str) -> None:
        if self.whole_floats and type(v) is float and v.is_integer():
            v = int(v)
        if type(v) is not int or not self.lo <= v <= self.hi:
            raise self.fail(v, path)


@dataclass
class Num(Spec):
    """A JSON number (integers too), NaN never; ``lo``/``hi`` bounds, open or closed."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    plus_infinity: bool = False  # Infinity stands for "none": the threshold when calibration failed

    def __post_init__(self) -> None:
        if self.lo is not None and self.hi is not None:
            rng = f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            rng = f"{'>' if self.lo_open else '>='} {self.lo:g}"
        else:
            rng = ""
        finite = "" if self.plus_infinity else "finite "
        self.what = f"a {finite}number {rng}".rstrip() + (" or Infinity" if self.plus_infinity else "")

    def check(self, v: Any, path: str) -> None:
        ok = type(v) in (int, float) and not math.isnan(v) and (
            math.isfinite(v) or (self.plus_infinity and v == math.inf))
        if ok and self.lo is not None:
            ok = v > self.lo if self.lo_open else v >= self.lo
        if ok and self.hi is not None:
            ok = v < self.hi if self.hi_open else v <= self.hi
        if not ok:
            raise self.fail(v, path)


@dataclass
class Str(Spec):
    max_len: int = 200
    pattern: str | None = None
    what: str = ""

    def __post_init__(self) -> None:
        self.what = self.what or f"a string of at most {self.max_len} characters"

    def check(self, v: Any, path: str) -> None:
        if not isinstance(v, str) or len(v) > self.max_len or (self.pattern and not re.fullmatch(self.pattern, v)):
            raise self.fail(v, path)


class Choice(Spec):
    def __init__(self, *values: Any) -> None:
        self.values = values
        self.what = ("one of " if len(values) > 1 else "") + ", ".join(json.dumps(x) for x in values)

    def check(self, v: Any, path: str) -> None:
        if not any(type(v) is type(x) and v == x for x in self.values):  # 1 is not true, nor 1.0
            raise self.fail(v, path)


class Bool(Choice):
    def __init__(self) -> None:
        super().__init__(True, False)


@dataclass
class Opt(Spec):
    """``spec`` or null."""

    spec: Spec

    def __post_init__(self) -> None:
        self.what = f"{self.spec.what}, or null"

    def check(self, v: Any, path: str) -> None:
        if v is not None:
            self.spec.check(v, path)


@dataclass
class ListOf(Spec):
    item: Spec
    lo: int = 0
    hi: int = MAX_ROWS
    unique: bool = False

    def __post_init__(self) -> None:
        self.what = f"a list of {self.lo}..{self.hi} items"

    def check(self, v: Any, path: str) -> None:
        if not isinstance(v, list) or not self.lo <= len(v) <= self.hi:
            raise self.fail(v, path)
        for i, x in enumerate(v):
            self.item.check(x, f"{path}[{i}]")
        if self.unique and len({json.dumps(x, sort_keys=True) for x in v}) != len(v):
            raise CardProblem(path, "expected no repeated items, found some")


@dataclass
class Obj(Spec):
    """An object with ``fields`` (all required), ``optional`` fields, and other keys refused unless
    ``extra`` says what they may hold."""

    fields: dict[str, Spec]
    optional: dict[str, Spec] = field(default_factory=dict)
    extra: Spec | None = None
    what: str = "an object"

    def check(self, v: Any, path: str) -> None:
        if not isinstance(v, dict):
            raise self.fail(v, path)
        for k, spec in self.fields.items():
            if k not in v:
                raise CardProblem(_key(path, k), f"missing (expected {spec.what})")
        for k, x in v.items():
            spec = self.fields[k] if k in self.fields else self.optional.get(k, self.extra)
            if spec is None:
                raise CardProblem(_key(path, k), f"unknown field (expected one of {', '.join({**self.fields, **self.optional})})")
            spec.check(x, _key(path, k))


@dataclass
class Tagged(Spec):
    """An object whose ``tag`` field picks one of ``variants``."""

    tag: str
    variants: dict[str, Obj]

    def __post_init__(self) -> None:
        self.what = f"an object with {self.tag} " + Choice(*self.variants).what

    def check(self, v: Any, path: str) -> None:
        if not isinstance(v, dict):
            raise self.fail(v, path)
        tag = v.get(self.tag)
        if not (isinstance(tag, str) and tag in self.variants):
            expected = Choice(*self.variants).what
            problem = f"expected {expected}, got {describe(tag)}" if self.tag in v else f"missing (expected {expected})"
            raise CardProblem(_key(path, self.tag), problem)
        self.variants[tag].check(v, path)


class Params(Obj):
    """The estimator's constructor parameters, each checked by its spec. A missing parameter takes
    the constructor's default (cards of older versions); an unknown one is refused. The schema
    knows the parameters without importing the estimator (that would be an import cycle:
    detector -> artifact -> card -> detector): ``tests/test_artifact.py`` checks that ``PARAMS``
    names exactly the constructor's parameters and that every default passes its spec."""

    def check(self, v: Any, path: str) -> None:
        if not isinstance(v, dict):
            raise self.fail(v, path)
        for k, x in v.items():
            where = _key(path, k)
            if k not in self.fields:
                raise CardProblem(where, "unknown parameter of VAEAnomalyDetector")
            self.fields[k].check(x, where)


# -- the card ------------------------------------------------------------------------------------
SIZE = Int(1, MAX_WIDTH)
SIDE = Int(8, MAX_WIDTH)
COUNT = Int(0, MAX_ROWS)
FINITE = Num()
NAME = Str(MAX_TEXT)
SHA256 = Str(64, r"[0-9a-f]{64}", what="a sha256 digest (64 lowercase hex digits)")
LIKELIHOOD = Choice(*LIKELIHOODS)
POSITIVE = Num(0, lo_open=True)
SCALE = Num(0, 100, lo_open=True)
FRACTION = Num(0, 1, lo_open=True, hi_open=True)

PARAMS = Params({
    "model": Choice("auto", "dense", "conv"),
    "latent_dim": Opt(Int(1, MAX_WIDTH, whole_floats=True)),
    "hidden_sizes": Opt(ListOf(Int(1, MAX_WIDTH, whole_floats=True), 0, MAX_LAYERS)),
    "conv_channels": Opt(ListOf(Int(1, MAX_WIDTH, whole_floats=True), 0, MAX_LAYERS)),
    "activation": Choice(*ACTIVATIONS),
    "likelihood": LIKELIHOOD,
    "score_kind": Choice(*SCORES),
    "n_score_samples": Int(1, MAX_SCORE_SAMPLES, whole_floats=True),
    "min_scale": Opt(SCALE),
    "marginal_floor": Num(0, 1, hi_open=True),
    "pair": Bool(),
    "pair_hidden_sizes": Opt(ListOf(Int(1, MAX_WIDTH, whole_floats=True), 1, MAX_LAYERS)),
    "alpha": FRACTION,
    "contamination": Opt(Num(0, 0.5, lo_open=True)),
    "calibration_size": FRACTION,
    "validation_size": Num(0, 1, hi_open=True),
    "epochs": Int(1, 10**7, whole_floats=True),
    "batch_size": Int(1, 10**8, whole_floats=True),
    "learning_rate": POSITIVE,
    "lr_schedule": Choice(*LR_SCHEDULES),
    "weight_decay": Num(0),
    "beta": Num(0),
    "objective": Choice("elbo", "mmd"),
    "mmd_weight": Num(0),
    "kl_estimator": Choice("analytic", "mc"),
    "kl_warmup_epochs": Int(0, 10**7, whole_floats=True),
    "grad_clip": Num(0),
    "patience": Int(1, 10**7, whole_floats=True),
    "max_categories": Int(1, MAX_CATEGORIES, whole_floats=True),
    "marginals": Choice(*MARGINALS),
    "random_state": Opt(Int(-(2**63), 2**63)),
    "n_threads": Opt(Int(1, MAX_THREADS, whole_floats=True)),
    "device": Choice("cpu", "cuda", "auto"),
    "verbose": Int(0, 100, whole_floats=True),
    "checkpoint_dir": Opt(Str(4096)),
})

DENSE = {"kind": Choice("dense"), "n_features": Int(1, MAX_FEATURES), "hidden": ListOf(SIZE, 0, MAX_LAYERS),
         "latent_dim": SIZE, "activation": Choice(*ACTIVATIONS), "likelihood": LIKELIHOOD, "scale": SCALE,
         "min_scale": SCALE}
DENSE_OPTIONAL = {"categorical": ListOf(ListOf(Int(0, MAX_FEATURES), 2, 2), 1, MAX_COLUMNS),
                  "marginal_floor": Num(0, 1, lo_open=True, hi_open=True)}
ARCHITECTURE = Tagged("kind", {
    "dense": Obj(DENSE, optional={**DENSE_OPTIONAL,
                                  # the second network of a pair: the same fields, and its prior's codes
                                  "pair": Obj({**DENSE, "aggregate_prior": Int(1, MAX_PRIOR_CODES)},
                                              optional=DENSE_OPTIONAL)}),
    "conv": Obj({"kind": Choice("conv"), "in_channels": Choice(1, 3), "height": SIDE, "width": SIDE,
                 "latent_dim": SIZE, "channels": ListOf(SIZE, 1, MAX_LAYERS), "hidden": SIZE,
                 "likelihood": LIKELIHOOD, "scale": SCALE, "min_scale": SCALE}),
})

COLUMN = Tagged("type", {
    "numeric": Obj({"name": NAME, "type": Choice("numeric"), "mean": FINITE, "std": POSITIVE, "median": FINITE,
                    "indicator": Bool()},
                   # the column's marginal map (params.marginals "kde", format 6): knots, checked in _check_consistency
                   optional={"map": Obj({"x": ListOf(FINITE, 2, MAX_KNOTS), "z": ListOf(FINITE, 2, MAX_KNOTS)})}),
    "categorical": Obj({"name": NAME, "type": Choice("categorical"),
                        "categories": ListOf(NAME, 1, MAX_CATEGORIES + 1, unique=True)}),
})

INPUT = Obj({
    "kind": Choice("table", "image"),
    "n_features_in": Int(1, MAX_FEATURES),
    "feature_names_in": Opt(ListOf(NAME, 1, MAX_COLUMNS)),
    "preprocessing": Tagged("kind", {
        "table": Obj({"kind": Choice("table"), "max_categories": Int(1, MAX_CATEGORIES),
                      "columns": ListOf(COLUMN, 1, MAX_COLUMNS)}),
        "image": Obj({"kind": Choice("image"), "channels": Choice(1, 3), "height": SIDE, "width": SIDE}),
    }),
})

# the numbers of an evaluation on labelled held-out data (evaluation.evaluate_scores), when train had labels
HOLDOUT = Obj({"n": COUNT, "n_normal": COUNT, "n_anomalous": COUNT},
              optional={k: Opt(Num(0, 1)) for k in ("auroc", "average_precision", "false_alarm_rate",
                                                     "detection_rate", "precision")},
              extra=Anything())

CARD = Obj({
    "format": Choice(FORMAT_NAME),
    "format_version": Int(1, FORMAT_VERSION),
    "package_version": Str(),
    "torch_version": Str(),
    "python_version": Str(),
    "created": Str(),
    "params": PARAMS,
    "architecture": ARCHITECTURE,
    "input": INPUT,
    "score": Obj({"name": Choice(*SCORES), "units": Choice("nats"), "higher_is_more_anomalous": Choice(True),
                  "n_score_samples": Int(1, MAX_SCORE_SAMPLES)}),
    "calibration": Obj({
        "method": Choice("conformal", "contamination", "best_f1"),
        "alpha": Opt(FRACTION),
        "threshold": Num(plus_infinity=True),
        "n": COUNT,
        "quantiles": Obj({}, optional={q: Number() for q in ("0.5", "0.9", "0.99")}),
        "error": Opt(Str(MAX_TEXT)),
        "best_f1": Opt(Num(0, 1)),
    }),
    "training": Obj({
        # fit_info_: the fields that the command line shows are checked; others are free diagnostics
        "summary": Obj({"n_samples": COUNT, "n_train": COUNT, "n_validation": COUNT, "n_calibration": COUNT,
                        "seed": Int(-(2**63), 2**63), "seconds": Num(0), "epochs_run": COUNT, "device": Str()},
                       optional={"holdout": HOLDOUT, "epochs_run_first": COUNT}, extra=Anything()),
        "history": ListOf(Obj({"epoch": Int(1, 10**7)}, extra=Opt(Number())), 0, 10**7),
    }),
    "weights": Obj({"file": Choice("model.safetensors"), "sha256": SHA256}),
}, optional={"card_sha256": SHA256})


# -- parsing and checking -----------------------------------------------------------------------
def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate key {json.dumps(dup[:64])}")
    return out


def _depth(v: Any) -> int:
    """Nesting depth of a parsed JSON value, without recursion."""
    deepest, stack = 1, [(v, 1)] if isinstance(v, (dict, list)) else []  # containers only: a tuple a number
    while stack:  # made 2.3 GB of a 64 MB list of numbers
        x, d = stack.pop()
        if x:
            deepest = max(deepest, d + 1)
        stack.extend((y, d + 1) for y in (x.values() if isinstance(x, dict) else x) if isinstance(y, (dict, list)))
    return deepest


def _containers_outside_strings(raw: bytes, stop: int) -> int:
    """"[" and "{" outside JSON strings in ``raw``, counted until more than ``stop``: linear in time, and no
    memory beyond ``raw`` (a regex over the strings was quadratic on an unterminated one)."""
    count, inside, at = 0, False, 0
    while count <= stop:
        quote = raw.find(b'"', at)
        end = len(raw) if quote < 0 else quote
        if not inside:
            count += raw.count(b"[", at, end) + raw.count(b"{", at, end)
        if quote < 0:
            break
        escapes = quote
        while inside and escapes > at and raw[escapes - 1] == 0x5C:  # backslashes before the quote
            escapes -= 1
        if (quote - escapes) % 2 == 0:  # a quote that is not escaped opens or closes a string
            inside = not inside
        at = quote + 1
    return count


def parse_json(raw: bytes, file: str, max_depth: int = MAX_DEPTH) -> Any:
    """JSON text -> value; refuses invalid UTF-8 or JSON, duplicate keys and deep nesting with a
    ``ModelCardError`` (never a ``RecursionError``)."""
    containers = raw.count(b"[") + raw.count(b"{")  # each ~60 bytes parsed: 63 MB of "[]," made 3 GB
    if containers > MAX_CONTAINERS:  # a bracket in a string (a column's name) is no array: count outside them
        containers = _containers_outside_strings(raw, MAX_CONTAINERS)
    if containers > MAX_CONTAINERS:
        raise ModelCardError(file, None, f"{containers} JSON arrays and objects, more than the {MAX_CONTAINERS} it may "
                                         "have")
    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError as err:
        raise ModelCardError(file, None, f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    except RecursionError:
        raise ModelCardError(file, None, "JSON nested too deeply to parse") from None
    except ValueError as err:  # JSONDecodeError, a duplicate key, an integer of more than 4300 digits
        raise ModelCardError(file, None, f"not valid JSON: {err}") from None
    if _depth(value) > max_depth:
        raise ModelCardError(file, None, f"JSON nested more than {max_depth} levels deep")
    return value


def parse_card(raw: bytes, file: str) -> dict[str, Any]:
    card = parse_json(raw, file)
    if not isinstance(card, dict):
        raise ModelCardError(file, None, f"expected a JSON object (a model card), got {describe(card)}")
    return card


def check_card(card: dict[str, Any], file: str) -> None:
    """Check every field of ``card`` (the schema ``CARD``) and the fields against each other."""
    try:
        CARD.check(card, "")
        _check_consistency(card)
    except CardProblem as p:
        raise ModelCardError(file, p.field, p.problem) from None


def _check_consistency(card: dict[str, Any]) -> None:
    """The rules that tie fields together (each field alone already passed ``CARD``)."""
    arch, inp, pre, cal = card["architecture"], card["input"], card["input"]["preprocessing"], card["calibration"]

    def expect(ok: bool, field: str, expected: str, got: Any) -> None:
        if not ok:
            raise CardProblem(field, f"expected {expected}, got {describe(got)}")

    expect(pre["kind"] == inp["kind"], "input.preprocessing.kind", f"{json.dumps(inp['kind'])} like input.kind",
           pre["kind"])
    expect(arch["likelihood"] == "bernoulli" or arch["scale"] > arch["min_scale"], "architecture.min_scale",
           f"a number below architecture.scale ({arch['scale']:g})", arch["min_scale"])
    if pre["kind"] == "table":
        cols = pre["columns"]
        for i, col in enumerate(cols):
            if col["type"] == "categorical":
                cats, where = col["categories"], f"input.preprocessing.columns[{i}].categories"
                expect(cats[-1] == OTHER, where, f"{json.dumps(OTHER)} last", cats[-1])
                expect(len(cats) <= pre["max_categories"] + 1, where,
                       f"at most max_categories + 1 = {pre['max_categories'] + 1} items", cats)
            elif "map" in col:
                where = f"input.preprocessing.columns[{i}].map"
                problem = check_column_map(col["map"])
                expect(problem is None, where, str(problem), col["map"])
                expect(card["params"].get("marginals") == "kde", "params.marginals", '"kde" for a column with a map',
                       card["params"].get("marginals"))
                expect(card["format_version"] >= 6, "format_version", "6 or more for a column with a map",
                       card["format_version"])
        names = [c["name"] for c in cols]
        if len(set(names)) != len(names):
            dup = next(n for i, n in enumerate(names) if n in names[:i])
            raise CardProblem("input.preprocessing.columns", f"expected distinct column names, got {describe(dup)} twice")
        layout = TablePreprocessor.from_dict(pre)  # the fields passed the schema: the preprocessor's own widths
        n_in, width = len(cols), layout.n_features_out
        expect(arch["kind"] == "dense", "architecture.kind", '"dense" for a table model', arch["kind"])
        groups = [list(g) for g in layout.categorical_groups()]
    else:
        n_in = width = pre["channels"] * pre["height"] * pre["width"]
        if arch["kind"] == "conv":
            for k, a in (("channels", "in_channels"), ("height", "height"), ("width", "width")):
                expect(arch[a] == pre[k], f"architecture.{a}", f"{pre[k]} like input.preprocessing.{k}", arch[a])
    if arch["kind"] == "dense":
        expect(arch["n_features"] == width, "architecture.n_features",
               f"{width}, the width of input.preprocessing's output", arch["n_features"])
    floor = card["params"].get("marginal_floor")
    if "marginal_floor" in arch or floor is not None:  # both absent: no floor (and cards written before it)
        expect(floor == arch.get("marginal_floor", 0), "params.marginal_floor",
               f"{arch.get('marginal_floor', 0)} like architecture.marginal_floor (0 when absent)", floor)
    if "marginal_floor" in arch:
        expect(card["format_version"] >= 3, "format_version", "3 or more for architecture.marginal_floor",
               card["format_version"])
        expect(arch["likelihood"] != "bernoulli", "architecture.marginal_floor",
               "no marginal_floor with a bernoulli likelihood", arch["marginal_floor"])
    pair, paired = arch.get("pair"), card["params"].get("pair")
    if pair is not None or paired is not None:  # both absent: no pair (and cards written before it)
        expect(paired is (pair is not None), "params.pair", f"{json.dumps(pair is not None)} like architecture.pair "
               "(false when absent)", paired)
    if pair is not None:
        expect(card["format_version"] >= 4, "format_version", "4 or more for architecture.pair", card["format_version"])
        k, m = card["score"]["n_score_samples"], pair["aggregate_prior"]
        expect(k * m <= MAX_PRIOR_WORK, "architecture.pair.aggregate_prior", f"at most {MAX_PRIOR_WORK // k} codes "
               f"with score.n_score_samples {k} (their product at most {MAX_PRIOR_WORK})", m)
        own = card["params"].get("pair_hidden_sizes")
        mine = {k: v for k, v in arch.items() if k != "pair" and (own is None or k != "hidden")}
        theirs = {k: v for k, v in pair.items() if k != "aggregate_prior" and (own is None or k != "hidden")}
        for k in sorted({*mine, *theirs}):
            expect(theirs.get(k) == mine.get(k), f"architecture.pair.{k}", f"{describe(mine.get(k))} like "
                   f"architecture.{k} (a pair is one architecture twice, but for params.pair_hidden_sizes)",
                   theirs.get(k))
        if own is not None:
            expect(card["format_version"] >= 5, "format_version", "5 or more for params.pair_hidden_sizes",
                   card["format_version"])
            expect(pair["hidden"] == own, "architecture.pair.hidden", f"{describe(own)} like params.pair_hidden_sizes",
                   pair["hidden"])
    elif card["params"].get("pair_hidden_sizes") is not None:
        expect(False, "params.pair_hidden_sizes", "absent without architecture.pair", card["params"]["pair_hidden_sizes"])
    first = card["training"]["summary"].get("epochs_run_first")
    if first is not None:  # the first of a pair's two runs: `info` shows it beside the long one's
        expect(pair is not None and card["params"].get("pair_hidden_sizes") is not None,
               "training.summary.epochs_run_first", "present only with params.pair_hidden_sizes (a pair of two runs)",
               first)
    if pre["kind"] == "table" and card["format_version"] >= 2:  # format 1: one-hot features were Gaussian
        expect(arch.get("categorical", []) == groups, "architecture.categorical",
               f"{json.dumps(groups)}, the one-hot groups of input.preprocessing", arch.get("categorical", []))
    elif arch.get("categorical"):
        raise CardProblem("architecture.categorical", "expected no one-hot groups (an image model, or format 1)")
    expect(inp["n_features_in"] == n_in, "input.n_features_in", f"{n_in} to match input.preprocessing",
           inp["n_features_in"])
    if inp["feature_names_in"] is not None:
        expect(len(inp["feature_names_in"]) == n_in, "input.feature_names_in",
               f"{n_in} names to match input.preprocessing", inp["feature_names_in"])
    score_kind = card["params"].get("score_kind", "elbo")
    expect(card["score"]["name"] == score_kind, "score.name", f"{json.dumps(score_kind)} like params.score_kind",
           card["score"]["name"])
    expect(cal["method"] != "conformal" or cal["alpha"] is not None, "calibration.alpha",
           f"{FRACTION.what} for a conformal threshold", cal["alpha"])
    history = card["training"]["history"]
    for i, row in enumerate(history[1:], 1):
        if row.keys() != history[0].keys():
            raise CardProblem(f"training.history[{i}]", "expected the same fields as training.history[0]")
