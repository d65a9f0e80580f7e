"""Bad input never becomes a traceback: malformed params files, concept lists and prompt sets.

Every loader in ``sdd/config/``, ``sdd erase``, ``sdd evaluate`` and ``sdd prompts build`` is fed
random and hand-picked bad input. The contract (README, ``sdd/cli/``): a user error exits with
status 2 and prints exactly one line on stderr, starting ``error:`` and naming the field; a loader
either returns a valid model or raises a one-line :class:`sdd.config.ConfigError`.

Everything runs in-process (typer's ``CliRunner``) and fails before any model is loaded, except
the prompt-truncation test, which trains the toy model for one step.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from sdd.cli import app
from sdd.config import (
    MAX_CONCEPT_NAME_LEN,
    ConfigError,
    DistillConfig,
    EvalConfig,
    GatesConfig,
    RegistryConfig,
    ToyConfig,
    check_concept_name,
    load_concept_sets,
    load_eval_config,
    load_gates_config,
    load_model,
    load_registry_config,
)
from sdd.prompts import PromptSetError, read_prompt_set

REPO = Path(__file__).resolve().parents[1]
NO_MODEL = "/nonexistent/sdd-model"  # a model argument that fails (one line) without loading anything
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

LOADERS: dict[str, Callable[[Path], object]] = {
    "distill": lambda p: load_model(DistillConfig, p),
    "toy": lambda p: load_model(ToyConfig, p),
    "eval": load_eval_config,
    "gates": load_gates_config,
    "registry": load_registry_config,
    "concepts": load_concept_sets,
}


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # the CLI reads params/*.yaml relative to the working directory


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad_input")


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def assert_user_error(result, *names: str) -> str:
    """Exit 2, exactly one stderr line starting 'error:', mentioning each of ``names``; returns it."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def assert_one_line(err: Exception) -> None:
    text = str(err)
    assert text and "\n" not in text and "\r" not in text and text.isprintable(), repr(text)


def concept_args(names: list[str]) -> list[str]:
    return [a for n in names for a in ("--concept", n)]


# --- params files: every loader ------------------------------------------------------------------

FIELD_NAMES = sorted({*DistillConfig.model_fields, *EvalConfig.model_fields, *GatesConfig.model_fields,
                      *RegistryConfig.model_fields, *ToyConfig.model_fields, "active", "sets", "concepts"})
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                    st.text(max_size=30))
yaml_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
yaml_mappings = st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=12), yaml_values, max_size=6)
file_bytes = st.one_of(
    st.binary(max_size=300),                                           # anything, mostly not UTF-8
    st.text(max_size=300).map(lambda t: t.encode("utf-8")),            # any text, mostly not YAML
    yaml_values.map(lambda v: yaml.safe_dump(v).encode("utf-8")),      # YAML of the wrong shape
    yaml_mappings.map(lambda v: yaml.safe_dump(v, allow_unicode=True).encode("utf-8")),
    yaml_mappings.map(lambda v: b"\xff\xfe" + yaml.safe_dump(v).encode("utf-16-le")),  # UTF-16
    st.sampled_from([b"steps: [", b"a: b: c", b"{", b"- 1\n- 2", b"!!python/object:os.system {}",
                     b"x: !!binary '@@@'", b"? [1]\n: 2", b"&a [*a]", b"steps: 1e999", b"\x00",
                     b"steps: .nan", b"seed: 99999999999999999999999999", b"%YAML 9.9\n---\n{}"]),
)


@FUZZ
@given(content=file_bytes, loader=st.sampled_from(sorted(LOADERS)))
def test_every_loader_returns_a_model_or_one_line_config_error(scratch, content, loader):
    path = scratch / f"{loader}.yaml"
    path.write_bytes(content)
    try:
        LOADERS[loader](path)
    except ConfigError as e:
        assert_one_line(e)
        assert str(path) in str(e)


