"""The page at / and the HTML evaluation report in a real headless Chromium, driven by Selenium: type a text, see
the bars with their thresholds, the predicted labels and the highlighted words, with and without an API key; text
holding markup stays text; the report opens and its images load.

Needs Debian's `chromium` and `chromium-driver` (.ci/run installs them). Without them the tests skip, except under
CI=true, where a missing browser fails them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import CLINC_LAYOUT, CONFERENCES, TOXIC_LABELS

import eval as evaluation
from app import create_app
from inferer import ModelInferer
from serving.settings import ServingSettings
from utils.checkpoint.contract import backbone_name
from utils.config import make_config
from utils.data.prepare import prepare_splits
from utils.inference.explain import split_words

ROOT = Path(__file__).resolve().parent.parent

KEY = "page-test-key"
WAIT_SECONDS = 120  # a loaded 2-core machine: explanations and page loads can take a while
TEXT = "You are a complete idiot and a liar, go away."
MARKUP = '<img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned"</script> <b>bold</b> idiot'


def find_browser() -> tuple[str, str]:
    """Chromium and its driver; a skip where they are missing, a failure in CI."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        browser = None
    if browser and driver:
        return browser, driver
    message = ("no headless browser: install Debian's chromium and chromium-driver (apt-get install chromium "
               "chromium-driver) and selenium (requirements.txt)")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1200,1400", "--disable-extensions", "--no-first-run"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(WAIT_SECONDS)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def inferer(multilabel_checkpoint) -> ModelInferer:
    return ModelInferer(multilabel_checkpoint)


@contextmanager
def serving(inferer: ModelInferer, api_key: str | None = None, **settings) -> Iterator[str]:
    """The app on a free port of 127.0.0.1, in a thread; yields its base URL."""
    from werkzeug.serving import make_server

    app = create_app(inferer, ServingSettings(api_key=api_key, **settings))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def wait_for(driver, condition, message: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_SECONDS).until(lambda d: condition(d), message)


def elements(driver, selector: str) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def explain_on_page(driver, text: str) -> None:
    """Type `text` into the box, press Explain and wait for the words of this text."""
    box = elements(driver, "#text")[0]
    box.clear()
    box.send_keys(text)
    elements(driver, "#explain")[0].click()
    wait_for(driver, lambda d: d.execute_script("return document.getElementById('words').textContent") == text
             and elements(d, "#bars .bar-row"), "no explanation on the page")


