"""The UI path in a real browser: Deployments -> erase-concepts -> Run -> Custom run -> Submit.

Headless Chromium from Debian's ``chromium`` package (``/usr/bin/chromium``; ``scripts/bootstrap.sh``
installs it where it can), driven by Playwright for Python with ``executable_path`` -- Playwright's
own browser download is never used. The whole local stack runs on free ports (the ``stack`` fixture
of ``conftest.py``: Prefect server, MLflow server, cpu + gpu workers, everything in a
temporary folder). The test fills the typed parameter form field by field -- ``concepts``, the tiny
settings of ``TINY`` inside the ``distill`` / ``evaluation`` / ``prompts`` sections, every gate of
``GATES_OFF`` switched to *None*, a temporary ``runs_dir`` -- submits it, and waits until the run is
Completed. Screenshots of the filled form and of the completed run page are saved in a folder the
test prints (and copied into ``$SDD_TEST_ARTIFACTS`` when set).

Run it alone: ``pytest -m slow tests/test_ui_browser.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import helpers
import pytest
from helpers import GATES_OFF, TINY

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(not CHROMIUM.is_file(),
                       reason=f"{CHROMIUM} is missing: install Debian's chromium (apt-get install "
                              "--no-install-recommends chromium; scripts/bootstrap.sh does it when run as root)"),
]

def _title(field: str) -> str:
    """Pydantic's title of a nested field, as the form labels it: ``ddim_steps`` -> ``Ddim Steps``.

    Top-level parameters are labelled by their plain names (``distill``, ``runs_dir``).
    """
    return " ".join(part.capitalize() for part in field.split("_"))


def prop(scope, label: str):
    """The form property (``div.schema-form-property``) directly labelled ``label`` inside ``scope``.

    Labels read ``"<label>"`` or ``"<label> (Optional)"``; a section's own label is matched, not
    the labels of the fields nested in it.
    """
    own_label = ("./div[contains(@class,'p-label__header')]//span[contains(@class,'schema-form-property__label')]"
                 f"[normalize-space()='{label}' or normalize-space()='{label} (Optional)']")
    found = scope.locator(f"xpath=.//div[contains(concat(' ', normalize-space(@class), ' '),"
                          f" ' schema-form-property ')][{own_label}]")
    found.first.wait_for()
    assert found.count() == 1, f"expected one form field labelled {label!r}, found {found.count()}"
    return found


def value_input(field):
    """The text / number input of a leaf field (the first one in its body)."""
    return field.locator(":scope > .p-label__body").locator("input, textarea").first


def fill_number(section, name: str, value: int) -> None:
    field = prop(section, _title(name))
    choice = field.locator(":scope > .p-label__body").get_by_role("button", name=re.compile(r"^(int|float)$"))
    if choice.count():  # a nullable number ("int | None"): pick the number type first
        choice.first.click()
    fill_until_it_holds(field, str(value))


def fill_until_it_holds(field, text: str, timeout_s: float = 15) -> None:
    """Fill the field's input with ``text`` until the input holds it: the form can re-render a field
    (picking a nullable number's type, a section opening) just after a fill and put its default back."""
    deadline = time.monotonic() + timeout_s
    while True:
        box = value_input(field)
        box.fill(text)
        if box.input_value() == text:
            return
        assert time.monotonic() < deadline, f"the field keeps {box.input_value()!r} instead of {text!r}"


def set_none(section, name: str) -> None:
    """Switch a nullable field to its ``None`` type: the form then sends an explicit null."""
    field = prop(section, _title(name))
    field.locator(":scope > .p-label__body").get_by_role("button", name="None", exact=True).first.click()
    assert "Property is type" in field.inner_text()


def fill_custom_run_form(page, runs_dir: str) -> None:
    """concepts = [red], the TINY numbers (the red team's attack budgets inside their own sections, its
    cost curves off),
    every gate of GATES_OFF set to None (robustness's inside its own section), a temporary runs_dir."""
    concepts = prop(page, "concepts")
    value_input(concepts).fill("red")
    assert concepts.locator("input, textarea").count() == 1  # exactly one concept
    for section_name in ("distill", "evaluation", "prompts", "redteam"):
        section = prop(page, section_name)
        for name, value in TINY[section_name].items():
            if isinstance(value, dict):  # an attack's budget: a section in redteam
                for field_name, field_value in value.items():
                    fill_number(prop(section, _title(name)), field_name, field_value)
            elif value is None:  # a nullable section turned off (the red team's cost curves)
                set_none(section, name)
            else:
                fill_number(section, name, value)
    gates = prop(page, "gates")
    for name, value in GATES_OFF.items():
        section = gates if value is None else prop(gates, _title(name))  # robustness: a section in gates
        for field_name, field_value in ({name: value} if value is None else value).items():
            assert field_value is None
            set_none(section, field_name)
    value_input(prop(page, "runs_dir")).fill(runs_dir)


def submit(page, stack, run_name: str, attempts: int = 3) -> str:
    """Click Submit; return the id of the flow run the UI created.

    The UI does not retry a failed ``create_flow_run`` (on 2 busy cores Prefect can answer 503 while
    its SQLite database is locked); it shows an error toast and keeps the form, and a person clicks
    Submit again. So does this, after checking through the API that no run of that name exists.
    """
    def is_create(response) -> bool:
        return response.request.method == "POST" and response.url.split("?")[0].endswith("/create_flow_run")

    for attempt in range(1, attempts + 1):
        with page.expect_response(is_create) as answer:
            page.get_by_role("button", name="Submit", exact=True).click()
        response = answer.value
        if response.ok:
            return response.json()["id"]
        found = helpers.api(stack, "POST", "/flow_runs/filter", {"flow_runs": {"name": {"any_": [run_name]}}})
        if found:  # created after all; the answer was lost
            page.goto(f"{stack['prefect_ui']}/deployments/deployment/{found[0]['deployment_id']}")
            return found[0]["id"]
        failure = f"create_flow_run answered {response.status}: {response.text()[:500]}"
        print(f"Submit {attempt}: {failure}")
        if response.status < 500:  # a 4xx is the form's (or the flow's) fault: clicking again will not help
            break
        time.sleep(5)
    raise AssertionError(f"the UI could not create the flow run: {failure}")


def screenshot(page, path: Path) -> None:
    """The whole page: the UI scrolls an inner panel, so the viewport is grown to its height first."""
    size = page.viewport_size
    height = page.evaluate("Math.max(...Array.from(document.querySelectorAll('*'), e => e.scrollHeight))")
    page.set_viewport_size({"width": size["width"], "height": max(size["height"], min(int(height), 12_000))})
    try:
        page.screenshot(path=str(path), full_page=True)
    finally:
        page.set_viewport_size(size)


def artifacts_dir(tmp_path: Path) -> Path:
    out = tmp_path / "ui-screenshots"
    out.mkdir()
    print(f"\nUI screenshots: {out}")
    return out


def keep(out: Path) -> None:
    """Copy the screenshots into ``$SDD_TEST_ARTIFACTS`` (a folder a CI job can upload) when it is set."""
    target = os.environ.get("SDD_TEST_ARTIFACTS")
    if target:
        dest = Path(target) / "ui-browser"
        shutil.copytree(out, dest, dirs_exist_ok=True)
        print(f"UI screenshots copied to {dest}")


@pytest.fixture
def browser_page():
    """A headless page of Debian's Chromium (never a browser Playwright downloads)."""
    from playwright.sync_api import sync_playwright  # the dev extra

    with sync_playwright() as pw:
        # --no-sandbox: CI and our machines run as root, where Chromium's sandbox refuses to start
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)  # a UI served from 2 busy cores can be slow to answer
        page.api_errors = []  # the UI's failed API calls, for the failure message
        page.on("response", lambda r: r.status >= 400 and page.api_errors.append(
            f"{r.request.method} {r.url} -> {r.status} {r.status_text}"))
        page.on("requestfailed", lambda r: page.api_errors.append(f"{r.method} {r.url} -> {r.failure}"))
        try:
            yield page
        finally:
            if page.api_errors:
                print("UI API calls that failed:", *page.api_errors, sep="\n  ")
            browser.close()


