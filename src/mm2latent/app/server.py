"""The gradio app behind ``mm2latent serve``.

Offline by construction: gradio's analytics are switched off before import,
the theme uses the fonts gradio bundles, server-side rendering (a Node
process) is off, and nothing else is fetched. The server binds to 127.0.0.1
unless told otherwise, caps uploads (``MAX_UPLOAD``), refuses images over
``MAX_PIXELS``, and runs at most ``concurrency`` generations at once with a
bounded queue (further requests are told the server is busy).

User mistakes (a bad upload, an empty prompt, no control selected) appear as
a message in the page (``gr.Error``); the server keeps running.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ..common.errors import UserError  # noqa: E402
from ..common.imageio import MAX_PIXELS, check_pixels  # noqa: E402
from ..common.palette import CLASS_NAMES, PALETTE  # noqa: E402

MAX_UPLOAD = "8mb"
CANVAS = 384
EXAMPLE_PROMPTS = ["a smiling woman with blond hair", "a man with black hair and a beard",
                   "an old bald man wearing eyeglasses", "a young woman with wavy brown hair and bangs",
                   "This person has gray hair and wears a hat."]
EXAMPLES_DIR = Path(__file__).resolve().parents[3] / "examples"


def hex_colour(rgb) -> str:
    return "#%02x%02x%02x" % tuple(int(v) for v in rgb)


def snap_to_palette(rgba: np.ndarray) -> np.ndarray:
    """A painted canvas (H, W, 3|4) -> index map: every pixel takes the nearest palette colour;
    fully transparent pixels are background. Brush antialiasing makes in-between colours, so
    nearest-colour snapping (not exact matching) is what a painted mask needs."""
    a = np.asarray(rgba)
    pal = PALETTE.astype(np.int32)
    idx = np.empty(a.shape[:2], np.uint8)
    for r in range(0, a.shape[0], 128):  # in bands: the distance table is 19 x 3 ints a pixel
        rgb = a[r:r + 128, :, :3].astype(np.int32)
        idx[r:r + 128] = ((rgb[..., None, :] - pal[None, None]) ** 2).sum(-1).argmin(-1)
    if a.shape[-1] == 4:
        idx[a[..., 3] < 128] = 0
    return idx


def image_dimensions(image: Any) -> tuple[int, int] | None:
    """(width, height) of a PIL image or an (H, W[, C]) array, read without converting it."""
    if hasattr(image, "size") and callable(getattr(image, "getbands", None)):  # PIL
        return tuple(image.size)
    shape = getattr(image, "shape", None)
    return (int(shape[1]), int(shape[0])) if shape is not None and len(shape) >= 2 else None


def bounded_array(image: Any, what: str) -> np.ndarray:
    """``np.asarray(image)`` after the shared pixel bound (no array work on an oversized input)."""
    dims = image_dimensions(image)
    if dims is not None:
        check_pixels(*dims, what)
    a = np.asarray(image)
    if a.ndim >= 2:
        check_pixels(a.shape[1], a.shape[0], what)
    return a


def _composite(value: Any, what: str = "the painted image") -> np.ndarray | None:
    """The flattened image of an ImageEditor/Sketchpad value (a dict with "composite"), or None."""
    comp = value.get("composite") if isinstance(value, dict) else value
    return None if comp is None else bounded_array(comp, what)


def editor_mask(value: Any) -> np.ndarray | None:
    """ImageEditor value -> index map (None if nothing is on the canvas)."""
    comp = _composite(value, "the painted mask")
    if comp is None or comp.ndim != 3 or comp.size == 0:
        return None
    return snap_to_palette(comp)


def sketch_lines(value: Any) -> np.ndarray | None:
    """Sketchpad value -> uint8 grey image with dark lines on white, or None if blank."""
    a = _composite(value, "the sketch")
    if a is None:
        return None
    if a.ndim == 3 and a.shape[-1] == 4:
        alpha = a[..., 3:4].astype(np.float32) / 255.0
        grey = (a[..., :3].astype(np.float32).mean(-1, keepdims=True) * alpha + 255.0 * (1 - alpha))[..., 0]
    elif a.ndim == 3:
        grey = a[..., :3].astype(np.float32).mean(-1)
    else:
        grey = a.astype(np.float32)
    if (grey < 128).sum() == 0:
        return None
    return grey.clip(0, 255).astype(np.uint8)


def check_upload(image: Any) -> np.ndarray:
    if image is None:
        raise UserError("upload a photo first")
    a = bounded_array(image, "the image")
    if a.ndim not in (2, 3) or a.size == 0:
        raise UserError("the upload is not an image")
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a[..., :3].astype(np.uint8))


def legend_html() -> str:
    items = "".join(
        f'<span style="display:inline-block;margin:2px 6px"><span style="display:inline-block;width:14px;'
        f'height:14px;background:{hex_colour(c)};border:1px solid #888;vertical-align:middle"></span> {n}</span>'
        for n, c in zip(CLASS_NAMES, PALETTE))
    return f'<div id="mask-legend" style="font-size:12px">{items}</div>'


def canvas_value(labels: np.ndarray) -> dict:
    """A label map as an ImageEditor value: its colour image at the canvas size (nearest neighbour)."""
    from PIL import Image

    from ..common.palette import index_to_color

    m = np.asarray(Image.fromarray(np.asarray(labels, np.uint8)).resize((CANVAS, CANVAS), Image.NEAREST))
    bg = index_to_color(m)
    return {"background": bg, "layers": [], "composite": bg}


def template_masks() -> dict[str, Path]:
    return {p.stem.replace("mask_", ""): p for p in sorted(EXAMPLES_DIR.glob("mask_*.png"))}


class App:
    """Holds the pipeline and implements the page's callbacks (plain Python, testable without a browser)."""

    def __init__(self, pipe, out_dir: str | None = None):
        self.pipe = pipe
        self.out_dir = Path(out_dir or tempfile.mkdtemp(prefix="mm2latent-serve-"))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._n = 0

    def template(self, name: str, current: Any = None):
        """The editor value for a template: a world mask, blank, or the parsed mask of the current result."""
        from ..common.palette import load_mask

        if name == "blank":
            m = np.zeros((CANVAS, CANVAS), np.uint8)
        elif name == "from current result":
            if current is None:
                raise UserError("generate a face first")
            m = self.pipe.parse(np.asarray(current))
        else:
            paths = template_masks()
            if name not in paths:
                raise UserError(f"unknown template {name!r}")
            m = load_mask(paths[name])
        return canvas_value(m)

    def _save(self, stem: str, img=None, mask=None, latent=None, input_mask=None) -> list[str]:
        from ..common.imageio import save_image
        from ..common.palette import save_mask

        self._n += 1
        base = self.out_dir / f"{stem}-{self._n:05d}"
        files = []
        if img is not None:
            save_image(base.with_suffix(".png"), img)
            files.append(str(base.with_suffix(".png")))
        if mask is not None:
            p = base.with_name(base.name + "-mask.png")
            save_mask(p, mask, color=True)
            files.append(str(p))
        if input_mask is not None:
            p = base.with_name(base.name + "-input-mask.png")
            save_mask(p, input_mask, color=True)
            files.append(str(p))
        if latent is not None:
            p = base.with_name(base.name + "-latent.npy")
            np.save(p, latent)
            files.append(str(p))
        return files

    def generate(self, text: str, use_text: bool, mask_value: Any, use_mask: bool, sketch_value: Any,
                 use_sketch: bool, coeffs: dict | None, use_coeffs: bool, seed: float, truncation: float):
        """-> (image, parsed colour mask, status line, download files)."""
        import torch

        from ..common.palette import index_to_color

        t0 = time.perf_counter()
        kw: dict[str, Any] = {}
        if use_text and text and text.strip():
            kw["text"] = text
        if use_mask:
            m = editor_mask(mask_value)
            if m is not None:
                kw["mask"] = m
        if use_sketch:
            s = sketch_lines(sketch_value)
            if s is not None:
                kw["sketch"] = s
        if use_coeffs and coeffs:
            kw["coeffs"] = coeffs
        if not kw:
            raise UserError("nothing to generate from: type a prompt, paint a mask, draw a sketch or use the sliders")
        seed = int(seed)
        emb = self.pipe.embed(**kw)
        ws = self.pipe.latents(emb, [seed], float(truncation))
        with torch.no_grad():
            x = self.pipe.synthesize(ws, [seed])
        from ..pipeline.core import to_pil

        img = to_pil(x)[0]
        dt = time.perf_counter() - t0
        parsed = self.pipe.parse(np.asarray(img))
        files = self._save("face", img, parsed, ws.numpy(), kw.get("mask"))
        used = ", ".join(kw)
        return img, index_to_color(parsed), f"generated from {used} (seed {seed}) in {dt * 1000:.0f} ms", files

    def load_photo(self, image: Any):
        """Upload -> (reconstruction, editor value with its parsed mask, status, inversion state)."""
        from ..pipeline.core import to_pil

        photo = check_upload(image)
        inv = self.pipe.invert(photo)
        rec = to_pil(inv.reconstruction)[0]
        parsed = self.pipe.parse(np.asarray(rec))
        return rec, canvas_value(parsed), f"photo {inv.alignment}; inverted in {inv.seconds * 1000:.0f} ms", inv

    def edit(self, inv, text: str, mask_value: Any, use_mask: bool, strength: float, mode: str):
        from ..common.palette import index_to_color
        from ..pipeline.core import to_pil

        if inv is None:
            raise UserError("upload a photo first")
        t0 = time.perf_counter()
        m = editor_mask(mask_value) if use_mask else None
        txt = text if text and text.strip() else None
        ws = self.pipe.edit_latent(inv, txt, m, None, None, float(strength), mode)
        img = to_pil(inv.draw(ws, self.pipe.G.synthesis))[0]
        parsed = self.pipe.parse(np.asarray(img))
        files = self._save("edit", img, parsed, ws.numpy())
        return img, index_to_color(parsed), f"edited in {(time.perf_counter() - t0) * 1000:.0f} ms", files


