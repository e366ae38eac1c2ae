"""EU AI Act Art. 50 disclosure in the file itself: the statement, IPTC/XMP metadata and an optional visible label.

Article 50(2) asks that AI-generated audio/video be marked "in a machine-readable format and detectable as
artificially generated"; 50(4) asks deployers of deep fakes to disclose it. We mark every output three ways, all
machine-readable: the C2PA manifest (a `c2pa.actions` digitalSourceType and our `talkinghead.ai_disclosure`
assertion, both signed), an XMP packet with the IPTC DigitalSourceType (read by tools that know no C2PA), and the
MP4 `comment` / `description` tags. `--label` also burns a visible "AI-generated" corner label into the pixels.
"""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from python_backends import __version__

SOFTWARE = "talkinghead"
IPTC_SOURCE_TYPES = "http://cv.iptc.org/newscodes/digitalsourcetype/"
TRAINED_ALGORITHMIC_MEDIA = IPTC_SOURCE_TYPES + "trainedAlgorithmicMedia"
ALGORITHMIC_MEDIA = IPTC_SOURCE_TYPES + "algorithmicMedia"
REGULATION = "EU AI Act (Regulation (EU) 2024/1689), Article 50"
LABEL_TEXT = "AI-generated"
# XMP in ISO BMFF: a top-level 'uuid' box with this UUID (XMP Specification Part 3, section 1.2.7).
XMP_UUID = bytes.fromhex("BE7ACFCB97A942E89C71999491E3AFAC")
_NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "Iptc4xmpExt": "http://iptc.org/std/Iptc4xmpExt/2008-02-29/",
}


def digital_source_type(engine_id: str) -> str:
    """The IPTC digital source type for what made the pixels.

    The Wan engines are trained generative models: trainedAlgorithmicMedia. The preview engine warps the photo along
    landmarks driven by the audio envelope (its own label says "not a generative model"): algorithmicMedia. Any
    engine we do not know is declared trained-AI: over-disclosing is safe, under-disclosing is not.
    """
    return ALGORITHMIC_MEDIA if engine_id.startswith("preview") else TRAINED_ALGORITHMIC_MEDIA


@dataclass(frozen=True)
class Disclosure:
    engine_id: str
    engine: str
    visible_label: bool = False

    @property
    def source_type(self) -> str:
        return digital_source_type(self.engine_id)

    @property
    def statement(self) -> str:
        return (f"AI-generated video: a synthetic talking head made by {SOFTWARE} {__version__} ({self.engine}) "
                f"from a photo and a voice recording; it does not show real events. Disclosed under the {REGULATION}.")

    def assertion(self) -> dict:
        """The `talkinghead.ai_disclosure` C2PA assertion."""
        return {
            "ai_generated": True, "statement": self.statement, "regulation": REGULATION,
            "digital_source_type": self.source_type, "visible_label": self.visible_label,
            "label_text": LABEL_TEXT if self.visible_label else None,
        }

    def mp4_tags(self) -> dict[str, str]:
        return {"comment": self.statement, "description": self.statement}

    def xmp(self) -> bytes:
        return xmp_packet(self.statement, self.source_type)


def xmp_packet(description: str, source_type: str) -> bytes:
    text = (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        f'<x:xmpmeta xmlns:x="{_NS["x"]}">\n'
        f' <rdf:RDF xmlns:rdf="{_NS["rdf"]}">\n'
        f'  <rdf:Description rdf:about="" xmlns:dc="{_NS["dc"]}" xmlns:xmp="{_NS["xmp"]}"'
        f' xmlns:Iptc4xmpExt="{_NS["Iptc4xmpExt"]}"\n'
        f"   Iptc4xmpExt:DigitalSourceType={quoteattr(source_type)}\n"
        f"   xmp:CreatorTool={quoteattr(f'{SOFTWARE} {__version__}')}>\n"
        f'   <dc:description><rdf:Alt><rdf:li xml:lang="x-default">{escape(description)}</rdf:li></rdf:Alt>'
        "</dc:description>\n"
        "  </rdf:Description>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="r"?>'
    )
    return text.encode("utf-8")


