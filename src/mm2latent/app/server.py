"""The gradio app behind ``mm2latent serve``.

Offline by construction: gradio's analytics are switched off before import,
the theme uses the fonts gradio bundles, server-side rendering (a Node
process) is off, and nothing else is fetched. The server binds to 127.0.0.1
unless told otherwise, caps uploads (``MAX_UPLOAD``), refuses images over
``MAX_PIXELS``, and runs at most ``concurrency`` generations at once with a
bounded queue (further requests are told the server is busy).

User mistakes (a bad upload, an empty prompt, no control selected) appear as
a message in the page (``gr.Error``); the server keeps running.

The controls' widgets come from the control registry
(:data:`mm2latent.models.controls.CONTROLS`): each control's ``WebWidget``
names a widget kind of :data:`WIDGET_KINDS` (how it is drawn and how its value
is read), a label, a "use" checkbox and an element id, so a plug-in control of
an existing kind appears on both tabs without a change here.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ..common.errors import UserError  # noqa: E402
from ..common.imageio import MAX_PIXELS, check_pixels  # noqa: E402
from ..common.palette import CLASS_NAMES, PALETTE  # noqa: E402
from ..models.controls import CONTROLS, Control, get_control, one_of  # noqa: E402

MAX_UPLOAD = "8mb"
CANVAS = 384
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

    def given_controls(self, widgets: dict[str, tuple[bool, Any]]) -> dict[str, Any]:
        """Control name -> (its use box, its widget value) -> the user values to generate or edit
        with, in registry order: ticked controls whose widget holds something."""
        for name in widgets:
            get_control(name)
        kw: dict[str, Any] = {}
        for name, control in CONTROLS.items():
            if name in widgets and widgets[name][0]:
                v = WIDGET_KINDS[control.widget.kind].read(control, widgets[name][1])
                if v is not None:
                    kw[name] = v
        return kw

    def generate(self, widgets: dict[str, tuple[bool, Any]], seed: float, truncation: float):
        """``widgets``: control name -> (use box, widget value). -> (image, parsed colour mask,
        status line, download files)."""
        import torch

        from ..common.palette import index_to_color

        t0 = time.perf_counter()
        kw = self.given_controls(widgets)
        if not kw:
            raise UserError("nothing to generate from: " + one_of(c.widget.hint for c in CONTROLS.values()))
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
        """Upload -> (reconstruction, control name -> widget value read off it (for the widget kinds
        that show a photo's own value), status, inversion state)."""
        from ..pipeline.core import to_pil

        photo = check_upload(image)
        inv = self.pipe.invert(photo)
        rec = to_pil(inv.reconstruction)[0]
        own = {name: WIDGET_KINDS[c.widget.kind].from_photo(self, rec) for name, c in CONTROLS.items()
               if WIDGET_KINDS[c.widget.kind].from_photo is not None}
        return rec, own, f"photo {inv.alignment}; inverted in {inv.seconds * 1000:.0f} ms", inv

    def edit(self, inv, widgets: dict[str, tuple[bool, Any]], strength: float, mode: str):
        """``widgets``: control name -> (use box, widget value), as for :meth:`generate`."""
        from ..common.palette import index_to_color
        from ..pipeline.core import to_pil

        if inv is None:
            raise UserError("upload a photo first")
        t0 = time.perf_counter()
        ws = self.pipe.edit_latent(inv, strength=float(strength), mode=mode, **self.given_controls(widgets))
        img = to_pil(inv.draw(ws, self.pipe.G.synthesis))[0]
        parsed = self.pipe.parse(np.asarray(img))
        files = self._save("edit", img, parsed, ws.numpy())
        return img, index_to_color(parsed), f"edited in {(time.perf_counter() - t0) * 1000:.0f} ms", files


# --------------------------------------------------------------------------- widget kinds


@dataclass
class BuiltWidget:
    """A control's widgets on one tab: its use box and the components its value is made of."""

    control: Control
    use: Any
    parts: list
    value: Callable[[list], Any]                 # the parts' values -> the widget value App reads
    wire: Callable[[Any], None] = lambda result: None  # events that need the tab's result image


@dataclass(frozen=True)
class WidgetKind:
    """How the page draws a kind of control widget (``build(gr, control, tab, app, ids)``, gradio
    imported by the caller), reads its value (``read(control, value)``: the user value, or None when
    nothing is given) and, optionally, shows a loaded photo's own value (``from_photo(app, image)``)."""

    build: Callable
    read: Callable[[Control, Any], Any]
    from_photo: Callable | None = None


def _dash(name: str) -> str:
    return name.replace("_", "-")


def _build_textbox(gr, control: Control, tab: str, app: App, ids: str):
    w = control.widget
    examples = list(w.options.get("examples", ()))
    if tab == "generate":
        box = gr.Textbox(label=w.label, value=examples[0] if examples else "", elem_id=ids + w.elem_id)
        if examples:
            gr.Examples(examples, inputs=box, label="Example prompts")
    else:
        box = gr.Textbox(label=w.edit_label or w.label, placeholder=f"e.g. {examples[0]}" if examples else None,
                         elem_id=ids + w.elem_id)
    return [box], lambda vals: vals[0], lambda result: None


def _build_mask_editor(gr, control: Control, tab: str, app: App, ids: str):
    w = control.widget
    colours = [hex_colour(c) for c in PALETTE]
    hair = colours[CLASS_NAMES.index("hair")]
    first = next(iter(template_masks()), "blank")
    template = None
    if tab == "generate":
        with gr.Row():
            template = gr.Dropdown(["blank", *template_masks(), "from current result"], value=first,
                                   label="Start the mask from", elem_id=ids + "template")
            paint = gr.Radio(list(CLASS_NAMES), value="hair", label="Paint class", elem_id=ids + "paint-class")
        editor = gr.ImageEditor(value=app.template(first), label=w.label, image_mode="RGB",
                                brush=gr.Brush(colors=[hair], default_color=hair, color_mode="fixed", default_size=16),
                                canvas_size=(CANVAS, CANVAS), fixed_canvas=True, layers=False,
                                transforms=(), sources=(), elem_id=ids + w.elem_id, height=420)
        gr.HTML(legend_html())
    else:
        paint = gr.Radio(list(CLASS_NAMES), value="hair", label="Paint class", elem_id=ids + "paint-class")
        editor = gr.ImageEditor(label=w.edit_label or w.label, image_mode="RGB",
                                brush=gr.Brush(colors=[hair], color_mode="fixed", default_size=16),
                                canvas_size=(CANVAS, CANVAS), fixed_canvas=True, layers=False,
                                transforms=(), sources=(), elem_id=ids + w.elem_id, height=420)

    def _paint(name):
        c = colours[CLASS_NAMES.index(name)]
        return gr.update(brush=gr.Brush(colors=[c], default_color=c, color_mode="fixed", default_size=16))

    paint.change(_paint, paint, editor)

    def wire(result):
        if template is not None:
            template.change(_guard(app.template), [template, result], editor)

    return [editor], lambda vals: vals[0], wire


def _build_sketchpad(gr, control: Control, tab: str, app: App, ids: str):
    pad = gr.Sketchpad(label=control.widget.label, canvas_size=(CANVAS, CANVAS), image_mode="RGBA", layers=False,
                       elem_id=ids + control.widget.elem_id,
                       brush=gr.Brush(colors=["#000000"], color_mode="fixed", default_size=3))
    return [pad], lambda vals: vals[0], lambda result: None


def _build_sliders(gr, control: Control, tab: str, app: App, ids: str):
    spec = control.widget.options["sliders"]
    sliders = [gr.Slider(lo, hi, value=(lo + hi) / 2, label=k, elem_id=f"{ids}{control.widget.elem_id}-{k}")
               for k, lo, hi in spec]
    return sliders, lambda vals: dict(zip((k for k, _, _ in spec), vals)), lambda result: None


def _read_text(control: Control, value: Any):
    return value if value and value.strip() else None


#: widget kind -> how it is drawn and read (``WebWidget.kind`` of each control)
WIDGET_KINDS: dict[str, WidgetKind] = {
    "textbox": WidgetKind(_build_textbox, _read_text),
    "mask_editor": WidgetKind(_build_mask_editor, lambda control, value: editor_mask(value),
                              from_photo=lambda app, image: canvas_value(app.pipe.parse(np.asarray(image)))),
    "sketchpad": WidgetKind(_build_sketchpad, lambda control, value: sketch_lines(value)),
    "sliders": WidgetKind(_build_sliders, lambda control, value: value or None),
}


def build_control_widgets(gr, app: App, tab: str) -> list[BuiltWidget]:
    """Every registered control's widgets on ``tab`` ("generate" or "edit"): a row of "use" boxes,
    then each control's widgets, in a collapsed section when its spec names one. Element ids are
    the spec's, prefixed "edit-" on the edit tab. There, widgets that show the loaded photo's own
    value start unticked (using that value unchanged is no edit)."""
    ids = "" if tab == "generate" else "edit-"
    uses = {}
    with gr.Row():
        for name, c in CONTROLS.items():
            kind = WIDGET_KINDS[c.widget.kind]
            ticked = c.widget.use_default and not (tab == "edit" and kind.from_photo is not None)
            uses[name] = gr.Checkbox(ticked, label=c.widget.use_label, elem_id=f"{ids}use-{_dash(name)}")
    built = []
    for name, c in CONTROLS.items():
        build = WIDGET_KINDS[c.widget.kind].build
        if c.widget.section:
            with gr.Accordion(c.widget.section, open=False):
                parts, value, wire = build(gr, c, tab, app, ids)
        else:
            parts, value, wire = build(gr, c, tab, app, ids)
        built.append(BuiltWidget(c, uses[name], parts, value, wire))
    return built


def event_inputs(widgets: list[BuiltWidget], middle: list) -> list:
    """An event's inputs: each one-part widget and its use box, the use boxes of the others, then
    ``middle`` (seed and truncation, or strength and mode), then the parts of the several-part
    widgets (sliders). This keeps the built-in controls' API order (``/generate``: text, use,
    mask, use, sketch, use, use coeffs, seed, truncation, 13 sliders) as it was before controls
    were plug-ins."""
    head = [x for w in widgets for x in ((*w.parts, w.use) if len(w.parts) == 1 else (w.use,))]
    return head + list(middle) + [x for w in widgets if len(w.parts) != 1 for x in w.parts]


def split_event_values(widgets: list[BuiltWidget], n_middle: int, values) -> tuple[dict[str, tuple[bool, Any]], list]:
    """The inverse of :func:`event_inputs` on the values gradio passes: (control name -> (use box,
    widget value), the middle values)."""
    rest = iter(values)
    uses, parts = {}, {}
    for w in widgets:
        if len(w.parts) == 1:
            parts[w.control.name] = [next(rest)]
        uses[w.control.name] = next(rest)
    middle = [next(rest) for _ in range(n_middle)]
    for w in widgets:
        if len(w.parts) != 1:
            parts[w.control.name] = [next(rest) for _ in w.parts]
    return {w.control.name: (uses[w.control.name], w.value(parts[w.control.name])) for w in widgets}, middle


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

    theme = gr.themes.Base()
    with gr.Blocks(title="mm2latent") as demo:
        gr.Markdown("## mm2latent: faces from text, masks, sketches and pose/expression, in one pass")
        with gr.Tab("Generate", id="generate"):
            with gr.Row():
                with gr.Column(scale=3):
                    widgets = build_control_widgets(gr, app, "generate")
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
            for w in widgets:
                w.wire(out_img)

            def _gen(*values):
                given, (s, tr) = split_event_values(widgets, 2, values)
                return app.generate(given, s, tr)

            go.click(_guard(_gen), event_inputs(widgets, [seed, trunc]), [out_img, out_mask, status, files],
                     concurrency_id="model", api_name="generate")

        with gr.Tab("Edit a photo", id="edit"):
            inv_state = gr.State(None)
            with gr.Row():
                with gr.Column():
                    photo = gr.Image(label="Photo", type="numpy", image_mode="RGB", sources=["upload"],
                                     elem_id="photo")
                    rec = gr.Image(label="Inverted reconstruction", elem_id="reconstruction", interactive=False)
                    e_status = gr.Markdown("", elem_id="edit-status")
                with gr.Column():
                    e_widgets = build_control_widgets(gr, app, "edit")
                    strength = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Strength", elem_id="strength")
                    mode = gr.Radio(["delta", "blend"], value="delta", label="Combine", elem_id="edit-mode")
                    e_go = gr.Button("Edit", variant="primary", elem_id="edit-button")
                with gr.Column():
                    e_out = gr.Image(label="Edited", type="pil", elem_id="edited", interactive=False)
                    e_out_mask = gr.Image(label="Parsed mask of the edit", elem_id="edited-mask", interactive=False)
                    e_files = gr.File(label="Downloads", file_count="multiple", elem_id="edit-downloads")
            shown = [w for w in e_widgets if WIDGET_KINDS[w.control.widget.kind].from_photo is not None]

            def _load(image):
                r, own, st, inv = app.load_photo(image)
                return (r, *(own[w.control.name] for w in shown), st, inv)

            def _edit(inv, *values):
                given, (st, md) = split_event_values(e_widgets, 2, values)
                return app.edit(inv, given, st, md)

            photo.upload(_guard(_load), photo, [rec, *(w.parts[0] for w in shown), e_status, inv_state],
                         concurrency_id="model", api_name="load_photo")
            e_go.click(_guard(_edit), [inv_state, *event_inputs(e_widgets, [strength, mode])],
                       [e_out, e_out_mask, e_status, e_files], concurrency_id="model", api_name="edit")
    return demo, theme


def serve(weights: str | None = None, host: str = "127.0.0.1", port: int = 7860, concurrency: int = 1,
          queue_size: int = 16, block: bool = True):
    """Start the page; returns (demo, url). ``block=False`` returns at once (tests)."""
    from PIL import Image

    from ..pipeline import Pipeline

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # gradio's own decoding of uploads refuses bombs too
    from ..models.parts import MissingPartError

    app = App(Pipeline.from_pretrained(weights))
    try:
        app.pipe.generate(text="a face", seed=0)  # warm-up: the first request should not pay for first-call setup
    except MissingPartError as e:  # a pipeline folder with parts missing starts; what needs them says so
        print(f"mm2latent: warning: {e} (the page starts; generating or editing says so)", file=sys.stderr, flush=True)
    demo, theme = build_ui(app)
    demo.queue(max_size=queue_size, default_concurrency_limit=concurrency)
    _, url, _ = demo.launch(server_name=host, server_port=port, prevent_thread_lock=True, share=False,
                            max_file_size=MAX_UPLOAD, ssr_mode=False, theme=theme, quiet=True,
                            footer_links=[], show_error=True)
    print(f"mm2latent: the page is ready at {url} (Ctrl+C stops it)", flush=True)
    if block:
        demo.block_thread()
    return demo, url
