"""The two figures of docs/model.md, drawn from a model folder rather than by hand.

    python -m supersizeme.toolchain.figures --model models/rdn-C3-D6-G32-G032-x2 \\
        --image ../shared/datasets/benchmark/set14/img_005.png --out assets/

writes ``rdn-architecture.svg`` (the network with this model's C, D, G and G0) and
``before-after.png`` (a crop of the image: the LR input, bicubic, this model and the
original, side by side). The model's panel comes out of ``pipeline.supersize``, and the
PSNRs in the labels are those of the evaluation, over the whole image, so the figure
shows what the service returns and the numbers mean what the model card's mean.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from supersizeme.modelspec import ModelFolder, RDNParams
from supersizeme.toolchain.evaluate import UpscalePng, bicubic_png, load_pair, load_served, run_png
from supersizeme.toolchain.quality import rgb_to_y, y_psnr_ssim

ARCHITECTURE_FILE = "rdn-architecture.svg"
BEFORE_AFTER_FILE = "before-after.png"

# Fill and stroke per kind of layer, so the eye groups them without reading labels.
_STYLES = {
    "io": ("#f3f4f6", "#4b5563"),
    "conv": ("#dbeafe", "#1d4ed8"),
    "rdb": ("#fde68a", "#b45309"),
    "fusion": ("#d1fae5", "#047857"),
    "upscale": ("#ede9fe", "#6d28d9"),
}
# A row's node: a box (lines of text, style, width), "+" for a sum or "..." for a gap.
Node = str | tuple[list[str], str, int]
_BOX_H = 64
_GAP = 28  # room for an arrow between two boxes


@dataclass
class Svg:
    """Just enough SVG: boxes with centred lines of text, arrows, paths and circles."""

    width: int
    height: int
    parts: list[str] = field(default_factory=list)

    def text(self, x: float, y: float, content: str, size: int = 12, **attrs: str) -> None:
        extra = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in attrs.items())
        self.parts.append(
            f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}"{extra}>{escape(content)}</text>'
        )

    def box(self, x: float, y: float, w: float, h: float, lines: Sequence[str], kind: str) -> None:
        fill, stroke = _STYLES[kind]
        self.parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="6" '
            f'fill="{fill}" stroke="{stroke}" stroke-width="1.5"/>'
        )
        first = y + h / 2 - (len(lines) - 1) * 7 + 4
        for i, line in enumerate(lines):
            weight = "bold" if i == 0 else "normal"
            self.text(x + w / 2, first + 14 * i, line, 11, text_anchor="middle", font_weight=weight)

    def path(self, d: str, arrow: bool = True, colour: str = "#374151") -> None:
        marker = ' marker-end="url(#arrow)"' if arrow else ""
        self.parts.append(
            f'<path d="{d}" fill="none" stroke="{colour}" stroke-width="1.4"{marker}/>'
        )

    def arrow(self, x1: float, y1: float, x2: float, y2: float) -> None:
        self.path(f"M {x1:.1f} {y1:.1f} L {x2:.1f} {y2:.1f}")

    def add_node(self, cx: float, cy: float, r: float = 11) -> None:
        """The element-wise sum of a residual connection."""
        self.parts.append(
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{r}" fill="white" stroke="#374151" '
            'stroke-width="1.5"/>'
        )
        self.path(f"M {cx - r + 4:.1f} {cy:.1f} H {cx + r - 4:.1f}", arrow=False)
        self.path(f"M {cx:.1f} {cy - r + 4:.1f} V {cy + r - 4:.1f}", arrow=False)

    def render(self) -> str:
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" '
            f'height="{self.height}" viewBox="0 0 {self.width} {self.height}" '
            'font-family="Helvetica, Arial, sans-serif">\n'
            '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
            'markerHeight="7" orient="auto"><path d="M 0 0 L 10 5 L 0 10 z" fill="#374151"/>'
            "</marker></defs>\n"
            f'<rect width="{self.width}" height="{self.height}" fill="white"/>\n'
            + "\n".join(self.parts)
            + "\n</svg>\n"
        )


@dataclass
class Placed:
    """A node of a row once laid out: its horizontal extent."""

    x: float
    w: float

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    @property
    def right(self) -> float:
        return self.x + self.w


def _row(svg: Svg, x: float, cy: float, nodes: Sequence[Node]) -> list[Placed]:
    """Draw the nodes left to right, joined by arrows; returns where each one went."""
    placed: list[Placed] = []
    for node in nodes:
        if placed:
            svg.arrow(x - _GAP, cy, x - 2, cy)
        if node == "+":
            svg.add_node(x + 11, cy)
            placed.append(Placed(x, 22))
        elif node == "...":
            svg.text(x + 12, cy + 4, "···", 16, text_anchor="middle")
            placed.append(Placed(x, 24))
        else:
            lines, kind, width = node
            height = _BOX_H + 14 * max(0, len(lines) - 3)
            svg.box(x, cy - height / 2, width, height, lines, kind)
            placed.append(Placed(x, width))
        x = placed[-1].right + _GAP
    return placed


def architecture_svg(params: RDNParams, parameter_count: int | None = None) -> str:
    """An RDN diagram labelled with ``params``: the whole network above, one block below."""
    s, c_dim = params.scale, 3
    shown = list(range(1, params.D + 1)) if params.D <= 4 else [1, 2, None, params.D]
    enlarge = "pixel shuffle" if params.upscaling == "shuffle" else "upsampling"
    convs = f"{params.C} conv" + ("s" if params.C > 1 else "")
    rdbs = [
        "..." if d is None else ([f"RDB {d}", convs, f"G = {params.G}"], "rdb", 64) for d in shown
    ]
    top = [
        (["LR input", "H×W×3"], "io", 64),
        (["F-1", "conv 3×3", f"G0 = {params.G0}"], "conv", 72),
        (["F0", "conv 3×3", f"G0 = {params.G0}"], "conv", 72),
        *rdbs,
        (["concat", f"D·G0 = {params.D * params.G0}"], "fusion", 84),
        (["GFF", "conv 1×1", f"G0 = {params.G0}"], "fusion", 72),
        (["GFF", "conv 3×3", f"G0 = {params.G0}"], "fusion", 72),
        "+",
        (
            [
                "upscaling",
                "conv 5×5, 64 + ReLU",
                "conv 3×3, 32 + ReLU",
                f"conv 3×3, {c_dim * s * s}",
                f"{enlarge} ×{s}",
            ],
            "upscale",
            128,
        ),
        (["SR conv", "3×3", f"{c_dim} channels"], "conv", 72),
        (["SR output", f"{s}H×{s}W×3"], "io", 76),
    ]
    detail = [
        (["F d−1", "block input", f"G0 = {params.G0}"], "io", 76),
        *[
            ([f"conv {c}", "3×3 + ReLU", f"G = {params.G}"], "conv", 76)
            for c in range(1, params.C + 1)
        ],
        (["concat", f"G0 + C·G = {params.G0 + params.C * params.G}"], "fusion", 112),
        (["LFF", "conv 1×1", f"G0 = {params.G0}"], "fusion", 72),
        "+",
        (["F d", "block output", f"G0 = {params.G0}"], "io", 76),
    ]
    # Wide enough for the longer row and for the legend line at the bottom.
    width = max(1060, max(sum(_node_width(n) + _GAP for n in row) for row in (top, detail)) + 12)
    svg = Svg(int(width), 520)
    count = f" · {parameter_count:,} parameters" if parameter_count else ""
    svg.text(
        20,
        30,
        f"Residual Dense Network (Zhang et al. 2018) as built by ISR: {params.name}",
        16,
        font_weight="bold",
    )
    svg.text(
        20,
        52,
        f"C = {params.C} conv layers per block · D = {params.D} residual dense "
        f"blocks · G = {params.G} growth rate · G0 = {params.G0} features · "
        f"×{s}{count}",
        12,
        fill="#374151",
    )

    cy = 150
    nodes = _row(svg, 20, cy, top)
    # Global residual learning: the shallow features F-1 skip every block.
    f_minus_1, add = nodes[1], nodes[len(rdbs) + 6]
    start = f_minus_1.right + _GAP / 2
    svg.path(f"M {start:.1f} {cy:.1f} V 92 H {add.cx:.1f} V {cy - 12:.1f}")
    svg.text(
        (start + add.cx) / 2,
        86,
        "global residual learning",
        11,
        text_anchor="middle",
        fill="#374151",
    )
    # Global feature fusion sees the output of every block, not only the last one.
    blocks = [p for p, d in zip(nodes[3 : 3 + len(rdbs)], shown, strict=True) if d is not None]
    concat = nodes[3 + len(rdbs)]
    bus_y = cy + _BOX_H / 2 + 30
    for block in blocks:
        svg.path(f"M {block.cx:.1f} {cy + _BOX_H / 2:.1f} V {bus_y:.1f}", arrow=False)
    svg.path(f"M {blocks[0].cx:.1f} {bus_y:.1f} H {concat.cx:.1f} V {cy + _BOX_H / 2 + 2:.1f}")
    svg.text(
        blocks[0].cx,
        bus_y + 16,
        "every block's output goes to the global fusion",
        11,
        fill="#374151",
    )

    frame_y = 250
    svg.parts.append(
        f'<rect x="10" y="{frame_y}" width="{width - 20:.0f}" height="{520 - frame_y - 40}" '
        'rx="10" fill="none" stroke="#b45309" stroke-dasharray="6 4"/>'
    )
    svg.text(
        24,
        frame_y + 22,
        f"One residual dense block (RDB), repeated D = {params.D} "
        f"times: C = {params.C} conv + ReLU layers, densely connected",
        13,
        font_weight="bold",
        fill="#b45309",
    )
    cy = frame_y + 110
    nodes = _row(svg, 24, cy, detail)
    # Dense connections: every layer (and the concat) sees the block input and every
    # earlier layer's output; adjacent ones are already joined by the row's arrows.
    # Each source leaves from, and each target takes, its own point along the box's bottom
    # edge, so that the curves fan out instead of piling onto one spot.
    last = params.C + 1  # the concat
    y0 = cy + _BOX_H / 2
    for j in range(2, last + 1):
        target = nodes[j]
        for i in range(j - 1):
            source = nodes[i]
            depth = 16 + 58 * (j - i) / last
            x1 = source.cx + (source.w / 2 - 8) * (j - i - 2) / max(1, last - i - 2)
            x2 = target.x + 8 + (target.w / 2 - 8) * i / max(1, j - 2)
            svg.path(
                f"M {x1:.1f} {y0:.1f} C {x1:.1f} {y0 + depth:.1f} {x2:.1f} "
                f"{y0 + depth:.1f} {x2:.1f} {y0 + 2:.1f}",
                colour="#1d4ed8",
            )
    add = nodes[params.C + 3]
    start = nodes[0].right + _GAP / 2
    svg.path(f"M {start:.1f} {cy:.1f} V {cy - 62:.1f} H {add.cx:.1f} V {cy - 12:.1f}")
    svg.text(
        (start + add.cx) / 2,
        cy - 68,
        "local residual learning",
        11,
        text_anchor="middle",
        fill="#374151",
    )
    svg.text(
        24,
        510,
        "⊕ element-wise sum · blue curves: dense connections (each layer "
        "reads the concatenation of the block input and all earlier layers) · "
        "LFF: local feature fusion · GFF: global feature fusion",
        11,
        fill="#374151",
    )
    return svg.render()


def _node_width(node: Node) -> float:
    if node == "+":
        return 22
    if node == "...":
        return 24
    return node[2]


@dataclass(frozen=True)
class Crop:
    """A square window of the HR image; ``x``, ``y`` and ``size`` are multiples of the scale
    so that the LR panel shows exactly the input pixels behind the other three."""

    x: int
    y: int
    size: int


def busiest_crop(hr: np.ndarray, size: int, scale: int) -> Crop:
    """The window with the most luma variance: edges and texture, where methods differ.

    Chosen from the original alone, never from either method's error, so that the
    figure does not pick the spot that flatters the model.
    """
    y_channel = rgb_to_y(hr)
    height, width = y_channel.shape
    size = min(size, height, width) // scale * scale
    step = max(scale, size // 4 // scale * scale)
    best, best_var = Crop(0, 0, size), -1.0
    for y in range(0, height - size + 1, step):
        for x in range(0, width - size + 1, step):
            var = float(y_channel[y : y + size, x : x + size].var())
            if var > best_var:
                best, best_var = Crop(x, y, size), var
    return best


# Pillow's built-in font has no "×" and such: the PNG's text sticks to ASCII.
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # a Pillow without FreeType has only the bitmap font
        return ImageFont.load_default()


def before_after(
    upscale: UpscalePng,
    image_path: str | Path,
    scale: int,
    crop: Crop | None = None,
    zoom: int = 3,
    model_label: str = "RDN (this model)",
) -> Image.Image:
    """LR (nearest) | bicubic | model | HR of one crop, with whole-image Y-PSNRs."""
    pair = load_pair(image_path, scale)
    bicubic, _ = run_png(bicubic_png(scale), pair.lr)
    ours, _ = run_png(upscale, pair.lr)
    height, width = pair.hr.shape[:2]
    nearest = np.asarray(pair.lr.convert("RGB").resize((width, height), Image.Resampling.NEAREST))
    crop = crop or busiest_crop(pair.hr, 96, scale)
    if crop.size <= 0 or crop.x + crop.size > width or crop.y + crop.size > height:
        raise ValueError(f"crop {crop} does not fit the {width}x{height} image")
    labels = [
        ("LR input", f"enlarged {scale}x, nearest neighbour"),
        ("bicubic", f"PSNR {y_psnr_ssim(pair.hr, bicubic, scale)[0]:.2f} dB"),
        (model_label, f"PSNR {y_psnr_ssim(pair.hr, ours, scale)[0]:.2f} dB"),
        ("original (HR)", "reference"),
    ]
    side, margin, strip = crop.size * zoom, 12, 46
    canvas = Image.new("RGB", (4 * side + 5 * margin, side + strip + 2 * margin + 22), "white")
    draw = ImageDraw.Draw(canvas)
    title, small = _font(16), _font(13)
    for i, (panel, (name, value)) in enumerate(
        zip((nearest, bicubic, ours, pair.hr), labels, strict=True)
    ):
        window = panel[crop.y : crop.y + crop.size, crop.x : crop.x + crop.size]
        tile = Image.fromarray(np.ascontiguousarray(window)).resize(
            (side, side), Image.Resampling.NEAREST
        )
        left = margin + i * (side + margin)
        canvas.paste(tile, (left, margin + strip))
        draw.text((left, margin), name, fill="black", font=title)
        draw.text((left, margin + 22), value, fill="#374151", font=small)
    note = (
        f"{Path(image_path).name}, x{scale}: {crop.size}x{crop.size} px crop at "
        f"({crop.x}, {crop.y}) shown {zoom}x; PSNR on the Y channel of the whole image, "
        f"{scale} px shaved"
    )
    draw.text((margin, canvas.height - margin - 14), note, fill="#374151", font=small)
    return canvas


def main(argv: Sequence[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="a model folder")
    parser.add_argument("--image", required=True, help="a benchmark HR image")
    parser.add_argument("--out", default="assets", help="folder for the two figures")
    parser.add_argument(
        "--crop",
        type=int,
        nargs=3,
        metavar=("X", "Y", "SIZE"),
        help="HR window (default: the busiest 96 px square)",
    )
    parser.add_argument("--zoom", type=int, default=3, help="nearest-neighbour magnification")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow threads; 0: all")
    args = parser.parse_args(argv)

    folder = ModelFolder.open(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    svg_path = out / ARCHITECTURE_FILE
    svg_path.write_text(architecture_svg(folder.params, folder.spec.get("parameter_count")))

    scale = folder.params.scale
    crop = None
    if args.crop:
        crop = Crop(*(value // scale * scale for value in args.crop))
    upscale, _ = load_served(folder.path, tile=args.tile, threads=args.threads or None)
    png_path = out / BEFORE_AFTER_FILE
    before_after(upscale, args.image, scale, crop, args.zoom).save(png_path)
    print(f"wrote {svg_path} and {png_path}")
    return [svg_path, png_path]


if __name__ == "__main__":
    main()