def test_custom_run_from_the_ui_completes(browser_page, stack, tmp_path):
    page, out = browser_page, artifacts_dir(tmp_path)
    runs_dir = str(tmp_path / "runs")
    try:
        # Deployments -> erase-concepts -> Run -> Custom run, as a person would click
        page.goto(f"{stack['prefect_ui']}/deployments")
        page.get_by_role("link", name="erase-concepts", exact=True).first.click()
        page.wait_for_url("**/deployments/deployment/*")
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_text("Custom run", exact=True).click()
        page.wait_for_url("**/run?**")

        fill_custom_run_form(page, runs_dir)
        screenshot(page, out / "custom-run-form.png")

        run_name = page.locator(".flow-run-name-input input").input_value()
        run_id = submit(page, stack, run_name)
        # back on the deployment page (its toast's "View run" button lives 5 s): open the run from the list
        page.wait_for_url("**/deployments/deployment/*")
        page.get_by_role("link", name=run_name, exact=True).first.click()
        page.wait_for_url(f"**/runs/flow-run/{run_id}*")
        print(f"flow run {run_name} ({run_id}): {page.url}")

        # what the form sent: the tiny settings and the gates off, merged into the form's defaults
        parameters = helpers.api(stack, "GET", f"/flow_runs/{run_id}")["parameters"]
        assert parameters["concepts"] == ["red"] and parameters["runs_dir"] == runs_dir
        for section in ("distill", "evaluation", "prompts"):
            assert TINY[section].items() <= parameters[section].items(), (section, parameters[section])
        for name, value in TINY["redteam"].items():  # a plumbing test: the tiny attack budgets, not the gate's
            sent = parameters["redteam"][name]
            assert value.items() <= sent.items() if isinstance(value, dict) else sent == value, (name, sent)
        sent = parameters["gates"]
        assert all(sent[k] == v if v is None else v.items() <= sent[k].items() for k, v in GATES_OFF.items()), sent

        started = time.monotonic()
        run = helpers.wait_for_run(stack, run_id, timeout_s=600)
        print(f"run finished as {run['state_type']} after {time.monotonic() - started:.0f} s")
        assert run["state_type"] == "COMPLETED", run["state"]
        page.reload()
        page.get_by_text("Completed", exact=True).first.wait_for()
        page.get_by_text(f"Beginning flow run '{run_name}'").first.wait_for()  # the logs have loaded
        page.wait_for_timeout(3000)  # the run graph draws on a canvas after its data arrives
        screenshot(page, out / "completed-run.png")
    finally:
        try:
            screenshot(page, out / "last-page.png")  # where it stopped, also when it failed
        except Exception as exc:  # the page may be gone; the original failure matters more
            print(f"no last-page screenshot: {exc}")
        keep(out)

    [distill_run] = helpers.runs_of(stack, "distill/distill-gpu")
    assert distill_run["state_type"] == "COMPLETED" and distill_run["work_pool_name"] == "gpu"
    assert "alias `candidate`" in helpers.artifact_text(stack, run_id, "erasure-report")
    assert any(Path(runs_dir).glob("*/erasure/patch.safetensors"))