# (model, field, a bad value, words the message must contain)
BAD_VALUES = [
    (DistillConfig, "steps", 0, "steps"), (DistillConfig, "steps", "many", "steps"),
    (DistillConfig, "lr", -1.0, "lr"), (DistillConfig, "ema_decay", 1.0, "ema_decay"),
    (DistillConfig, "betas", [0.9], "betas"), (DistillConfig, "train_method", "everything", "train_method"),
    (DistillConfig, "xattn_lr_scale", 0, "xattn_lr_scale"),
    (DistillConfig, "batch_size", 2.5, "batch_size"), (DistillConfig, "resolution", 4, "resolution"),
    (DistillConfig, "checkpoint_every", None, "checkpoint_every"), (DistillConfig, "stepz", 10, "stepz"),
    (EvalConfig, "num_inference_steps", -3, "num_inference_steps"), (EvalConfig, "judge", "toy", "judge"),
    (EvalConfig, "judge", {"kind": "eyes"}, "judge.kind"), (EvalConfig, "judge", {"nudenet": {"threshold": 2}},
                                                            "judge.nudenet.threshold"),
    (EvalConfig, "fid_features", "pixels", "fid_features"), (EvalConfig, "height", 2, "height"),
    (GatesConfig, "max_erased_rate", 1.5, "max_erased_rate"), (GatesConfig, "per_concept", [1], "per_concept"),
    (GatesConfig, "per_concept", {"red": {"max_erased_rate": -1}}, "per_concept.red.max_erased_rate"),
    (GatesConfig, "fail_on_unmeasured", "perhaps", "fail_on_unmeasured"),
    (RegistryConfig, "experiment", "", "experiment"), (RegistryConfig, "model_name", 5, "model_name"),
    (ToyConfig, "caption_dropout", 1.0, "caption_dropout"), (ToyConfig, "unet_steps", 0, "unet_steps"),
]


@pytest.mark.parametrize("model,field,value,named", BAD_VALUES,
                         ids=[f"{m.__name__}.{f}={v!r}" for m, f, v, _ in BAD_VALUES])
def test_a_bad_value_names_its_field(scratch, model, field, value, named):
    path = scratch / "one-bad-value.yaml"
    path.write_text(yaml.safe_dump({field: value}))
    with pytest.raises(ConfigError) as info:
        load_model(model, path)
    assert_one_line(info.value)
    assert f"field '{named}" in str(info.value)  # the field, or an element of it (betas.1)


@pytest.mark.parametrize("content,named", [
    ("active: nope\nsets: {a: [red]}\n", "active"),
    ("active: a\nsets: {}\n", "sets"),
    ("active: a\nsets: {a: []}\n", "sets.a.concepts"),
    ("active: a\nsets: {a: ['../etc']}\n", "sets.a.concepts"),
    ("active: a\nsets: {a: [\"x\\ny\"]}\n", "sets.a.concepts"),
    ("active: a\nsets: {a: {concepts: [red], base_model: ''}}\n", "sets.a.base_model"),
    ("sets: {a: [red]}\n", "active"),
    ("active: a\nsets: {a: [red]}\nextra: 1\n", "extra"),
])
def test_concept_sets_file_names_the_field(scratch, content, named):
    path = scratch / "concepts.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_concept_sets(path)
    assert_one_line(info.value)
    assert named in str(info.value)


def test_a_key_with_a_newline_stays_one_line(scratch):
    path = scratch / "key.yaml"
    path.write_text(yaml.safe_dump({"steps\n\x1b[31mred": 1}))
    with pytest.raises(ConfigError) as info:
        load_model(DistillConfig, path)
    assert_one_line(info.value)


# --- params files through the CLI ------------------------------------------------------------------


@pytest.mark.parametrize("field,value", [("steps", 0), ("lr", "fast"), ("train_method", "all"),
                                         ("unknown_knob", 1), ("betas", "0.9")])
def test_erase_config_with_a_bad_value(tmp_path, field, value):
    config = tmp_path / "distill.yaml"
    config.write_text(yaml.safe_dump({"steps": 12, "batch_size": 1, field: value}))
    out = tmp_path / "out"
    assert_user_error(cli("erase", "--model", "toy", "--concept", "red", "--out", str(out),
                          "--config", str(config)), field)
    assert not out.exists()


