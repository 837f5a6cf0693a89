"""The screenshots in docs/: the page at / explaining a text, and an evaluation's eval_report.html.

    python bench/screenshots.py --checkpoint outputs/run/checkpoint --report outputs/run/eval_report.html

Serves the checkpoint on 127.0.0.1 (a free port) as the API does, drives headless Chromium with Selenium (Debian's
chromium and chromium-driver) and writes docs/page.png and docs/eval_report.png (with --name N, page_N.png and
eval_report_N.png), each reduced to 256 colours so that the committed pictures stay small.

The pictures in docs/ come from blends of all-MiniLM-L6-v2 and TF-IDF trained a few minutes on 2 CPU cores:
toxic from 12,000 rows of toxic/train.csv (a seed-0 sample, `toxic_12k.csv`), test mean ROC AUC 0.971, and CLINC150
on its 150 intents, tested on test.csv with oos_test.csv appended (`clinc_test_oos.csv`), test accuracy 0.917:

    python main.py --task multilabel --data toxic_12k.csv --text-column comment_text --label-columns toxic \
        severe_toxic obscene threat insult identity_hate --max-train-samples 4000 --epochs 1 --max-length 64 \
        --freeze-layers 3 --learning-rate 5e-4 --output-dir outputs/toxic
    python main.py --task multiclass --data ../shared/data/clinc150/train.csv --text-column text \
        --label-column intent --test-data clinc_test_oos.csv --max-train-samples 4500 --epochs 1 --max-length 32 \
        --freeze-layers 3 --learning-rate 5e-4 --output-dir outputs/clinc
    python bench/screenshots.py --checkpoint outputs/toxic/checkpoint --report outputs/toxic/eval_report.html \
        --report-height 3050
    python bench/screenshots.py --checkpoint outputs/clinc/checkpoint --report outputs/clinc/eval_report.html \
        --name clinc150 --text "can you help me raise my credit score before i apply for a loan" --report-height 3600
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so that `python bench/screenshots.py` finds the project's modules
    sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

from app import create_app  # noqa: E402
from bench.records import figure_path  # noqa: E402
from inferer import ModelInferer  # noqa: E402
from serving.settings import ServingSettings  # noqa: E402

COMMENT = ("Stop reverting my edits, you ignorant idiot. Nobody here cares about your stupid opinions, "
           "and the sources say the opposite. Go away.")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--checkpoint", default="outputs/run/checkpoint")
    parser.add_argument("--report", default="outputs/run/eval_report.html")
    parser.add_argument("--text", default=COMMENT)
    parser.add_argument("--label", default="insult",
                        help="The label whose words the page shows, where the model has it (else the page's pick).")
    parser.add_argument("--name", default="", help="Written as page_NAME.png and eval_report_NAME.png.")
    parser.add_argument("--report-height", type=int, default=6000, help="The report's pixels kept from its top.")
    return parser.parse_args()


def chromium() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)


def full_page(driver: webdriver.Chrome, width: int, path: Path, most: int = 6000) -> None:
    """A screenshot of the whole page (up to `most` pixels tall) at this width."""
    driver.set_window_size(width, 900)
    chrome = 900 - driver.execute_script("return window.innerHeight")  # the window's height beyond the page
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(height, most) + chrome)
    driver.save_screenshot(str(path))
    # 256 colours without dithering: text and flat figures lose nothing visible and the file a half or more
    Image.open(path).convert("RGB").quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)
    print(path)


def page_screenshot(driver: webdriver.Chrome, checkpoint: str, text: str, label: str, path: Path) -> None:
    server = make_server("127.0.0.1", 0, create_app(ModelInferer(checkpoint), ServingSettings()), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        driver.set_window_size(1100, 900)
        driver.get(f"http://127.0.0.1:{server.server_port}/")
        wait = WebDriverWait(driver, 300)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#card dl"))
        driver.find_element(By.ID, "text").send_keys(text)
        driver.find_element(By.ID, "explain").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#words .word"))
        picked = Select(driver.find_element(By.ID, "label"))
        if label in [option.text for option in picked.options]:
            picked.select_by_visible_text(label)
        full_page(driver, 1100, path, most=2300)
    finally:
        server.shutdown()


def main() -> None:
    args = parse_args()
    hf_logging.set_verbosity_error()
    driver = chromium()
    try:
        suffix = f"_{args.name}" if args.name else ""
        page_screenshot(driver, args.checkpoint, args.text, args.label, figure_path(f"page{suffix}.png"))
        driver.get(Path(args.report).resolve().as_uri())
        full_page(driver, 1200, figure_path(f"eval_report{suffix}.png"), most=args.report_height)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
