"""The web page: callbacks in Python, then the real page in Debian's chromium (playwright).

Browser tests are marked ``browser``; they skip when gradio/playwright/chromium
are missing unless MM2LATENT_REQUIRE_BROWSER=1 (set by CI), where they fail.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mm2latent.common.errors import UserError
from mm2latent.common.palette import CLASS_NAMES, PALETTE
from mm2latent.models.registry import default_weights_dir

gradio = pytest.importorskip("gradio") if not os.environ.get("MM2LATENT_REQUIRE_BROWSER") else __import__("gradio")
from mm2latent.app.server import App, check_upload, editor_mask, sketch_lines, snap_to_palette  # noqa: E402

SHIPPED = Path(os.environ.get("MM2LATENT_WEB_WEIGHTS") or default_weights_dir())
HAIR = CLASS_NAMES.index("hair")


def test_snap_to_palette_and_editor_values():
    m = np.zeros((6, 6), np.uint8)
    m[2:4, 1:5] = HAIR
    rgb = PALETTE[m].astype(np.int16)
    rgb[2, 1] += 9  # brush antialiasing: near, not equal, to the palette colour
    assert np.array_equal(snap_to_palette(np.clip(rgb, 0, 255).astype(np.uint8)), m)
    rgba = np.concatenate([PALETTE[m], np.full((6, 6, 1), 255, np.uint8)], -1)
    rgba[0, 0, 3] = 0
    assert snap_to_palette(rgba)[0, 0] == 0
    assert np.array_equal(editor_mask({"composite": PALETTE[m], "background": None, "layers": []}), m)
    assert editor_mask(None) is None and editor_mask({"composite": None}) is None
    blank = np.zeros((8, 8, 4), np.uint8)  # transparent sketchpad
    assert sketch_lines({"composite": blank}) is None
    blank[3, :, 3] = 255  # one black opaque line
    s = sketch_lines({"composite": blank})
    assert s[3].max() < 128 and s[0].min() > 200
    with pytest.raises(UserError):
        check_upload(None)
    assert check_upload(np.zeros((20, 30), np.uint8)).shape == (20, 30, 3)
    import mm2latent.common.imageio as imageio

    old = imageio.MAX_PIXELS
    imageio.MAX_PIXELS = 500
    try:
        with pytest.raises(UserError, match="too large"):
            check_upload(np.zeros((30, 30, 3), np.uint8))
    finally:
        imageio.MAX_PIXELS = old


def test_every_web_image_input_has_the_pixel_bound_before_array_work():
    """A 26 KB, 3000x3000 PNG painted as a mask once cost 12 s and 3.5 GB: now one clear error."""
    from PIL import Image

    big = Image.new("RGBA", (3000, 3000))
    for fn, what in ((editor_mask, "painted mask"), (sketch_lines, "sketch")):
        with pytest.raises(UserError, match=f"{what} is too large"):
            fn({"composite": big})
        with pytest.raises(UserError, match="too large"):
            fn({"composite": np.zeros((3000, 3000, 4), np.uint8)})
    with pytest.raises(UserError, match="too large"):
        check_upload(big)
    assert editor_mask({"composite": np.zeros((2048, 2048, 3), np.uint8)}).shape == (2048, 2048)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """Reuse the tiny weights builder of the pipeline tests."""
    from helpers import build_tiny_weights

    return build_tiny_weights(tmp_path_factory.mktemp("w"))


def test_app_callbacks(tiny_weights, tmp_path):
    from mm2latent.pipeline import Pipeline

    app = App(Pipeline.from_pretrained(tiny_weights), out_dir=tmp_path)
    ed = app.template("bald")
    assert ed["background"].shape == (384, 384, 3)
    img, parsed, status, files = app.generate({"text": (True, "a man"), "mask": (True, ed), "sketch": (False, None),
                                               "coeffs": (True, {"yaw": 5.0})}, 3, 1.0)
    assert img.size[0] == img.size[1] and parsed.ndim == 3 and "text, mask, coeffs" in status
    assert {Path(f).suffix for f in files} == {".png", ".npy"} and len(files) == 4
    with pytest.raises(UserError, match="nothing to generate"):
        app.generate({"text": (True, "  "), "mask": (True, None), "sketch": (False, None), "coeffs": (False, None)},
                     0, 1.0)
    with pytest.raises(UserError, match="generate a face first"):
        app.template("from current result", None)
    assert app.template("from current result", img)["background"].shape == (384, 384, 3)
    rec, own, st, inv = app.load_photo(np.random.default_rng(0).integers(0, 255, (90, 70, 3), dtype=np.uint8))
    assert "centre-cropped" in st and set(own) == {"mask"} and own["mask"]["background"].shape == (384, 384, 3)
    out, out_mask, st2, files2 = app.edit(inv, {"text": (True, "a woman"), "mask": (True, own["mask"])}, 1.0, "delta")
    assert out.size == rec.size and len(files2) == 3
    with pytest.raises(UserError, match="what to change"):
        app.edit(inv, {"text": (True, ""), "mask": (False, own["mask"])}, 1.0, "delta")
    with pytest.raises(UserError):
        app.edit(None, {"text": (True, "x")}, 1.0, "delta")


def test_page_is_built_from_the_control_registry(tiny_weights, tmp_path):
    """Every registered control has its widgets on both tabs; the /generate and /load_photo API
    keep the order they had before controls were plug-ins."""
    from mm2latent.app.server import build_ui
    from mm2latent.pipeline import Pipeline
    from mm2latent.world.params import COEFF_NAMES

    demo, _ = build_ui(App(Pipeline.from_pretrained(tiny_weights), out_dir=tmp_path))
    fns = {f.api_name: f for f in (demo.fns.values() if isinstance(demo.fns, dict) else demo.fns)}

    def ids(blocks):
        return [getattr(b, "elem_id", None) or type(b).__name__ for b in blocks]

    assert ids(fns["generate"].inputs) == ["prompt", "use-text", "mask-editor", "use-mask", "sketchpad", "use-sketch",
                                           "use-coeffs", "seed", "truncation", *(f"coeff-{k}" for k in COEFF_NAMES)]
    assert ids(fns["load_photo"].outputs) == ["reconstruction", "edit-mask-editor", "edit-status", "State"]
    assert ids(fns["edit"].inputs)[:10] == ["State", "edit-prompt", "edit-use-text", "edit-mask-editor", "edit-use-mask",
                                            "edit-sketchpad", "edit-use-sketch", "edit-use-coeffs", "strength",
                                            "edit-mode"]


# --------------------------------------------------------------------------- real browser


def _browser_ready() -> str | None:
    if not shutil.which("chromium"):
        return "Debian's chromium is not installed"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed"
    if not (SHIPPED / "mapping_net.safetensors").exists():
        return "no shipped weights"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    why = _browser_ready()
    if why:
        if os.environ.get("MM2LATENT_REQUIRE_BROWSER"):
            pytest.fail(f"browser tests required but {why}")
        pytest.skip(why)
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "mm2latent.cli.main", "serve", "--port", str(port),
                             "--weights", str(SHIPPED)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    import urllib.request

    for _ in range(120):
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(proc.stdout.read().decode()[-2000:])
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1400, "height": 1500})
        outside = []
        pg.on("request", lambda r: outside.append(r.url) if not r.url.startswith((server, "blob:", "data:")) else None)
        pg.goto(server, wait_until="load")
        pg.wait_for_selector("#mask-editor canvas", timeout=60000)
        pg.outside_requests = outside
        yield pg
        browser.close()


def _fetch_image(pg, selector: str) -> np.ndarray:
    src = pg.locator(f"{selector} img").first.get_attribute("src")
    data = pg.request.get(src).body() if not src.startswith("data:") else __import__("base64").b64decode(src.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.browser
def test_generate_tab_paint_hair(page, tmp_path):
    pg = page
    pg.fill("#prompt textarea", "a young woman with black hair")
    pg.locator("#template input").click()
    pg.get_by_role("option", name="bald").click()
    pg.wait_for_timeout(1500)
    pg.locator("#paint-class label", has_text="hair").first.click()
    pg.wait_for_timeout(500)
    pg.locator("#mask-editor button[aria-label='Brush']").click()
    box = pg.locator("#mask-editor canvas").first.bounding_box()
    zoom_text = pg.locator("#mask-editor").inner_text()
    zoom = next((float(t[:-1]) / 100 for t in zoom_text.split() if t.endswith("%")), 1.0)
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    def to_screen(u, v):  # canvas pixel (of 384) -> page coordinates
        return cx + (u - 192) * zoom, cy + (v - 192) * zoom

    rows = range(52, 84, 6)  # a band of hair across the top of the bald head
    for v in rows:
        pg.mouse.move(*to_screen(135, v))
        pg.mouse.down()
        for u in range(135, 250, 10):
            pg.mouse.move(*to_screen(u, v), steps=2)
        pg.mouse.up()
    pg.click("#generate-button")
    pg.wait_for_function("document.querySelector('#status') && document.querySelector('#status').innerText.includes('generated')",
                         timeout=120000)
    status = pg.locator("#status").inner_text()
    assert "text, mask" in status and " ms" in status
    result = _fetch_image(pg, "#result")
    parsed = _fetch_image(pg, "#result-mask")
    assert result.shape[0] == result.shape[1] >= 64 and result.std() > 5
    # the painted band is hair in the parsed mask of the result
    s = parsed.shape[0] / 384
    band = parsed[int(56 * s):int(82 * s), int(140 * s):int(245 * s)].reshape(-1, 3).astype(int)
    hair = (np.abs(band - PALETTE[HAIR]).sum(1) < 30).mean()
    pg.screenshot(path=str(tmp_path / "generate.png"), full_page=True)
    if os.environ.get("MM2LATENT_SCREENSHOTS"):
        pg.screenshot(path=os.environ["MM2LATENT_SCREENSHOTS"] + "/web_generate.png", full_page=True)
    assert hair > 0.5, f"only {hair:.0%} of the painted band is parsed as hair"
    cheeks = parsed[int(200 * s):int(250 * s), int(150 * s):int(230 * s)].reshape(-1, 3).astype(int)
    assert (np.abs(cheeks - PALETTE[HAIR]).sum(1) < 30).mean() < 0.5, "hair everywhere, not where painted"
    assert not pg.outside_requests, pg.outside_requests[:3]


@pytest.mark.browser
def test_edit_tab_upload_and_edit(page, tmp_path):
    pg = page
    pg.get_by_role("tab", name="Edit a photo").click()
    photo = Path(__file__).resolve().parents[1] / "examples" / "photo_world.png"
    pg.locator("#photo input[type=file]").set_input_files(str(photo))
    pg.wait_for_function("document.querySelector('#edit-status') && document.querySelector('#edit-status').innerText.includes('inverted')",
                         timeout=120000)
    pg.fill("#edit-prompt textarea", "a smiling woman with blond hair")
    pg.click("#edit-button")
    pg.wait_for_function("document.querySelector('#edit-status').innerText.includes('edited')", timeout=120000)
    edited = _fetch_image(pg, "#edited")
    rec = _fetch_image(pg, "#reconstruction")
    assert edited.shape == rec.shape and np.abs(edited.astype(int) - rec.astype(int)).mean() > 1
    if os.environ.get("MM2LATENT_SCREENSHOTS"):
        pg.screenshot(path=os.environ["MM2LATENT_SCREENSHOTS"] + "/web_edit.png", full_page=True)
    # a bad upload is a message in the page, not a crash
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    pg.locator("#photo input[type=file]").set_input_files(str(bad))
    pg.wait_for_timeout(3000)
    assert pg.locator("#edit-button").is_visible()


def _start_server(weights, extra=()):
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "mm2latent.cli.main", "serve", "--port", str(port),
                             "--weights", str(weights), *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env)
    url = f"http://127.0.0.1:{port}/"
    import urllib.request

    for _ in range(240):
        try:
            urllib.request.urlopen(url, timeout=1)
            return proc, url
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(proc.stdout.read().decode()[-2000:])
            time.sleep(0.5)
    proc.kill()
    raise AssertionError("server did not start")


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def test_server_under_load(tiny_weights):
    """20 concurrent generate requests against a queue of 8: each succeeds or is told the server is busy;
    the server stays up and its memory stays bounded."""
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client

    from mm2latent.world.params import COEFF_NAMES

    proc, url = _start_server(tiny_weights, ["--queue", "8", "--concurrency", "1"])
    try:
        client = Client(url, verbose=False, download_files=False, analytics_enabled=False)
        args = ["a smiling woman", True, None, False, None, False, False, 0, 1.0] + [0.0] * len(COEFF_NAMES)

        def one(i):
            try:
                out = client.predict(*args[:7], i, *args[8:], api_name="/generate")
                return "ok" if "generated" in str(out[2]) else f"odd: {out[2]}"
            except Exception as e:  # gradio_client raises on queue-full / app errors
                return f"refused: {e}"

        with ThreadPoolExecutor(20) as ex:
            results = list(ex.map(one, range(20)))
        ok = sum(r == "ok" for r in results)
        refused = [r for r in results if r.startswith("refused")]
        assert ok + len(refused) == 20, results
        assert ok >= 8
        assert all(("queue" in r.lower() or "full" in r.lower() or "busy" in r.lower()) for r in refused), refused
        assert proc.poll() is None
        assert "generated" in str(client.predict(*args, api_name="/generate")[2])  # still serving
        peak = _peak_rss_mb(proc.pid)
        print(f"\nload: {ok} served, {len(refused)} told busy; server peak RSS {peak:.0f} MB")
        assert peak < 4000
        # an oversize upload is refused (8 MB limit), and the server stays up
        from gradio_client import handle_file

        big = Path(tiny_weights) / "big.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (1900, 1900, 3), dtype=np.uint8)).save(big)
        assert big.stat().st_size > 8 * 1024 * 1024
        with pytest.raises(Exception, match="(?i)size|large|exceed"):
            client.predict(handle_file(str(big)), api_name="/load_photo")
        assert proc.poll() is None
        # an error a user can cause is a message, not a crash
        with pytest.raises(Exception, match="nothing to generate"):
            client.predict("", False, None, False, None, False, False, 0, 1.0, *([0.0] * len(COEFF_NAMES)),
                           api_name="/generate")
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_serve_says_where_the_page_is(tiny_weights):
    """The page answers a moment before serve() prints where it is, so read the output until the
    line comes (stopping the server at the first answer raced the print)."""
    import select

    proc, url = _start_server(tiny_weights)
    out, deadline = "", time.monotonic() + 60
    try:
        while f"ready at {url}" not in out and time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 1.0)[0]:
                line = proc.stdout.readline().decode()
                if not line:
                    break
                out += line
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert f"ready at {url}" in out, out


def test_serve_without_gradio_names_the_extra_for_an_installed_package(monkeypatch):
    import builtins

    from mm2latent.cli.main import build_parser

    real_import = builtins.__import__

    def no_gradio(name, *a, **kw):
        if name == "gradio":
            raise ImportError("no gradio")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_gradio)
    args = build_parser().parse_args(["serve"])
    with pytest.raises(UserError, match=r"pip install 'mm2latent\[web\]'"):
        args.func(args)