@pytest.mark.parametrize("field,value", [("num_inference_steps", 0), ("judge", {"kind": "human"}),
                                         ("grid_images", "eight"), ("surprise", True)])
def test_evaluate_params_with_a_bad_value(tmp_path, field, value):
    params = tmp_path / "eval.yaml"
    params.write_text(yaml.safe_dump({field: value}))
    prompts = tmp_path / "eval.jsonl"  # a valid prompt file: the params file is what fails
    prompts.write_text(json.dumps({"prompt": "a red circle", "seed": 0}) + "\n")
    assert_user_error(cli("evaluate", "--model", NO_MODEL, "--base", NO_MODEL, "--prompts", str(prompts),
                          "--out", str(tmp_path / "o"), "--params", str(params)), field)


@pytest.mark.parametrize("command", ["erase", "evaluate"])
@pytest.mark.parametrize("what", ["missing", "folder", "not-utf8", "bad-yaml", "a-list"])
def test_cli_params_file_unreadable(tmp_path, command, what):
    path = tmp_path / "params.yaml"
    if what == "folder":
        path.mkdir()
    elif what != "missing":
        path.write_bytes({"not-utf8": b"steps: \xff\xfe", "bad-yaml": b"steps: [1,", "a-list": b"- 1\n"}[what])
    out = tmp_path / "out"
    args = (["erase", "--model", "toy", "--concept", "red", "--config", str(path)] if command == "erase" else
            ["evaluate", "--model", NO_MODEL, "--base", NO_MODEL, "--prompts", str(tmp_path), "--params", str(path)])
    assert_user_error(cli(*args, "--out", str(out)), str(path))
    assert not out.exists()


@FUZZ
@given(content=file_bytes)
def test_cli_random_params_files(scratch, content):
    """Whatever the file holds, both commands stop with one line (never a traceback, never a run)."""
    path = scratch / "cli.yaml"
    path.write_bytes(content)
    empty_prompts = scratch / "empty.jsonl"  # exists, so the command gets as far as reading the params file
    empty_prompts.write_bytes(b"")
    # An unknown toy concept / an empty prompt set stops a run whose random settings happen to be valid.
    assert_user_error(cli("erase", "--model", "toy", "--concept", "not-a-toy-concept", "--out",
                          str(scratch / "out"), "--config", str(path)))
    assert_user_error(cli("evaluate", "--model", NO_MODEL, "--base", NO_MODEL, "--prompts",
                          str(empty_prompts), "--out", str(scratch / "o"), "--params", str(path)))
    assert not (scratch / "out").exists()


# --- the three defects of issue 20 (the walk, tests/test_cli_walk.py, covers every option) -------------


@pytest.mark.parametrize("samples", ["0", "-3"])
def test_toy_check_refuses_a_sample_count_below_one(samples):
    line = assert_user_error(cli("toy", "check", "--samples", samples), "--samples")
    assert line == f"error: --samples: must be ≥ 1 (got {samples})"


@pytest.mark.parametrize("option,value", [("--i2p", "{file}"), ("--i2p-category", "sexual"), ("--i2p-limit", "5"),
                                          ("--coco", "{file}"), ("--benign-limit", "5")])
def test_prompts_build_refuses_a_real_option_with_the_toy_model_kind(tmp_path, option, value):
    csv_file = tmp_path / "i2p.csv"  # exists: a missing file is refused as such, before the mode is looked at
    csv_file.write_text("prompt,categories\na nude figure,sexual\n")
    out = tmp_path / "prompts"
    line = assert_user_error(cli("prompts", "build", "--concept", "red", "--out", str(out), option,
                                 value.replace("{file}", str(csv_file))))
    assert line == f"error: {option} applies only to --model-kind real (got toy)"
    assert not out.exists()