def _guard(fn):
    """Turn user errors into a message in the page (gr.Error), never a crash."""
    import functools

    import gradio as gr

    @functools.wraps(fn)
    def wrapped(*a, **kw):
        try:
            return fn(*a, **kw)
        except UserError as e:
            raise gr.Error(str(e)) from None
        except (ValueError, OSError) as e:
            raise gr.Error(f"could not use that input: {e}") from None

    return wrapped


def build_ui(app: App):
    import gradio as gr

    from ..world.params import COEFF_NAMES, COEFF_RANGES

    colours = [hex_colour(c) for c in PALETTE]
    theme = gr.themes.Base()
    with gr.Blocks(title="mm2latent") as demo:
        gr.Markdown("## mm2latent: faces from text, masks, sketches and pose/expression, in one pass")
        with gr.Tab("Generate", id="generate"):
            with gr.Row():
                with gr.Column(scale=3):
                    text = gr.Textbox(label="Text", value=EXAMPLE_PROMPTS[0], elem_id="prompt")
                    gr.Examples(EXAMPLE_PROMPTS, inputs=text, label="Example prompts")
                    with gr.Row():
                        use_text = gr.Checkbox(True, label="use text", elem_id="use-text")
                        use_mask = gr.Checkbox(True, label="use mask", elem_id="use-mask")
                        use_sketch = gr.Checkbox(False, label="use sketch", elem_id="use-sketch")
                        use_coeffs = gr.Checkbox(False, label="use pose/expression", elem_id="use-coeffs")
                    with gr.Row():
                        template = gr.Dropdown(["blank", *template_masks(), "from current result"],
                                               value=next(iter(template_masks()), "blank"),
                                               label="Start the mask from", elem_id="template")
                        paint = gr.Radio(list(CLASS_NAMES), value="hair", label="Paint class", elem_id="paint-class")
                    mask = gr.ImageEditor(value=app.template(next(iter(template_masks()), "blank")),
                                          label="Mask (paint with the class colours)", image_mode="RGB",
                                          brush=gr.Brush(colors=[colours[CLASS_NAMES.index("hair")]],
                                                         default_color=colours[CLASS_NAMES.index("hair")],
                                                         color_mode="fixed", default_size=16),
                                          canvas_size=(CANVAS, CANVAS), fixed_canvas=True, layers=False,
                                          transforms=(), sources=(), elem_id="mask-editor", height=420)
                    gr.HTML(legend_html())
                    with gr.Accordion("Sketch", open=False):
                        sketch = gr.Sketchpad(label="Sketch (dark lines)", canvas_size=(CANVAS, CANVAS),
                                              image_mode="RGBA", layers=False, elem_id="sketchpad",
                                              brush=gr.Brush(colors=["#000000"], color_mode="fixed", default_size=3))
                    with gr.Accordion("Pose and expression", open=False):
                        sliders = []
                        for k in COEFF_NAMES:
                            lo, hi = COEFF_RANGES[k]
                            sliders.append(gr.Slider(lo, hi, value=(lo + hi) / 2, label=k, elem_id=f"coeff-{k}"))
                    with gr.Row():
                        seed = gr.Number(0, label="Seed", precision=0, elem_id="seed")
                        trunc = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="Truncation", elem_id="truncation")
                    go = gr.Button("Generate", variant="primary", elem_id="generate-button")
                with gr.Column(scale=2):
                    out_img = gr.Image(label="Result", type="pil", elem_id="result", interactive=False)
                    out_mask = gr.Image(label="Parsed mask of the result", elem_id="result-mask", interactive=False)
                    status = gr.Markdown("", elem_id="status")
                    files = gr.File(label="Downloads (image, mask, latent)", file_count="multiple",
                                    elem_id="downloads")

            def _paint(name):
                c = colours[CLASS_NAMES.index(name)]
                return gr.update(brush=gr.Brush(colors=[c], default_color=c, color_mode="fixed", default_size=16))

            paint.change(_paint, paint, mask)
            template.change(_guard(app.template), [template, out_img], mask)

            def _gen(text, ut, m, um, sk, us, uc, s, tr, *vals):
                return app.generate(text, ut, m, um, sk, us, dict(zip(COEFF_NAMES, vals)), uc, s, tr)

            go.click(_guard(_gen), [text, use_text, mask, use_mask, sketch, use_sketch, use_coeffs, seed, trunc,
                                    *sliders], [out_img, out_mask, status, files], concurrency_id="model",
                     api_name="generate")

        with gr.Tab("Edit a photo", id="edit"):
            inv_state = gr.State(None)
            with gr.Row():
                with gr.Column():
                    photo = gr.Image(label="Photo", type="numpy", image_mode="RGB", sources=["upload"],
                                     elem_id="photo")
                    rec = gr.Image(label="Inverted reconstruction", elem_id="reconstruction", interactive=False)
                    e_status = gr.Markdown("", elem_id="edit-status")
                with gr.Column():
                    e_text = gr.Textbox(label="Change with text", placeholder="e.g. a smiling woman with blond hair",
                                        elem_id="edit-prompt")
                    e_use_mask = gr.Checkbox(False, label="use the painted mask", elem_id="edit-use-mask")
                    e_paint = gr.Radio(list(CLASS_NAMES), value="hair", label="Paint class", elem_id="edit-paint-class")
                    e_mask = gr.ImageEditor(label="Its mask (paint to change)", image_mode="RGB",
                                            brush=gr.Brush(colors=[colours[CLASS_NAMES.index("hair")]],
                                                           color_mode="fixed", default_size=16),
                                            canvas_size=(CANVAS, CANVAS), fixed_canvas=True, layers=False,
                                            transforms=(), sources=(), elem_id="edit-mask-editor", height=420)
                    strength = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Strength", elem_id="strength")
                    mode = gr.Radio(["delta", "blend"], value="delta", label="Combine", elem_id="edit-mode")
                    e_go = gr.Button("Edit", variant="primary", elem_id="edit-button")
                with gr.Column():
                    e_out = gr.Image(label="Edited", type="pil", elem_id="edited", interactive=False)
                    e_out_mask = gr.Image(label="Parsed mask of the edit", elem_id="edited-mask", interactive=False)
                    e_files = gr.File(label="Downloads", file_count="multiple", elem_id="edit-downloads")
            e_paint.change(_paint, e_paint, e_mask)
            photo.upload(_guard(app.load_photo), photo, [rec, e_mask, e_status, inv_state], concurrency_id="model",
                         api_name="load_photo")
            e_go.click(_guard(app.edit), [inv_state, e_text, e_mask, e_use_mask, strength, mode],
                       [e_out, e_out_mask, e_status, e_files], concurrency_id="model", api_name="edit")
    return demo, theme


def serve(weights: str | None = None, host: str = "127.0.0.1", port: int = 7860, concurrency: int = 1,
          queue_size: int = 16, block: bool = True):
    """Start the page; returns (demo, url). ``block=False`` returns at once (tests)."""
    from PIL import Image

    from ..pipeline import Pipeline

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # gradio's own decoding of uploads refuses bombs too
    app = App(Pipeline.from_pretrained(weights))
    app.pipe.generate(text="a face", seed=0)  # warm-up: the first request should not pay for first-call setup
    demo, theme = build_ui(app)
    demo.queue(max_size=queue_size, default_concurrency_limit=concurrency)
    _, url, _ = demo.launch(server_name=host, server_port=port, prevent_thread_lock=True, share=False,
                            max_file_size=MAX_UPLOAD, ssr_mode=False, theme=theme, quiet=True,
                            footer_links=[], show_error=True)
    print(f"mm2latent: the page is ready at {url} (Ctrl+C stops it)", flush=True)
    if block:
        demo.block_thread()
    return demo, url
