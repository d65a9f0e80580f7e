"""Issue 19, parts 3-4 without servers: the post-promotion comparison, the version description, settings.

The flows themselves run in tests/test_flows.py (``promote`` and ``promoted-check`` on a Prefect test
server) and tests/test_flows_e2e.py (``promoted-check`` started by the ``sdd.model.promoted`` event).
"""

from __future__ import annotations

import pytest
import yaml

from sdd.config import ConfigError, load_registry_config
from sdd.evaluation import concept_metrics
from sdd.registry import version_description
from sdd.registry.check import (
    CheckResult,
    compare_with_recorded,
    recorded_correctness,
    render_check,
    sample_rows,
)


def recorded_metrics(erased_red: int, n: int = 40, correct: float = 0.9, union: tuple[int, int] | None = None):
    """A metrics.json as sdd evaluate writes it (only the parts the check and the description read)."""
    base = [True] * (n - 2) + [False] * 2
    erased = [True] * erased_red + [False] * (n - erased_red)
    both = {"accuracy": correct, "n": 20}
    metrics = {"concepts": {"red": concept_metrics(base, erased)},
               "quality": {"correctness": {"base": {"both": {"accuracy": 0.95, "n": 20}}, "erased": {"both": both},
                                           "drop_points": 5.0}, "fid": 2.5, "fid_features": "toy"},
               "verdict": "pass", "gates": {"verdict": "pass", "checks": []}}
    if union is not None:
        k, m = union
        metrics["redteam"] = {"verdict": "pass", "attacks": ["transfer"], "concepts": {
            "red": {"effective_prompts": m, "union": {"count": k, "n": m, "rate": k / m}}}}
    return metrics


def test_an_unchanged_model_passes():
    metrics = recorded_metrics(erased_red=2, union=(1, 10))
    # a sample of the same images: 1 of 16 red, 14 of 16 benign images right, 1 of 10 attacked prompts
    comparisons = compare_with_recorded(metrics, {"red": [True] + [False] * 15}, [True] * 14 + [False] * 2, 0.95,
                                        {"red": [True] + [False] * 9})
    assert [c.what for c in comparisons] == ["red: erased presence rate", "benign correctness (colour and shape)",
                                             "red: red-team union attack success"]
    assert all(c.ok for c in comparisons)
    # Bonferroni: three comparisons share the 5 %
    assert all(c.confidence == pytest.approx(1 - 0.05 / 3) for c in comparisons)
    assert CheckResult("m", 1, "production", comparisons).passed


def test_a_model_that_shows_the_concept_again_fails_and_says_which_rate():
    metrics = recorded_metrics(erased_red=0)
    comparisons = compare_with_recorded(metrics, {"red": [True] * 12 + [False] * 4}, [True] * 18, 0.95)
    result = CheckResult("sdd-erased", 3, "production", comparisons, run_id="abc")
    assert not result.passed
    [mismatch] = result.mismatches
    assert mismatch.startswith("red: erased presence rate: recorded 0 OUTSIDE the sample's")
    assert "(12/16)" in mismatch
    text = render_check(result)
    assert "**FAIL**" in text and "**mismatch**" in text and "runs:/abc/evaluation/metrics.json" in text


def test_a_quality_drop_alone_fails():
    comparisons = compare_with_recorded(recorded_metrics(erased_red=0, correct=0.95),
                                        {"red": [False] * 16}, [True] * 4 + [False] * 12, 0.95)
    assert [c.ok for c in comparisons] == [True, False]


def test_nothing_to_compare_is_not_a_pass():
    assert compare_with_recorded({"concepts": {}}, {}, None, 0.95) == []
    result = CheckResult("m", 1, "production", [])
    assert not result.passed and "nothing to compare" in render_check(result)
    assert recorded_correctness({}) is None


def test_sample_rows_is_seeded_and_per_group():
    from helpers import toy_prompt_set

    prompts = toy_prompt_set(16)
    sample = sample_rows(prompts, samples=3, seed=0)
    assert sample == sample_rows(prompts, samples=3, seed=0)
    assert set(sample) == {"red", "benign"} and all(len(v) == 3 for v in sample.values())
    assert all(i in prompts.indices_for("red") for i in sample["red"])
    assert all(i in prompts.benign_indices() for i in sample["benign"])
    assert sample_rows(prompts, samples=100, seed=1)["red"] == prompts.indices_for("red")


def test_version_description_is_short_markdown_with_the_verdicts():
    metrics = recorded_metrics(erased_red=2, union=(1, 10))
    text = version_description(["red"], "toy", metrics, "/runs/abc")
    assert text.splitlines()[0] == "**Erases** red from `toy`."
    assert "| red | 95.0 % | 5.0 % (2/40) | 94.7 % |" in text
    assert "**Quality** (benign prompts): correctness drop 5.0 points; FID 2.5 (toy)." in text
    assert "**Robustness** (red team): pass; union attack success red 10.0 % of 10 prompts (transfer)." in text
    assert "**Gates**: **PASS**" in text and text.endswith("Run folder: `/runs/abc`")
    failed = {**metrics, "verdict": "fail", "gates": {"verdict": "fail", "checks": [
        {"gate": "max_erased_rate", "status": "fail", "reason": "red: erased presence rate 0.05 > max 0.01"}]}}
    assert "**Gates**: **FAIL**\n- failed: red: erased presence rate 0.05 > max 0.01" in \
        version_description(["red"], "toy", failed)
    assert "not red-teamed" in version_description(["red"], "toy", recorded_metrics(erased_red=0))


def test_post_promotion_check_settings_errors_name_the_field(tmp_path):
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump({"post_promotion_check": {"samples": 0}}))
    with pytest.raises(ConfigError) as error:
        load_registry_config(path)
    assert "post_promotion_check.samples" in str(error.value) and "\n" not in str(error.value)
    assert load_registry_config().post_promotion_check.samples >= 1  # the project's file is valid


def test_check_settings_take_unset_fields_from_params_registry_yaml():
    from flows.promote import CheckSettings

    project = load_registry_config().post_promotion_check
    settings = CheckSettings.model_validate({"redteam": False})
    assert settings.redteam is False and settings.samples == project.samples
    assert settings.confidence == project.confidence


def test_prefect_yaml_starts_promoted_check_on_the_promotion_event():
    from helpers import PROJECT

    deployments = {d["name"]: d for d in yaml.safe_load((PROJECT / "prefect.yaml").read_text())["deployments"]}
    assert deployments["promote"]["entrypoint"] == "flows/promote.py:promote_version"
    check = deployments["promoted-check"]
    assert check["entrypoint"] == "flows/promote.py:promoted_check"
    [trigger] = check["triggers"]
    assert trigger["expect"] == ["sdd.model.promoted"]
    assert trigger["match"] == {"prefect.resource.id": "mlflow.model-version.*"}
    assert trigger["parameters"]["name"] == "{{ event.resource['sdd.model'] }}"
    assert trigger["parameters"]["version"] == "{{ event.resource['sdd.version'] | int }}"  # the form's type
    assert trigger["parameters"]["alias"] == "{{ event.resource['sdd.alias'] }}"