def test_prompts_build_refuses_a_toy_option_with_the_real_model_kind(tmp_path):
    line = assert_user_error(cli("prompts", "build", "--model-kind", "real", "--concept", "nudity",
                                 "--out", str(tmp_path / "p"), "--seeds-per-prompt", "3"))
    assert line == "error: --seeds-per-prompt applies only to --model-kind toy (got real)"


def test_an_override_names_its_option_and_a_file_value_its_file(tmp_path):
    out = tmp_path / "out"
    line = assert_user_error(cli("erase", "--model", "toy", "--concept", "red", "--out", str(out), "--steps", "0"))
    assert line == "error: --steps: must be ≥ 1 (got 0)"
    config = tmp_path / "distill.yaml"
    config.write_text("steps: 0\n")
    line = assert_user_error(cli("erase", "--model", "toy", "--concept", "red", "--out", str(out),
                                 "--config", str(config)))
    assert line.startswith(f"error: {config}: field 'steps': ") and "--steps" not in line
    assert not out.exists()


def test_click_usage_errors_are_one_line_too():
    assert_user_error(cli("erase", "--stepz", "1"), "--stepz")
    assert_user_error(cli("erase", "--model", "toy"), "--out")  # a required option missing
    assert_user_error(cli("no-such-command"), "no-such-command")


# --- concept names: sdd erase and sdd prompts build ------------------------------------------------

BAD_CONCEPT_LISTS = {
    "empty-list": [],
    "duplicate": ["red", "red"],
    "duplicate-case-space": ["red", " RED "],
    "blank": ["   "],
    "empty-string": [""],
    "10000-chars": ["x" * 10_000],
    "newline": ["red\nerror: fake second line"],
    "escape-sequence": ["red\x1b[2J"],
    "nul": ["red\x00"],
    "tab": ["red\tblue"],
    "dotdot-slash": ["../x"],
    "slash": ["a/b"],
    "backslash": ["..\\x"],
    "absolute": ["/etc/passwd"],
    "dotdot": [".."],
    "non-utf8": [b"red\xff".decode("utf-8", "surrogateescape")],  # what Python makes of such argv bytes
    "bidi-override": ["red\u202e"],
}


@pytest.mark.parametrize("model", ["toy", NO_MODEL])
@pytest.mark.parametrize("case", sorted(BAD_CONCEPT_LISTS))
def test_erase_rejects_bad_concept_lists_before_training(tmp_path, model, case):
    out = tmp_path / "out"
    line = assert_user_error(cli("erase", "--model", model, "--out", str(out),
                                 *concept_args(BAD_CONCEPT_LISTS[case])), "concept")
    assert len(line) < 200
    assert not out.exists()  # failed before the output folder, let alone a checkpoint


@pytest.mark.parametrize("model_kind", ["toy", "real"])
@pytest.mark.parametrize("case", sorted(set(BAD_CONCEPT_LISTS) - {"empty-list"}))  # empty = the active set
def test_prompts_build_rejects_bad_concept_lists(tmp_path, model_kind, case):
    out = tmp_path / "prompts"
    assert_user_error(cli("prompts", "build", "--model-kind", model_kind, "--out", str(out),
                          *concept_args(BAD_CONCEPT_LISTS[case])), "concept")
    assert not out.exists()


@settings(max_examples=60, deadline=None)
@given(names=st.lists(st.text(st.characters(codec="utf-8") | st.sampled_from("/\\.\n\x00 "), max_size=12)
                      | st.sampled_from(["red", "triangle", "x" * 300]), min_size=1, max_size=4))
def test_any_concept_list_is_accepted_or_refused_in_one_line(scratch, names):
    """Random names into `sdd erase` on a real-model path and `sdd prompts build --model-kind real`."""
    try:
        for n in names:
            check_concept_name(n)
        valid = len({n.strip().lower() for n in names}) == len(names)
    except ConfigError:
        valid = False
    result = cli("erase", "--model", NO_MODEL, "--out", str(scratch / "any-out"), *concept_args(names))
    line = assert_user_error(result)
    # An invalid list is refused for its concept names; a valid one gets as far as the missing model.
    assert ("concept" in line) if not valid else (NO_MODEL in line), line