def parse_xmp(packet: bytes) -> dict:
    """DigitalSourceType, description and creator tool from an XMP packet (missing fields are None)."""
    start, end = packet.find(b"<x:xmpmeta"), packet.rfind(b"</x:xmpmeta>")
    if start < 0 or end < 0:
        return {}
    root = ElementTree.fromstring(packet[start:end + len(b"</x:xmpmeta>")])
    description = root.find(".//rdf:Description", _NS)
    if description is None:
        return {}
    text = description.find("dc:description/rdf:Alt/rdf:li", _NS)
    return {
        "digital_source_type": description.get(f"{{{_NS['Iptc4xmpExt']}}}DigitalSourceType"),
        "description": text.text if text is not None else None,
        "creator_tool": description.get(f"{{{_NS['xmp']}}}CreatorTool"),
    }


# -- ISO BMFF top-level boxes -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Box:
    type: str
    offset: int
    size: int
    header: int  # 8, or 16 for a 64-bit size

    @property
    def payload(self) -> tuple[int, int]:
        return self.offset + self.header, self.offset + self.size


def top_level_boxes(path: Path) -> Iterator[Box]:
    """Walk the top-level boxes by their headers only (the mdat payload is never read)."""
    size_of_file = Path(path).stat().st_size
    with open(path, "rb") as handle:
        offset = 0
        while offset + 8 <= size_of_file:
            handle.seek(offset)
            size, kind = struct.unpack(">I4s", handle.read(8))
            header = 8
            if size == 1:
                size, header = struct.unpack(">Q", handle.read(8))[0], 16
            elif size == 0:
                size = size_of_file - offset
            if size < header or offset + size > size_of_file:
                raise ValueError(f"{path} is not a well-formed MP4: box {kind!r} at byte {offset} overruns the file")
            yield Box(kind.decode("latin-1"), offset, size, header)
            offset += size


def append_xmp(path: Path, packet: bytes) -> None:
    """Add the XMP packet as a top-level uuid box at the end of the file.

    At the end no chunk offset in `moov` moves, so the video needs no rewrite; the C2PA BMFF hash made afterwards
    covers this box (only the C2PA box itself, ftyp, free, skip and mfra are excluded), so editing it breaks the
    signature.
    """
    boxes = list(top_level_boxes(path))
    if any(box.type == "uuid" and _uuid_of(path, box) == XMP_UUID for box in boxes):
        raise ValueError(f"{path} already has an XMP packet")
    with open(path, "ab") as handle:
        handle.write(struct.pack(">I4s", 8 + 16 + len(packet), b"uuid") + XMP_UUID + packet)


def read_xmp(path: Path) -> bytes | None:
    for box in top_level_boxes(path):
        if box.type == "uuid" and _uuid_of(path, box) == XMP_UUID:
            start, end = box.payload
            with open(path, "rb") as handle:
                handle.seek(start + 16)
                return handle.read(end - start - 16)
    return None


def _uuid_of(path: Path, box: Box) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(box.payload[0])
        return handle.read(16)


# -- visible label ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=8)
def _label_patch(height: int, width: int, text: str) -> tuple[np.ndarray, np.ndarray, int, int]:
    """RGB patch, alpha [h, w, 1] and its top-left corner for a frame of this size (bottom-right corner)."""
    size = max(10, round(height * 0.035))
    font = ImageFont.load_default(size=size)
    left, top, right, bottom = font.getbbox(text)
    pad = max(3, size // 3)
    box_w, box_h = right - left + 2 * pad, bottom - top + 2 * pad
    box_w, box_h = min(box_w, width), min(box_h, height)
    rgba = Image.new("RGBA", (box_w, box_h), (0, 0, 0, 150))
    ImageDraw.Draw(rgba).text((pad - left, pad - top), text, font=font, fill=(255, 255, 255, 255))
    patch = np.asarray(rgba, np.float32)
    margin = max(2, round(height * 0.02))
    y0, x0 = max(0, height - box_h - margin), max(0, width - box_w - margin)
    return patch[..., :3], patch[..., 3:] / 255.0, y0, x0


def burn_label(frames: np.ndarray, text: str = LABEL_TEXT) -> np.ndarray:
    """A copy of the [n, H, W, 3] frames with a translucent "AI-generated" label in the bottom-right corner."""
    height, width = frames.shape[1:3]
    rgb, alpha, y0, x0 = _label_patch(height, width, text)
    out = np.array(frames, np.uint8, copy=True)
    region = out[:, y0:y0 + rgb.shape[0], x0:x0 + rgb.shape[1]].astype(np.float32)
    out[:, y0:y0 + rgb.shape[0], x0:x0 + rgb.shape[1]] = np.rint(region * (1 - alpha) + rgb * alpha).astype(np.uint8)
    return out
