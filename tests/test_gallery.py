"""--gallery: the page in a real headless Chromium: choose by click and by key, take picks.json, run pick."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO, synthetic_photo

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def launch_chromium(playwright):
    """The system's headless Chromium, as a root test run without a network needs it."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"])


def _colorize(*args):
    return subprocess.run([sys.executable, "-m", "colorize_cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture()
def page_folder(tmp_path, tiny_run):
    folder = tmp_path / "family photos"
    (folder / "1950s").mkdir(parents=True)
    rng = np.random.default_rng(3)
    for name in ("1950s/wedding day.jpg", "street.png", "garden.jpg"):
        cv2.imwrite(str(folder / name), synthetic_photo(rng, 90, 120))
    r = _colorize(folder, "--model", tiny_run, "--device", "cpu", "--samples", "4", "--sheet-size", "200",
                  "--gallery")
    assert r.returncode == 0, r.stderr
    return folder


def test_the_page_stands_alone_and_names_every_photo(page_folder, tiny_run):
    page = page_folder / "colorized.html"
    text = page.read_text(encoding="utf-8")
    for name in ("1950s/wedding day.jpg", "street.png", "garden.jpg"):
        assert json.dumps(name)[1:-1] in text
    # offline from disk: no scripts, styles, fonts or images from anywhere else
    assert "http://" not in text and "https://" not in text and "<link" not in text and " src=\"" not in text
    # a rerun with a new photo updates the page (the others skipped, still listed with their weights)
    cv2.imwrite(str(page_folder / "new.jpg"), synthetic_photo(np.random.default_rng(4), 90, 120))
    r = _colorize(page_folder, "--model", tiny_run, "--device", "cpu", "--samples", "4", "--sheet-size", "200",
                  "--gallery")
    assert r.returncode == 0 and "3 skipped" in r.stderr, r.stderr
    data = _page_data(page.read_text(encoding="utf-8"))
    # in the run's own order: a folder's files, then its subfolders
    assert [p["name"] for p in data["photos"]] == ["garden.jpg", "new.jpg", "street.png", "1950s/wedding day.jpg"]
    assert all(len(p["weights"]) == 4 and p["layout"]["caption"] > 0 for p in data["photos"])


def _page_data(text: str) -> dict:
    start = text.index("const DATA = ") + len("const DATA = ")
    return json.loads(text[start:text.index(";\n", start)].replace("<\\/", "</"))


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (Debian package 'chromium')")
def test_choosing_in_a_real_browser_then_pick(page_folder, tiny_run, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(accept_downloads=True, viewport={"width": 1100, "height": 800})
            errors, requests = [], []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto((page_folder / "colorized.html").as_uri())
            assert page.locator("figure").count() == 3
            assert page.locator("figcaption").nth(2).inner_text().endswith("1950s/wedding day.jpg")
            # a click on the third tile of the first photo; then the keyboard: next photo, samples 2 and 4,
            # and 4 again to take it back; the last photo by key, sample 1
            page.locator('#photo-0 .tile[data-sample="3"]').click()
            page.keyboard.press("j")
            page.keyboard.press("2")
            page.keyboard.press("4")
            page.keyboard.press("4")
            page.keyboard.press("ArrowDown")
            page.keyboard.press("1")
            assert page.locator("#count").inner_text() == "3 chosen"
            assert page.locator('#photo-0 .tile[data-sample="3"]').get_attribute("aria-pressed") == "true"
            page.screenshot(path=str(tmp_path / "gallery.png"))
            with page.expect_download() as download:
                page.locator("#save").click()
            picks_file = tmp_path / "picks.json"
            download.value.save_as(picks_file)
            command = page.locator("#command").inner_text()
        finally:
            browser.close()
    assert not errors, errors
    assert all(u.startswith(("file:", "blob:", "data:")) for u in requests), requests
    picks = json.loads(picks_file.read_text())["picks"]
    assert [(Path(p["photo"]).name, p["samples"]) for p in picks] == [
        ("garden.jpg", [3]), ("street.png", [2]), ("wedding day.jpg", [1])]
    assert command.startswith("colorize pick --from picks.json") and "--samples 4" in command

    # the page's command, with the model this test trained: full-resolution files carrying their provenance
    r = _colorize("pick", "--from", picks_file, "--samples", "4", "--model", tiny_run, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    for photo, n in (("garden", 3), ("street", 2), ("1950s/wedding day", 1)):
        out = page_folder / f"{photo}.colorized-{n}.png"
        img = cv2.imread(str(out))
        assert img is not None and img.shape[:2] == (90, 120)
        info = _colorize("info", "--json", out)
        record = json.loads(info.stdout)["record"]
        assert record["sample"] == n and record["source"] == os.path.basename(photo) + (
            ".png" if photo == "street" else ".jpg")


def test_a_sheet_without_a_record_still_offers_its_samples(tmp_path):
    """webp sheets carry no record: the page still lists the photo with the run's number of samples."""
    from colorize_cli.engine.plan import InputItem
    from colorize_cli.files.gallery import entries

    photo = tmp_path / "p.webp"
    cv2.imwrite(str(photo), synthetic_photo(np.random.default_rng(1), 20, 30))
    sheet = tmp_path / "p.colorized.webp"
    cv2.imwrite(str(sheet), synthetic_photo(np.random.default_rng(2), 40, 120))
    item = InputItem(photo, Path("p.webp"), sheet)
    [entry] = entries([item], tmp_path, samples=6)
    assert entry["samples"] == 6 and entry["weights"] == [] and entry["layout"] is None
    assert entry["sheet"] == "p.colorized.webp" and entry["photo"] == str(photo)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (Debian package 'chromium')")
def test_on_a_phone_the_header_is_small_and_a_tap_enlarges_a_sample(page_folder, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((page_folder / "colorized.html").as_uri())
            page.wait_for_load_state("load")
            header = page.locator("header").bounding_box()
            assert header["height"] <= 0.15 * 844, header
            assert page.locator("#save").is_disabled()               # nothing chosen: no empty picks.json
            page.locator('[data-zoom="0-2"]').tap()
            assert page.locator("#zoom").is_visible()
            view = page.locator("#zview").bounding_box()
            assert view["width"] >= 0.9 * 390                           # the sample at the screen's width
            assert "sample 2" in page.locator("#zcap").inner_text()
            page.screenshot(path=str(tmp_path / "phone-zoom.png"))
            page.locator("#zchoose").tap()
            assert page.locator("#count").inner_text() == "1 chosen"
            assert page.locator("#zchoose").inner_text().startswith("Chosen")
            page.locator("#zclose").tap()
            assert not page.locator("#zoom").is_visible()
            assert page.locator('#photo-0 .tile[data-sample="2"]').get_attribute("aria-pressed") == "true"
            assert not page.locator("#save").is_disabled()
            size = page.evaluate("parseFloat(getComputedStyle(document.querySelector('figcaption')).fontSize)")
            assert size >= 12
        finally:
            browser.close()
    assert not errors, errors