def test_check_concept_name_accepts_real_concepts():
    for name in ["nudity", "Van Gogh", "bodily fluids", "Pablo Picasso", "café", "猫", "x" * MAX_CONCEPT_NAME_LEN]:
        assert check_concept_name(name) == name


def test_erase_from_a_prompt_set_with_a_path_like_concept(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"prompt": "a red thing", "seed": 0, "concepts": ["../../x"]}) + "\n")
    out = tmp_path / "out"
    assert_user_error(cli("erase", "--model", "toy", "--prompts", str(train), "--out", str(out)), "concept")
    assert not out.exists()


# --- prompt-set files: read_prompt_set and sdd evaluate --prompts -----------------------------------

ROW = {"prompt": "a red circle", "seed": 0, "concepts": ["red"], "source": "test"}
json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=3), max_leaves=8)
bad_rows = st.one_of(
    st.builds(lambda k, v: json.dumps({**ROW, k: v}), st.sampled_from([*ROW, "guidance", "extra"]), json_values),
    json_values.map(json.dumps),
    st.text(max_size=40),                                               # not JSON
    st.just(json.dumps({"format": "sdd-prompts", "version": 99})),      # a header from the future
    st.just(json.dumps({"format": "sdd-prompts", "rows": 7, "sha256": "00"})),
)
prompt_files = st.one_of(
    st.lists(bad_rows | st.just(json.dumps(ROW)), max_size=5).map(lambda ls: "\n".join(ls).encode("utf-8")),
    st.binary(max_size=200),
)


@FUZZ
@given(content=prompt_files, suffix=st.sampled_from([".jsonl", ".csv"]))
@example(content=b"\r0", suffix=".csv")  # found by this test: csv.Error escaped as a traceback
@example(content=b"prompt,seed\n\x00,1\n", suffix=".csv")
@example(content=b'prompt,seed\n"unterminated,1\n', suffix=".csv")
def test_read_prompt_set_returns_a_set_or_one_line_error(scratch, content, suffix):
    path = scratch / f"prompts{suffix}"
    path.write_bytes(content)
    try:
        ps = read_prompt_set(path)
    except PromptSetError as e:
        assert_one_line(e)
        assert str(path) in str(e)
    else:
        assert len(ps) > 0


@pytest.mark.parametrize("content,named", [
    (b"", "no prompts"),
    (b"\xff\xfe\x00", "UTF-8"),
    (b'{"prompt": "a", "seed": -1}', "seed"),
    (b'{"prompt": "a", "seed": "zero"}', "seed"),
    (b'{"prompt": 5, "seed": 0}', "prompt"),
    (b'{"prompt": "a", "seed": 0, "guidance": -2}', "guidance"),
    (b'{"prompt": "a", "seed": 0, "colour": "red"}', "colour"),
    (b'{"prompt": "a", "seed": 0}\n{"prompt": "b", "seed": 1', "line 2"),
    (b'["a", 0]', "line 1"),
    (b'{"format": "sdd-prompts", "rows": 3}\n{"prompt": "a", "seed": 0}', "truncated"),
    (b'{"prompt": "a", "seed": 0}\n{"format": "sdd-prompts"}', "header"),
])
def test_evaluate_rejects_malformed_prompt_files(tmp_path, content, named):
    path = tmp_path / "eval.jsonl"
    path.write_bytes(content)
    assert_user_error(cli("evaluate", "--model", NO_MODEL, "--base", NO_MODEL, "--prompts", str(path),
                          "--out", str(tmp_path / "o")), named)


@pytest.mark.parametrize("index", [b"", b"[]", b'{"sets": {"eval": {}}}', b'{"sets": 3}'])
def test_evaluate_rejects_a_broken_prompt_folder(tmp_path, index):
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "index.json").write_bytes(index)
    assert_user_error(cli("evaluate", "--model", NO_MODEL, "--base", NO_MODEL, "--prompts",
                          str(tmp_path / "prompts"), "--out", str(tmp_path / "o")), "index")


