"""Every option of every ``sdd`` command, fed bad values chosen by its type: one line, exit 2.

The command tree is walked by introspection (``typer.main.get_command``), the groups that join
through the ``sdd.cli`` entry points (``sdd concepts``) included, so an option is covered the day it
is added, and a new command fails :func:`test_every_command_has_a_valid_base_invocation` until it
gets a line in :data:`BASE`. Each case changes one option of a valid base invocation to one bad
value and expects: exit status 2, exactly one stderr line starting ``error:`` that names the
option (or the bad path), no traceback, no output folder left behind, and no heavy work started.

Heavy work (loading a model, training the toy world, talking to MLflow or Prefect, starting
servers) is replaced by a stub that raises :class:`WorkStarted`: a bad value that gets that far
fails the walk, because it was not validated before the expensive part. The base invocations
must get that far (or finish), which :func:`test_every_command_has_a_valid_base_invocation`
checks. Everything runs in-process (typer's ``CliRunner``).
"""

from __future__ import annotations

import os
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from sdd.cli import app

REPO = Path(__file__).resolve().parents[1]
IS_ROOT = os.geteuid() == 0  # root reads a chmod 000 file: 'unreadable' is no test then

# --- what a bad value is, per kind of parameter ---------------------------------------------------
# Path values are placeholders, made real in each case's own folder (see materialise).

MISSING, FOLDER, FILE, NOT_UTF8, UNREADABLE, BELOW_A_FILE = (
    "{missing}", "{folder}", "{file}", "{not-utf8}", "{unreadable}", "{below-a-file}")

NUMBER = {"zero": "0", "negative": "-1", "huge": str(10**12), "not-a-number": "abc"}
TEXT = {"empty": "", "blank": "   ", "control-characters": "red\x1b[2J\nerror: fake", "10000-chars": "x" * 10_000}
INPUT_FILE = {"missing": MISSING, "a-folder": FOLDER, "not-utf8": NOT_UTF8,
              **({} if IS_ROOT else {"unreadable": UNREADABLE})}
INPUT_DIR = {"missing": MISSING, "a-file": FILE, **({} if IS_ROOT else {"unreadable": UNREADABLE})}
INPUT_PATH = {"missing": MISSING, "not-utf8": NOT_UTF8}
OUTPUT_DIR = {"empty": "", "a-file": FILE, "below-a-file": BELOW_A_FILE}

#: Bad values by kind: the parser an option declares (sdd/cli/types.py), else its annotation.
BAD_VALUES: dict[str, dict[str, str]] = {
    "Text": TEXT,
    "PathOrURI": {**TEXT, "missing": MISSING, "a-folder": FOLDER},
    "InputFile": INPUT_FILE,
    "InputDir": INPUT_DIR,
    "InputPath": INPUT_PATH,
    "OutputDir": OUTPUT_DIR,
    "number": NUMBER,
    "choice": {**TEXT, "not-a-choice": "bogus"},
    "text": TEXT,                                          # a plain str (e.g. --concept, checked by the command)
    "path": {"missing": MISSING, "a-folder": FOLDER, "not-utf8": NOT_UTF8},  # a Path of undeclared role
    "flag": {},                                            # takes no value
}

# --- a valid invocation of each command -------------------------------------------------------------
# Keys are options (or ARGUMENT names); "{out}" is an output path in the case's folder, the other
# placeholders are files the module fixture writes.

OUT = "{out}"
BASE: dict[str, dict[str, str]] = {
    "erase": {"--model": "toy", "--concept": "red", "--out": OUT},
    "toy build": {"--out": OUT},
    "toy check": {},
    "prompts build": {"--model-kind": "real", "--concept": "nudity", "--out": OUT},
    "evaluate": {"--model": "toy", "--prompts": "{prompts}", "--out": OUT},
    "redteam": {"--model": "toy", "--prompts": "{prompts}", "--out": OUT},
    "plots": {"--loss": "{loss}", "--rates": "{rates}", "--out": OUT},
    "register": {"--run": "{run}", "--eval": "{run}"},
    "promote": {"NAME": "sdd-erased", "VERSION": "1"},
    "models": {},
    "stack up": {},
    "stack down": {},
    "stack status": {},
    "concepts publish": {"--api-url": "http://127.0.0.1:9/api"},
}

#: Options that apply to another mode than their command's base invocation: (command, option) -> base.
BASE_FOR_OPTION: dict[tuple[str, str], dict[str, str]] = {
    ("prompts build", "--seeds-per-prompt"): {"--model-kind": "toy", "--concept": "red", "--out": OUT},
}