def test_page_shows_scores_thresholds_predicted_labels_and_highlighted_words(browser, inferer):
    from selenium.webdriver.support.ui import Select

    with serving(inferer) as base:
        browser.get(base)
        wait_for(browser, lambda d: elements(d, "#card dl"), "no model card")
        card = elements(browser, "#card")[0].text
        for expected in ("multi-label", backbone_name(inferer.info.backbone), "transformer", *TOXIC_LABELS,
                         f"{inferer.thresholds[0]:.4f}", "mean roc auc"):
            assert expected in card, expected
        assert elements(browser, "#key-panel")[0].get_attribute("hidden") is not None  # no key asked for
        placeholder = elements(browser, "#text")[0].get_attribute("placeholder")
        assert placeholder == "Paste a text to score it against each label"
        assert [th.text for th in elements(browser, "#labels th")] == ["label", "threshold", "ROC AUC", "F1"]
        assert len(elements(browser, "#labels tr")) == 1 + len(TOXIC_LABELS) and not elements(browser, "#card details")
        explain_on_page(browser, TEXT)

        expected = inferer.explain(TEXT, labels=TOXIC_LABELS)
        rows = elements(browser, "#bars .bar-row")
        assert [row.get_attribute("data-label") for row in rows] == TOXIC_LABELS  # every label, in its order
        assert not elements(browser, "#more-bars")[0].is_displayed()
        assert elements(browser, "#bars-note")[0].text.startswith("The tick on each bar is the label's threshold")
        assert len(elements(browser, "#bars .threshold")) == len(TOXIC_LABELS)
        predicted = [row.get_attribute("data-label") for row in rows if "predicted" in row.get_attribute("class")]
        assert predicted == expected["labels"]
        assert [tag.text for tag in elements(browser, "#predicted .tag")] == expected["labels"]
        for row, label in zip(rows, TOXIC_LABELS, strict=True):
            width = browser.execute_script("return arguments[0].querySelector('.fill').style.width", row)
            assert float(width.rstrip("%")) == pytest.approx(100 * expected["scores"][label], abs=0.01)

        words = elements(browser, "#words .word")
        assert [w.text for w in words] == [TEXT[s:e] for s, e in split_words(TEXT)]
        picked = Select(elements(browser, "#label")[0])
        for label in ("threat", "insult"):
            picked.select_by_visible_text(label)
            shown = [float(w.get_attribute("data-score")) for w in elements(browser, "#words .word")]
            assert shown == pytest.approx(expected["attributions"][label], abs=1e-5)
            colours = {w.value_of_css_property("background-color") for w in elements(browser, "#words .word")}
            assert len(colours) > 1  # highlighted by attribution, not one flat colour
        elements(browser, "#bars .bar-row")[TOXIC_LABELS.index("obscene")].click()  # a bar picks its label too
        assert picked.first_selected_option.text == "obscene"
        assert not [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def test_text_holding_markup_stays_text(browser, inferer):
    with serving(inferer) as base:
        browser.get(base)
        wait_for(browser, lambda d: elements(d, "#card dl"), "no model card")
        explain_on_page(browser, MARKUP)
        assert elements(browser, "#words img, #words script, #words b") == []
        assert "<script>" in elements(browser, "#words")[0].text
        assert browser.title == "Text classifier"
        assert browser.execute_script("return document.querySelectorAll('img, script:not([src])').length") == 0


def test_page_with_an_api_key_asks_for_it_and_uses_it(browser, inferer):
    with serving(inferer, api_key=KEY) as base:
        browser.get(base)
        wait_for(browser, lambda d: elements(d, "#key-panel")[0].get_attribute("hidden") is None,
                 "the key field was not shown")
        assert "needs an API key" in elements(browser, "#status")[0].text
        key = elements(browser, "#api-key")[0]
        key.send_keys("wrong-key")
        elements(browser, "#use-key")[0].click()
        wait_for(browser, lambda d: "refused" in elements(d, "#status")[0].text, "a wrong key was not refused")
        key.clear()
        key.send_keys(KEY)
        elements(browser, "#use-key")[0].click()
        wait_for(browser, lambda d: elements(d, "#card dl"), "no model card with the right key")
        explain_on_page(browser, TEXT)
        assert len(elements(browser, "#bars .bar-row")) == len(TOXIC_LABELS)
        assert [w.text for w in elements(browser, "#words .word")] == [TEXT[s:e] for s, e in split_words(TEXT)]


def test_a_correction_made_on_the_page_lands_once_and_trains(browser, inferer, toxic_csv, tmp_path):
    """Behind the key: the model's labels ticked, a person changes them and saves; one line per save (the button
    stays off until the labels change), read back by --extra-data with the text once and its last labels."""
    corrections = tmp_path / "corrections.jsonl"
    with serving(inferer, api_key=KEY, corrections_file=str(corrections)) as base:
        browser.get(base)
        key = elements(browser, "#api-key")[0]
        wait_for(browser, lambda d: key.is_displayed(), "the key field was not shown")
        key.send_keys(KEY)
        elements(browser, "#use-key")[0].click()
        wait_for(browser, lambda d: elements(d, "#card dl"), "no model card with the key")
        explain_on_page(browser, TEXT)
        predicted = inferer.predict(TEXT)["labels"]
        ticks = elements(browser, "#choices input[type=checkbox]")
        assert [t.get_attribute("value") for t in ticks] == TOXIC_LABELS
        assert [t.get_attribute("value") for t in ticks if t.is_selected()] == predicted
        wanted = ["threat"] if predicted != ["threat"] else ["insult"]
        for tick in ticks:
            if tick.is_selected() != (tick.get_attribute("value") in wanted):
                tick.click()
        save = elements(browser, "#save-correction")[0]
        save.click()
        wait_for(browser, lambda d: "Saved" in elements(d, "#correct-status")[0].text, "not saved")
        assert elements(browser, "#correct-status")[0].text == f"Saved ({wanted[0]}) to corrections.jsonl."
        assert not save.is_enabled()  # a second click cannot save the same labels twice
        rows = [json.loads(line) for line in corrections.read_text().splitlines()]
        assert [(r["text"], r["labels"], r["model_labels"]) for r in rows] == [(TEXT, wanted, predicted)]
        ticks[TOXIC_LABELS.index(wanted[0])].click()  # none after all
        wait_for(browser, lambda d: save.is_enabled(), "a change did not turn saving back on")
        save.click()
        wait_for(browser, lambda d: "no label" in elements(d, "#correct-status")[0].text, "not saved again")
    assert len(corrections.read_text().splitlines()) == 2
    layout = {"task": "multilabel", "test_split": 0.2, "val_split": 0.2, "text_column": "comment_text",
              "label_columns": TOXIC_LABELS}
    plain = prepare_splits(make_config(data=str(toxic_csv), **layout))
    merged = prepare_splits(make_config(data=str(toxic_csv), extra_data=[str(corrections)], **layout))
    assert len(merged.train) == len(plain.train) + 1 and merged.train.texts.count(TEXT) == 1
    assert not merged.train.labels[merged.train.texts.index(TEXT)].any()


def test_page_of_a_blended_checkpoint_shows_its_members_and_explains_the_blend(browser, blend_checkpoint):
    blended = ModelInferer(blend_checkpoint)
    with serving(blended) as base:
        browser.get(base)
        wait_for(browser, lambda d: elements(d, "#card dl"), "no model card")
        card = elements(browser, "#card")[0].text
        assert "transformer, tfidf" in card and "transformer share" in card
        explain_on_page(browser, TEXT)
        expected = blended.explain(TEXT, labels=TOXIC_LABELS)
        picked = elements(browser, "#label")[0].get_attribute("value")
        shown = [float(w.get_attribute("data-score")) for w in elements(browser, "#words .word")]
        assert shown == pytest.approx(expected["attributions"][picked], abs=1e-5)


def test_page_says_none_of_these_with_its_score(browser, multiclass_checkpoint, tmp_path):
    """A multi-class checkpoint whose rule rejects every text (threshold 0) shows "none of these" and the score,
    and no class tag."""
    import json

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(multiclass_checkpoint, checkpoint)
    info = json.loads((checkpoint / "classifier.json").read_text())
    (checkpoint / "classifier.json").write_text(json.dumps(info | {"none_threshold": 0.0}))
    rejecting = ModelInferer(checkpoint)
    text = "a study of packet scheduling in wireless networks"
    expected = rejecting.predict(text)
    assert expected["none_of_these"] is True and expected["labels"] == []
    with serving(rejecting) as base:
        browser.get(base)
        wait_for(browser, lambda d: elements(d, "#card dl"), "no model card")
        explain_on_page(browser, text)
        assert [tag.text for tag in elements(browser, "#predicted .tag")] == ["none of these"]
        shown = elements(browser, "#predicted")[0].text
        assert f"none score {expected['none_score']:.3f}, at or over 0.000" in shown
        assert not [row for row in elements(browser, "#bars .bar-row") if "predicted" in row.get_attribute("class")]


INTENT_TEXT = "what is my credit score right now"


def shown_rows(driver, selector: str) -> list:
    return [row for row in elements(driver, selector) if row.is_displayed()]


def test_page_of_150_intents_says_classify_and_bounds_its_lists(browser, clinc_checkpoint, tmp_path):
    """An intent model: 'classify' wording; a class table without the columns it has no figures for, its 10
    lowest-F1 classes open and all 150 folded; the 10 best-scoring bars open and the other 140 folded; a
    correction picks one class from a list, highest score first."""
    intents = ModelInferer(clinc_checkpoint)
    browser.get_log("browser")  # what earlier tests left there (the key test's 401s)
    corrections = tmp_path / "intents.jsonl"
    with serving(intents, corrections_file=str(corrections)) as base:
        browser.get(base)
        wait_for(browser, lambda d: elements(d, "#card dl"), "no model card")
        assert elements(browser, "#text")[0].get_attribute("placeholder") == "Type a text to classify"
        assert "150 classes" in elements(browser, "#subtitle")[0].text
        assert "comment" not in elements(browser, "body")[0].text.lower()
        assert [th.text for th in shown_rows(browser, "#labels th")] == ["class", "F1", "transformer share"]
        cells = [td.get_attribute("textContent") for td in elements(browser, "#labels td")]  # folded ones too
        assert cells and "\u2013" not in cells and "" not in cells  # no empty column, no empty cell
        rows = shown_rows(browser, "#labels tr")
        assert len(rows) == 1 + 10 and len(elements(browser, "#labels details tr")) == 1 + 150
        validation = intents.training_metrics["validation"]["per_class"]
        f1 = [validation[row.find_elements("css selector", "td")[0].text]["f1-score"] for row in rows[1:]]
        assert f1 == sorted(f1)

        explain_on_page(browser, INTENT_TEXT)
        expected = intents.predict(INTENT_TEXT)
        bars = elements(browser, "#bars .bar-row")
        scores = [expected["scores"][row.get_attribute("data-label")] for row in bars]
        assert len(bars) == 10 and scores == sorted(expected["scores"].values(), reverse=True)[:10]
        assert [tag.text for tag in elements(browser, "#predicted .tag")] == expected["labels"]
        assert len(elements(browser, "#bars-rest .bar-row")) == 140 and not shown_rows(browser, "#bars-rest .bar-row")
        assert elements(browser, "#more-bars summary")[0].text == "the other 140 classes, by score"
        assert elements(browser, "#bars-note")[0].text.startswith("The top class is predicted")
        from selenium.webdriver.support.ui import Select

        choice = Select(elements(browser, "#choice-class")[0])
        assert [o.text for o in choice.options][:10] == [row.get_attribute("data-label") for row in bars]
        assert len(choice.options) == 150 and choice.first_selected_option.text == expected["labels"][0]
        choice.select_by_visible_text(bars[1].get_attribute("data-label"))
        elements(browser, "#save-correction")[0].click()
        wait_for(browser, lambda d: "Saved" in elements(d, "#correct-status")[0].text, "not saved")
        saved = json.loads(corrections.read_text())
        assert (saved["text"], saved["labels"]) == (INTENT_TEXT, [bars[1].get_attribute("data-label")])
        assert not [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


@pytest.fixture(scope="module")
def clinc_report(clinc_checkpoint, clinc_csv, tmp_path_factory) -> Path:
    """eval_report.html of the 150-intent checkpoint on its test rows."""
    folder = tmp_path_factory.mktemp("clinc_eval")
    shutil.copy(clinc_checkpoint.parent / "data_report.json", folder)  # its line per intent folds
    config = make_config(task="multiclass", data=str(clinc_csv), test_split=0.2, val_split=0.2,
                         output_dir=str(folder), **CLINC_LAYOUT)
    evaluation.run(config, clinc_checkpoint)
    return folder / "eval_report.html"


def test_report_of_150_intents_opens_folded_and_bounded(browser, clinc_report):
    """The report of 150 intents in Chromium: its sections in order, every long table folded until opened, its
    figures no wider than the page, and the page a few screens tall (the report before was 20,800 pixels)."""
    browser.get(clinc_report.as_uri())
    wait_for(browser, lambda d: d.execute_script("return document.readyState") == "complete", "report not loaded")
    sections = [h.text for h in elements(browser, "h2")]
    assert sections[:5] == ["Summary", "Members alone and the blend", "Worst classes", "Most confused pairs",
                            "Backend"]
    assert sections.index("Confusion matrix") < sections.index("Calibration")
    folded = elements(browser, "details")
    assert len(folded) == 2 and not any(d.get_attribute("open") for d in folded)  # worst classes, data report
    height = browser.execute_script("return document.documentElement.scrollHeight")
    assert height < 6000, height
    shown = len(shown_rows(browser, "tr"))
    elements(browser, "details summary")[0].click()
    assert len(shown_rows(browser, "tr")) == shown + 1 + 150
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.width, i.height])")
    assert len(images) == 4 and all(done and natural > 100 and 0 < wide <= 1100 and tall <= 1100
                                    for _, done, natural, wide, tall in images), images


