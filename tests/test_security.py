"""Security checks: no unsafe deserialisation in the code, concept names never become raw paths,
and a secret in the environment never reaches MLflow or the manifest.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sdd.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(REPO / "sdd").rglob("*.py"), *(REPO / "flows").rglob("*.py")])
PLANTED = "sdd-planted-secret-123"


# --- unsafe deserialisation ---------------------------------------------------------------------

def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else kw.value
    return None


def unsafe_calls(path: Path) -> list[str]:
    """torch.load without weights_only=True, pickle & co., yaml.load without a safe loader, np.load
    with allow_pickle=True, trust_remote_code=True; as 'file:line what'."""
    found = []
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name and name.split(".")[0] in {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve",
                                                   "marshal"}:
                    found.append(f"{where} imports {name}")
        if not isinstance(node, ast.Call):
            continue
        func = _dotted(node.func)
        if func.endswith("torch.load") and _kw(node, "weights_only") is not True:
            found.append(f"{where} torch.load without weights_only=True")
        if func in {"yaml.load", "yaml.load_all"}:
            loader = _kw(node, "Loader")
            if not (isinstance(loader, ast.AST) and _dotted(loader).endswith(("SafeLoader", "CSafeLoader"))):
                found.append(f"{where} {func} without SafeLoader")
        if func in {"yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all"}:
            found.append(f"{where} {func}")
        if func.endswith(("np.load", "numpy.load")) and _kw(node, "allow_pickle") is True:
            found.append(f"{where} np.load(allow_pickle=True)")
        if _kw(node, "trust_remote_code") is True:
            found.append(f"{where} trust_remote_code=True")
        if func in {"eval", "exec"}:
            found.append(f"{where} {func}()")
    return found


def test_sources_were_found():
    assert len(SOURCES) > 10 and any(p.name == "engine.py" for p in SOURCES)


def test_no_unsafe_deserialisation_in_sdd_or_flows():
    problems = [p for path in SOURCES for p in unsafe_calls(path)]
    assert not problems, "\n".join(problems)


def test_no_torch_load_without_weights_only_by_text():
    """A plain-text check too, so an aliased or wrapped call (`load = torch.load`) is noticed."""
    problems = []
    for path in SOURCES:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if re.search(r"torch\.load\b", line) and "weights_only=True" not in line:
                problems.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
            if re.search(r"\bpickle\b", line) and not line.lstrip().startswith("#"):
                problems.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not problems, "\n".join(problems)


def test_the_checker_catches_what_it_should(tmp_path):
    bad = tmp_path / "probe.py"
    bad.write_text("import pickle\nimport torch, yaml\ntorch.load('x')\ntorch.load('x', weights_only=False)\n"
                   "yaml.load('a')\nyaml.load('a', Loader=yaml.SafeLoader)\nf(trust_remote_code=True)\n")
    found = unsafe_calls(bad)
    assert len(found) == 5, found


# --- concept names never become raw paths ------------------------------------------------------

HOSTILE = ["../../etc/passwd", "/abs/path", "..", ".", "a/../../b", "..\\..\\win", "a\x00b", "red\n", "~root",
           "con", "x" * 10_000, "\udcff", "-rf", " ", "$(rm -rf ~)", "a:b", "*?<>|"]


@settings(max_examples=200, deadline=None)
@given(name=st.text(max_size=300) | st.sampled_from(HOSTILE), prefix=st.sampled_from(["", "redteam-", "transfer-"]))
def test_report_grid_file_names_are_slugs_inside_the_grids_folder(name, prefix):
    from sdd.layout import RESERVED_STEMS, concept_stem

    slug = concept_stem(name, prefix)
    assert slug.startswith(prefix) and slug not in RESERVED_STEMS
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", slug) and len(slug) <= 80, slug
    root = Path("/srv/out/grids")
    assert (root / f"{slug}.png").resolve().parent == root


@settings(max_examples=200, deadline=None)
@given(a=st.text(max_size=100), b=st.text(max_size=100))
@example(a="van gogh", b="van-gogh")
@example(a="Red", b="red")
@example(a="benign", b="benign!")
@example(a="x" * 90, b="x" * 91)
@example(a="red!", b="red-" + hashlib.sha256(b"red!").hexdigest()[:8])  # a name spelled like a hashed stem
def test_different_concept_names_get_different_file_stems(a, b):
    from sdd.layout import concept_stem

    assert (concept_stem(a) == concept_stem(b)) == (a == b)


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_concept_names_are_refused_where_they_enter(name):
    """Concept, concept sets and prompt rows refuse names that could act as paths or break a line."""
    from sdd.config import ConceptSet, check_concept_name
    from sdd.prompts import Concept, PromptRow

    harmless = name in {"~root", "con", "-rf", "$(rm -rf ~)", "a:b", "*?<>|"}  # odd, but no path parts
    for make in (lambda: Concept(name), lambda: ConceptSet(concepts=[name])):
        if harmless:
            make()
        else:
            with pytest.raises((ConfigError, ValueError)):
                make()
    try:  # prompt rows strip and lower-case concepts first ("red\n" is "red"); what is left must be valid
        row = PromptRow(prompt="p", seed=0, concepts=(name,))
    except (ConfigError, ValueError):
        assert not harmless
    else:
        assert all(check_concept_name(c) for c in row.concepts)


def test_flow_run_folders_are_keyed_by_a_digest_not_by_concept_names(tmp_path):
    pytest.importorskip("prefect")
    from flows.params import PromptOptions
    from flows.plan import make_plan
    from sdd.config import ConfigError, DistillConfig, EvalConfig, GatesConfig

    for unsafe in (["../../escape"], ["/etc"], ["a\\b"]):  # refused outright, before any folder exists
        with pytest.raises(ConfigError, match="path separators"):
            make_plan(unsafe, "toy", DistillConfig(), EvalConfig(), GatesConfig(), PromptOptions(),
                      str(tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()
    plan = make_plan(["bodily fluids", "Ünïcode; rm -rf ~", "C:red"], "org/sd-model", DistillConfig(), EvalConfig(),
                     GatesConfig(), PromptOptions(), str(tmp_path / "runs"))
    runs = (tmp_path / "runs").resolve()
    for folder in (plan.run_dir, plan.prompts_dir, plan.erasure_dir, plan.eval_dir):
        assert folder.resolve().is_relative_to(runs)
        assert re.fullmatch(r"[0-9a-f]{16}", plan.run_dir.name)
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(["runs", plan.key, "plan.json"])


# --- a secret in the environment is never logged --------------------------------------------------

SECRET_ENV = {"AWS_SECRET_ACCESS_KEY": PLANTED, "SDD_DB_PASSWORD": PLANTED + "-pw",
              "HF_TOKEN": PLANTED + "-hf", "MLFLOW_TRACKING_TOKEN": PLANTED + "-mlflow"}


def _texts_under(folder: Path) -> dict[str, str]:
    out = {}
    for path in folder.rglob("*"):
        if path.is_file() and path.stat().st_size < 5_000_000:
            out[str(path)] = path.read_bytes().decode("utf-8", "replace")
    return out


@pytest.mark.timeout(600)
def test_planted_secret_reaches_neither_mlflow_nor_the_manifest(tmp_path, monkeypatch):
    import torch
    from mlflow.tracking import MlflowClient
    from tiny_models import save_tiny_pipeline

    from sdd import registry
    from sdd.config import DistillConfig, RegistryConfig
    from sdd.erasure import erase
    from sdd.prompts import Concept

    for key, value in SECRET_ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = save_tiny_pipeline("sd1", tmp_path / "base")
        out = tmp_path / "erasure"
        erase(str(base), [Concept("red", ["a red circle"])], out,
              DistillConfig(steps=2, ddim_steps=2, checkpoint_every=100, seed=1))
    finally:
        torch.set_num_threads(threads)

    manifest = (out / "manifest.json").read_text()
    assert PLANTED not in manifest
    assert not [f for f, text in _texts_under(out).items() if PLANTED in text]

    store = tmp_path / "store"
    cfg = RegistryConfig(tracking_uri=f"sqlite:///{store / 'mlflow.db'}", experiment="sdd-security",
                         artifact_location=str(store / "artifacts"))
    store.mkdir()
    reg = registry.register(out, None, cfg)

    client = MlflowClient(cfg.tracking_uri)
    run = client.get_run(reg.run_id)
    logged = [*run.data.params.items(), *run.data.tags.items()]
    for mv in client.search_model_versions(f"name = '{reg.name}'"):
        logged += list(mv.tags.items())
    logged += list(client.get_registered_model(reg.name).tags.items())
    assert len(logged) > 20
    leaks = [f"{k}={v}" for k, v in logged if PLANTED in f"{k}={v}"]
    assert not leaks, leaks

    artifacts = _texts_under(store)  # every artifact (manifest, loss, MLmodel, code, requirements) and the db
    assert any(p.endswith("MLmodel") for p in artifacts)
    leaked_files = [f for f, text in artifacts.items() if PLANTED in text]
    assert not leaked_files, leaked_files
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == PLANTED  # the secret really was in the environment