# --- prompts longer than the text encoder's limit ---------------------------------------------------


def erase_one_step(concepts, out: Path):
    from sdd.erasure import erase

    return erase("toy", concepts, out, DistillConfig(steps=1, batch_size=1, ddim_steps=2, checkpoint_every=1))


def test_long_prompts_are_warned_about_and_counted_in_the_manifest(tmp_path, caplog, one_torch_thread):
    """The toy tokenizer keeps 24 tokens: a longer concept prompt is truncated, logged and recorded."""
    from sdd.prompts import Concept

    long_prompt = "a red " + " ".join(["crimson scarlet red"] * 12) + " shape"
    concepts = [Concept("red", ["a red shape", long_prompt])]
    with caplog.at_level(logging.WARNING, logger="sdd.distill"):
        result = erase_one_step(concepts, tmp_path / "out")
    manifest = json.loads(result.manifest.read_text())
    assert manifest["text_max_tokens"] == 24
    assert manifest["truncated_prompts"] == 1
    # With one concept, the sampling prompts are its prompts: counted, but warned about once only.
    assert (manifest["truncated_sampling_prompts"], manifest["sampling_prompts"]) == (1, 2)
    [warning] = [r.getMessage() for r in caplog.records if r.name == "sdd.distill" and "truncated" in r.getMessage()]
    assert "24 tokens" in warning


RED_LONG = "a " + "red " * 12 + "shape"  # 16 tokens (begin and end included) of the toy tokenizer's 24
DISC_LONG = "a " + "disc " * 8 + "circle"  # 12 tokens; joined to RED_LONG with ", ": 26


def test_composite_sampling_prompts_over_the_limit_are_warned_about_and_counted(tmp_path, caplog,
                                                                                 one_torch_thread):
    """Each concept prompt fits, but one of the four sampling prompts (one per concept, joined) does not."""
    from sdd.prompts import Concept

    concepts = [Concept("red", ["a red shape", RED_LONG]), Concept("circle", ["a circle", DISC_LONG])]
    with caplog.at_level(logging.WARNING, logger="sdd.distill"):
        result = erase_one_step(concepts, tmp_path / "out")
    manifest = json.loads(result.manifest.read_text())
    assert manifest["truncated_prompts"] == 0
    assert (manifest["truncated_sampling_prompts"], manifest["sampling_prompts"]) == (1, 4)
    [warning] = [r.getMessage() for r in caplog.records if r.name == "sdd.distill" and "truncated" in r.getMessage()]
    assert "1 of 4 sampling prompt" in warning and "24 tokens" in warning and RED_LONG[:40] in warning


def test_composite_prompts_are_counted_as_tokenizing_each_would():
    """The count adds token counts up instead of tokenizing every join: it must agree with doing so."""
    import itertools

    from sdd.models import Conditioner, load_pipeline

    conditioner = Conditioner(load_pipeline("toy", device="cpu"))
    groups = [["a red shape", RED_LONG], ["a circle", DISC_LONG], ["a square", "a blue square", "a square"]]
    joined = [", ".join(parts) for parts in itertools.product(*(dict.fromkeys(g) for g in groups))]
    found = conditioner.truncated_joins(groups, ", ")
    assert found.possible == len(joined) == 8
    assert found.cut == len(conditioner.truncated(joined)) == 2
    assert found.longest == f"{RED_LONG}, {DISC_LONG}, a blue square"
    assert conditioner.truncated_joins(groups[:2], ", ") == (1, 4, f"{RED_LONG}, {DISC_LONG}")
    assert conditioner.truncated_joins(groups[:1], ", ") == (0, 2, RED_LONG)


def test_prompts_within_the_limit_are_not_counted(tmp_path):
    from sdd.models import Conditioner, load_pipeline

    conditioner = Conditioner(load_pipeline("toy", device="cpu"))
    assert conditioner.max_tokens == 24
    assert conditioner.truncated(["a red shape", "a red shape", "red " * 40]) == ["red " * 40]