def test_html_report_opens_and_its_images_load(browser, multiclass_checkpoint, conference_csv, tmp_path):
    """The multi-class report: tables, curves, confusion matrix, reliability diagrams, every image decoded."""
    hostile = tmp_path / "<img src=x onerror=alert(1)>.csv"  # a file name is data too
    shutil.copy(conference_csv, hostile)
    config = make_config(task="multiclass", data=str(hostile), text_column="Title", label_column="Conference",
                         test_split=0.2, val_split=0.2, output_dir=str(tmp_path))
    evaluation.run(config, multiclass_checkpoint)
    browser.get((tmp_path / "eval_report.html").as_uri())
    wait_for(browser, lambda d: d.execute_script("return document.readyState") == "complete", "report not loaded")
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])")
    assert [alt for alt, *_ in images] == ["ROC and precision-recall curves per label", "confusion matrix",
                                           "reliability diagrams per label", "validation metric over training steps"]
    assert all(complete and width > 100 and height > 100 for _, complete, width, height in images), images
    text = elements(browser, "body")[0].text
    assert "<img src=x onerror=alert(1)>.csv" in text and "accuracy" in text and "ECE" in text
    for conference in CONFERENCES:
        assert conference in text


def screenshots(checkpoint: Path, report: Path, out: Path, *extra: str) -> None:
    """bench/screenshots.py on a checkpoint and its report, writing into `out`."""
    done = subprocess.run([sys.executable, "bench/screenshots.py", "--checkpoint", str(checkpoint), "--report",
                           str(report), *extra], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=os.environ | {"BENCH_OUTPUT_DIR": str(out)}, check=False)
    assert done.returncode == 0, done.stderr[-3000:]


def test_screenshot_script_writes_the_pictures_at_6_labels_and_at_150(browser, multilabel_checkpoint, toxic_csv,
                                                                      clinc_checkpoint, clinc_report, tmp_path):
    """bench/screenshots.py, which made docs/page.png, docs/eval_report.png and their _clinc150 pair, into a
    temporary folder: PNGs of 256 colours, small enough to commit."""
    toxic = make_config(task="multilabel", data=str(toxic_csv), text_column="comment_text",
                        label_columns=TOXIC_LABELS, test_split=0.2, val_split=0.2, output_dir=str(tmp_path / "toxic"))
    evaluation.run(toxic, multilabel_checkpoint)
    out = tmp_path / "out"
    out.mkdir()
    screenshots(multilabel_checkpoint, tmp_path / "toxic" / "eval_report.html", out)
    screenshots(clinc_checkpoint, clinc_report, out, "--name", "clinc150", "--text", INTENT_TEXT)
    for name in ("page.png", "eval_report.png", "page_clinc150.png", "eval_report_clinc150.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and 10_000 < (out / name).stat().st_size < 400_000