#: Values of the tables above that are valid, and why: the walk checks they are accepted.
ACCEPTED: dict[tuple[str, str, str], str] = {
    ("erase", "--steps", "huge"): "any number of steps is a valid (long) erasure; it checkpoints and can be stopped",
    ("toy build", "--seed", "zero"): "any non-negative integer is a seed",
    ("toy build", "--seed", "huge"): "any non-negative integer is a seed",
    ("toy check", "--seed", "zero"): "any non-negative integer is a seed",
    ("toy check", "--seed", "huge"): "any non-negative integer is a seed",
    ("prompts build", "--i2p-limit", "huge"): "a limit above the number of I2P rows keeps them all",
    ("prompts build", "--benign-limit", "huge"): "a limit above the number of COCO captions keeps them all",
    ("promote", "VERSION", "huge"): "whether a version exists is the registry's to say (one line, test_registry)",
}

#: Bad values still accepted, each with the reason it is not fixed here: strict xfails, so fixing
#: one fails the walk until its line is removed.
NOT_YET: dict[tuple[str, str, str], str] = {}  # (command, option, value) -> why it is still accepted


# --- the walk ---------------------------------------------------------------------------------------


def commands(group=None, path: tuple[str, ...] = ()) -> dict[str, typing.Any]:
    """Every leaf command of the tree, by its words (``"toy check"``)."""
    group = group if group is not None else typer.main.get_command(app)
    found = {}
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            found.update(commands(command, (*path, name)))
        else:
            found[" ".join((*path, name))] = command
    return found


def flag(param) -> str:
    """An option by its long flag, an argument by its upper-case name (as the error messages do)."""
    return max(param.opts, key=len) if param.param_type_name == "option" else param.name.upper()


def kind(param) -> str:
    """Which row of BAD_VALUES applies to ``param``."""
    descriptor = param.type_descriptor
    parser = descriptor.parameter_info.parser
    annotation = typing.get_args(descriptor.annotation)[0] if descriptor.is_list else descriptor.annotation
    if parser is not None:
        return type(parser).__name__
    if getattr(param, "is_flag", False):
        return "flag"
    if descriptor.is_choice:
        return "choice"
    if annotation in (int, float):
        return "number"
    if descriptor.is_path:
        return "path"
    if annotation is str:
        return "text"
    return f"unknown ({descriptor.annotation})"


@dataclass(frozen=True)
class Case:
    command: str
    option: str
    label: str
    value: str
    base: tuple[tuple[str, str], ...]
    order: tuple[tuple[str, bool], ...]  # every parameter of the command: (flag, is an argument)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.command, self.option, self.label

    def argv(self, fill) -> list[str]:
        values = {**dict(self.base), self.option: self.value}
        options = [part for name, is_argument in self.order if name in values and not is_argument
                   for part in (name, fill(values[name]))]
        arguments = [fill(values[name]) for name, is_argument in self.order if name in values and is_argument]
        # After "--", a negative VERSION is a value to check, not an unknown option "-1".
        return [*self.command.split(), *options, *(["--", *arguments] if arguments else [])]


def walk() -> list[Case]:
    cases = []
    for name, command in sorted(commands().items()):
        order = tuple((flag(p), p.param_type_name == "argument") for p in command.params)
        for param in command.params:
            base = BASE_FOR_OPTION.get((name, flag(param)), BASE.get(name, {}))
            for label, value in BAD_VALUES.get(kind(param), {"(no bad values for this kind)": ""}).items():
                cases.append(Case(name, flag(param), label, value, tuple(base.items()), order))
    return cases


CASES = walk()


class WorkStarted(Exception):
    """A stub of heavy work was called: validation did not stop the command before it."""


#: Where heavy work starts; each is replaced by a stub raising WorkStarted.
HEAVY_WORK = {
    "sdd.toy.train.build_toy_world": "training the toy world",
    "sdd.registry.register": "logging to MLflow",
    "sdd.registry.promote": "talking to MLflow",
    "sdd.registry.list_models": "talking to MLflow",
    "sdd.stack.up": "starting servers",
    "prefect.events.emit_event": "sending an event to Prefect",
}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A working folder (params/ from the repo) with the base invocations' inputs, heavy work stubbed."""
    from diffusers import DiffusionPipeline

    root = tmp_path_factory.mktemp("walk")
    (root / "params").symlink_to(REPO / "params")
    (root / "prompts.jsonl").write_text('{"prompt": "a red circle", "seed": 0}\n')
    (root / "loss.csv").write_text("step,loss\n1,0.5\n2,0.25\n")
    (root / "rates.csv").write_text("concept,model,rate\nred,base,0.9\nred,erased,0.1\n")
    (root / "run").mkdir()

    def stub(what: str):
        def started(*args, **kwargs):
            raise WorkStarted(what)
        return started

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_API_URL", "")  # `concepts publish` must not find a real server
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("SDD_PREFECT_DB_URL", raising=False)
        mp.delenv("SDD_MLFLOW_BACKEND_URI", raising=False)
        mp.setattr(DiffusionPipeline, "from_pretrained", classmethod(stub("loading a model")))
        for target, what in HEAVY_WORK.items():
            mp.setattr(target, stub(what))
        mp.chdir(root)
        yield root


def materialise(sandbox: Path, case_dir: Path):
    """The function that turns a case's placeholders into paths (creating the bad files they name)."""
    case_dir.mkdir()
    (case_dir / "a-folder").mkdir()
    (case_dir / "file.txt").write_text("a regular file\n")
    (case_dir / "not-utf8.yaml").write_bytes(b"\xff\xfe\x00steps: \xc3\x28\n")
    unreadable = case_dir / "unreadable.yaml"
    unreadable.write_text("steps: 1\n")
    unreadable.chmod(0)
    paths = {OUT: case_dir / "out", MISSING: case_dir / "missing" / "nothing.yaml", FOLDER: case_dir / "a-folder",
             FILE: case_dir / "file.txt", NOT_UTF8: case_dir / "not-utf8.yaml", UNREADABLE: unreadable,
             BELOW_A_FILE: case_dir / "file.txt" / "out", "{prompts}": sandbox / "prompts.jsonl",
             "{loss}": sandbox / "loss.csv", "{rates}": sandbox / "rates.csv", "{run}": sandbox / "run"}
    return lambda value: str(paths[value]) if value in paths else value


def invoke(argv: list[str]):
    return CliRunner().invoke(app, argv)


def assert_accepted(result, argv) -> None:
    """The command got as far as its heavy work, or finished."""
    started = isinstance(result.exception, WorkStarted)
    assert started or result.exit_code == 0, (argv[:6], result.exit_code, result.stderr, result.exception)


def assert_refused_in_one_line(result, case: Case, bad: str) -> None:
    where = f"{case.command} {case.option}={case.label}"
    assert not isinstance(result.exception, WorkStarted), (
        f"{where} was accepted and reached {result.exception}: validate it before that")
    assert result.exception is None or isinstance(result.exception, SystemExit), (where, result.exception)
    assert result.exit_code == 2, (where, result.exit_code, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr, where
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (where, result.stderr)
    named = (case.option, case.option.lstrip("-"), bad)
    assert any(n and n in lines[0] for n in named), (where, f"the line names neither {case.option} nor {bad!r}",
                                                     lines[0])


def case_id(case: Case) -> str:
    return f"{case.command.replace(' ', '-')}:{case.option}={case.label}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_a_bad_value_is_refused_in_one_line(case, sandbox, tmp_path, request):
    assert not case.label.startswith("("), f"no bad values known for {case.command} {case.option}; add its kind"
    if case.key in NOT_YET:
        request.applymarker(pytest.mark.xfail(reason=NOT_YET[case.key], strict=True))
    fill = materialise(sandbox, tmp_path / "case")
    argv = case.argv(fill)
    before = sorted(os.listdir(sandbox))
    result = invoke(argv)
    if case.key in ACCEPTED:
        assert_accepted(result, argv)
        return
    assert_refused_in_one_line(result, case, fill(case.value) if case.value.startswith("{") else "")
    assert not (tmp_path / "case" / "out").exists(), "an output folder was left behind"
    assert sorted(os.listdir(sandbox)) == before, "something was written to the working folder"


@pytest.mark.parametrize("command", sorted(commands()))
def test_every_command_has_a_valid_base_invocation(command, sandbox, tmp_path):
    """The base invocation reaches its heavy work (or finishes): so the walk's refusals are the bad value's."""
    assert command in BASE, f"`sdd {command}` is new: add a minimal valid invocation to BASE"
    bases = [BASE[command], *(b for (c, _), b in BASE_FOR_OPTION.items() if c == command)]
    if not any(c.command == command for c in CASES):
        pytest.skip("no options: nothing to walk")
    for i, base in enumerate(bases):
        fill = materialise(sandbox, tmp_path / f"base{i}")
        case = next(c for c in CASES if c.command == command)
        argv = Case(command, "", "", "", tuple(base.items()), case.order).argv(fill)
        assert_accepted(invoke(argv), argv)


def test_the_exception_tables_name_existing_cases():
    keys = {c.key for c in CASES}
    stale = [k for k in [*ACCEPTED, *NOT_YET] if k not in keys]
    assert not stale, f"entries for cases the walk no longer makes: {stale}"
    assert all(k in BASE for k in {c for c, _ in BASE_FOR_OPTION}), "BASE_FOR_OPTION names an unknown command"
