"""Invisible per-frame watermark that carries a job's 64-bit payload through re-encoding, resizing and cropping.

Why our own (numpy only) rather than a library, checked on the wheels themselves (`pip download --no-deps`):
invisible-watermark 0.2.0 (last release 2023) declares `torch` and `opencv-python` as requirements (the latter
clashes with the server's opencv-python-headless), and its dwtDct methods are documented as not surviving resize
or crop; trustmark 0.9.2 needs torch and fetches its models from Adobe's server on first use (no weights in the
sdist); videoseal 1.0.1 needs torch and fetches its checkpoint from a download server. The client stays light and
offline, so: a classic spread-spectrum watermark with a periodic tile, which makes crop and resize searchable.

Embedding (in the encoder's luma plane, so chroma is untouched):
- a tile of 32 x 32 chips (±1), each chip `chip_px` pixels wide and smoothed, so its energy sits in the mid
  frequencies that H.264 keeps; the tile repeats over the whole frame, identical in every frame;
- a quarter of the chips are a fixed sync pattern; the other chips spread the 80 coded bits (64 payload bits +
  CRC-16), each bit over many chips with its own pseudo-random signs (repetition code, decoded soft);
- the chip layout, signs and sync pattern come from a fixed seed: this is a provenance aid that anyone with this
  code can read (and could forge); the C2PA signature, not the watermark, is the proof of origin.

Detection (blind: needs neither the original nor the frame size it was made at):
1. average the luma of up to `max_frames` frames (the pattern is static, content moves), whiten it by dividing
   its spectrum by a smoothed copy of its own magnitude (the host's spectrum is smooth, the periodic watermark's
   is a lattice of lines that stands out);
2. candidate tile periods: the unresized ones and common rendition scales of them, plus the peaks of the
   autocorrelation (both axes, so other resizes are found too);
3. fold the frame onto one tile at each period (a crop only shifts where the tile starts), find the shift by
   circular correlation with the sync pattern; the best peak's z-score says whether a watermark is there at all;
4. read the chips at that shift (plain and texture-weighted), combine each bit's chips, check the CRC.
The embedder cancels the picture's own share of every bit (see `WatermarkEmbedder`): on an untouched file the
read-out is exact; what disturbs it is what re-encoding, resizing and cropping changed.
`present`: sync peak above the threshold and the CRC checks; `unreadable`: sync found, payload damaged;
`absent`: no sync peak.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import av
import numpy as np

ALGORITHM = "talkinghead-ss-tile-v1"
PAYLOAD_BITS = 64
CRC_BITS = 16
CODED_BITS = PAYLOAD_BITS + CRC_BITS
TILE_CHIPS = 32
SYNC_FRACTION = 0.25
_SEED = 0x7A1C_4EAD  # fixed: the layout is part of the algorithm, not a secret
_SAMPLES_PER_CHIP = 4  # resolution of the folded tile at detection
_MIN_PERIOD = TILE_CHIPS * 3 // 2  # chips of 1.5 px: below that nothing of the pattern is left
SYNC_Z_THRESHOLD = 5.5  # chosen so an unmarked video almost never gets a sync peak this high (see perf/RESULTS.md)
DEFAULT_STRENGTH = 3.0  # RMS of the pattern in 8-bit RGB-equivalent levels (PSNR ~39.5 dB before rounding)


def payload_for_job(job_id: str) -> bytes:
    """The 64-bit payload of a job: the first 8 bytes of SHA-256 over a domain tag and the job id."""
    return hashlib.sha256(f"{ALGORITHM}:{job_id}".encode()).digest()[: PAYLOAD_BITS // 8]


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _bits(data: bytes) -> np.ndarray:
    return np.unpackbits(np.frombuffer(data, np.uint8))


def coded_bits(payload: bytes) -> np.ndarray:
    if len(payload) * 8 != PAYLOAD_BITS:
        raise ValueError(f"the watermark payload is {PAYLOAD_BITS // 8} bytes, got {len(payload)}")
    return np.concatenate([_bits(payload), _bits(crc16(payload).to_bytes(2, "big"))])


@dataclass(frozen=True)
class _Layout:
    signs: np.ndarray  # [N, N] ±1 pseudo-random chip signs
    sync: np.ndarray  # [N, N] bool: the chip belongs to the sync pattern
    bit_of_chip: np.ndarray  # [N, N] int: which coded bit a message chip carries (-1 for sync chips)


def _layout() -> _Layout:
    rng = np.random.default_rng(_SEED)
    n = TILE_CHIPS * TILE_CHIPS
    signs = rng.choice(np.array([-1.0, 1.0], np.float32), n)
    order = rng.permutation(n)
    n_sync = round(n * SYNC_FRACTION)
    sync = np.zeros(n, bool)
    sync[order[:n_sync]] = True
    bit_of_chip = np.full(n, -1)
    bit_of_chip[order[n_sync:]] = np.arange(n - n_sync) % CODED_BITS  # each bit gets an equal share of chips
    shape = (TILE_CHIPS, TILE_CHIPS)
    return _Layout(signs.reshape(shape), sync.reshape(shape), bit_of_chip.reshape(shape))


LAYOUT = _layout()
_CHIPS_PER_BIT = np.bincount(LAYOUT.bit_of_chip[~LAYOUT.sync], minlength=CODED_BITS)


def _render_tile(chips: np.ndarray, chip_px: int) -> np.ndarray:
    """Chip values -> a smooth periodic tile, `chip_px` pixels per chip (smoothing keeps it periodic).

    Linear in `chips`, scaled so ±1 chips give unit RMS.
    """
    tile = np.kron(chips, np.ones((chip_px, chip_px), np.float32))
    size = tile.shape[0]
    freq = np.fft.fftfreq(size)
    sigma = chip_px / 2.5  # Gaussian blur in pixels: rounds the chip edges, keeps the chip's own frequency
    gain = np.exp(-2 * (np.pi * sigma) ** 2 * (freq[:, None] ** 2 + freq[None, :] ** 2))
    return (np.fft.ifft2(np.fft.fft2(tile) * gain).real / _unit_rms(chip_px)).astype(np.float32)


def _unit_rms(chip_px: int, cache: dict = {}) -> float:  # noqa: B006 - a per-process cache of a pure function
    if chip_px not in cache:
        cache[chip_px] = 1.0
        cache[chip_px] = float(np.sqrt(np.mean(_render_tile(LAYOUT.signs, chip_px) ** 2)))
    return cache[chip_px]


def _highpass(chips: np.ndarray, radius: int = 1) -> np.ndarray:
    """Chip values minus their circular (2 radius + 1)^2 neighbourhood mean: what both sides correlate."""
    local = sum(np.roll(chips, (dy, dx), axis=(0, 1))
                for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1))
    return chips - local / (2 * radius + 1) ** 2


def _projections(chips: np.ndarray) -> tuple[np.ndarray, float]:
    """Folded, high-passed chip values [N, N] -> mean signed value per coded bit, and of the sync chips."""
    signed = _highpass(chips) * LAYOUT.signs
    message = ~LAYOUT.sync
    per_bit = np.bincount(LAYOUT.bit_of_chip[message], weights=signed[message], minlength=CODED_BITS)
    return per_bit / _CHIPS_PER_BIT, float(signed[LAYOUT.sync].mean())


def tile_chips(payload: bytes) -> np.ndarray:
    """The signed chip values of one tile: sync chips +sign, message chips sign x (±1 coded bit)."""
    bits = coded_bits(payload).astype(np.float32) * 2 - 1
    values = np.where(LAYOUT.sync, 1.0, bits[np.maximum(LAYOUT.bit_of_chip, 0)])
    return (LAYOUT.signs * values).astype(np.float32)


def chip_px_for(height: int, width: int) -> int:
    """Chip size for a frame: 4 px up to 1080p-ish, larger for bigger frames so a 0.5x resize keeps >= 2 px."""
    return max(4, round(min(height, width) / 270))


class WatermarkEmbedder:
    """Adds the job's pattern to the luma plane of every frame of one size.

    Informed embedding (improved spread spectrum, Malvar & Florencio 2003): before adding the pattern, the frame's
    own projection onto each bit's chips and onto the sync chips (measured exactly as the detector measures them)
    is computed and subtracted through the pattern, so the host picture no longer interferes with the read-out;
    what remains to disturb it is what re-encoding, resizing or cropping changed.
    """

    def __init__(self, payload: bytes, height: int, width: int, strength: float = DEFAULT_STRENGTH,
                 cancel: float = 1.0) -> None:
        self.payload = bytes(payload)
        self.chip_px = k = chip_px_for(height, width)
        self.strength, self.cancel = strength, cancel
        self.height, self.width = height, width
        self._chips = tile_chips(self.payload)
        # Luma levels (TV range: 219 per full swing) per unit of pattern.
        self._scale = strength * 219 / 255
        self._rows, self._cols = height // k * k, width // k * k  # whole chips only, as the detector's fold
        grid_y = np.arange(self._rows // k) % TILE_CHIPS
        grid_x = np.arange(self._cols // k) % TILE_CHIPS
        self._fold_index = (grid_y[:, None] * TILE_CHIPS + grid_x[None, :]).ravel()
        self._fold_counts = np.maximum(np.bincount(self._fold_index, minlength=TILE_CHIPS**2), 1)
        # How much of one unit of a bit's pattern the read-out sees (smoothing and high-pass lose some).
        unit = np.tile(_render_tile(LAYOUT.signs, k), (2, 2))
        per_bit, _ = _projections(self._fold_chips(unit, 2 * TILE_CHIPS * k, 2 * TILE_CHIPS * k))
        self._gain = float(per_bit.mean())

    def _fold_chips(self, luma: np.ndarray, rows: int | None = None, cols: int | None = None) -> np.ndarray:
        """Mean luma of each chip, averaged over every tile: [N, N] (what the detector's read-out sees)."""
        k = self.chip_px
        rows, cols = rows or self._rows, cols or self._cols
        block = luma[:rows, :cols]
        # Sum k rows, then k columns: summing along the contiguous axis last is ~4x faster than one mean over both.
        dtype = np.uint16 if block.dtype == np.uint8 else np.float64  # 16 x 255 fits in 16 bits
        sums = block.reshape(rows // k, k, cols).sum(axis=1, dtype=dtype).reshape(rows // k, cols // k, k)
        means = sums.sum(axis=2, dtype=np.float64) / (k * k)
        if rows == self._rows and cols == self._cols:
            index, counts = self._fold_index, self._fold_counts
        else:
            gy, gx = np.arange(rows // k) % TILE_CHIPS, np.arange(cols // k) % TILE_CHIPS
            index = (gy[:, None] * TILE_CHIPS + gx[None, :]).ravel()
            counts = np.maximum(np.bincount(index, minlength=TILE_CHIPS**2), 1)
        folded = np.bincount(index, weights=means.ravel(), minlength=TILE_CHIPS**2)
        return (folded / counts).reshape(TILE_CHIPS, TILE_CHIPS)

    def tile_for(self, luma: np.ndarray) -> np.ndarray:
        """One period of the pattern (luma levels, float32) for this frame, host share cancelled."""
        chips = self._chips
        if self.cancel:
            per_bit, sync = _projections(self._fold_chips(luma))
            # In units of the pattern: host projection / (levels per unit x read-out gain); bounded so a frame
            # whose own picture happens to mimic the pattern cannot demand a visible correction.
            limit = 1.5
            bit_fix = np.clip(-self.cancel * per_bit / (self._scale * self._gain), -limit, limit)
            sync_fix = float(np.clip(-self.cancel * sync / (self._scale * self._gain), -limit, limit))
            fix = np.where(LAYOUT.sync, sync_fix, bit_fix[np.maximum(LAYOUT.bit_of_chip, 0)])
            chips = chips + LAYOUT.signs * fix
        return _render_tile(chips, self.chip_px) * self._scale

    def embed(self, luma: np.ndarray) -> np.ndarray:
        """uint8 [H, W] luma (TV range) -> watermarked uint8 luma."""
        tile = np.rint(self.tile_for(luma)).astype(np.int16)
        reps = (-(-self.height // tile.shape[0]), -(-self.width // tile.shape[1]))
        marked = np.tile(tile, reps)[: self.height, : self.width]  # a fresh array: safe to add into
        marked += luma
        np.clip(marked, 16, 235, out=marked)
        return marked.astype(np.uint8)

    def embed_plane(self, plane) -> None:
        """Watermark a frame's luma plane (a PyAV `VideoPlane`, rows padded to `line_size`) in place."""
        rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]
        rows[...] = self.embed(rows)

    def describe(self) -> dict:
        return describe(self.payload) | {"chip_px": self.chip_px, "strength": self.strength}


def describe(payload: bytes) -> dict:
    """What the C2PA manifest and the audit record say about the watermark of a file."""
    return {"algorithm": ALGORITHM, "payload": payload.hex(), "payload_bits": PAYLOAD_BITS,
            "payload_from": f"sha256('{ALGORITHM}:' + job_id)[:8]"}


# -- detection --------------------------------------------------------------------------------------------------


@dataclass
class WatermarkReading:
    status: str  # "present" | "unreadable" | "absent" | "error"
    algorithm: str = ALGORITHM
    payload: str | None = None  # hex, only when the CRC checks
    sync_z: float | None = None  # the sync peak's z-score (threshold SYNC_Z_THRESHOLD)
    bits: list[int] | None = None  # the 64 payload bits as read (also when the CRC fails)
    bit_margin: float | None = None  # mean |soft bit| / its spread: how clearly the bits were read
    period_px: tuple[float, float] | None = None  # tile period found in (y, x) pixels
    frames_read: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def present(self) -> bool:
        return self.status == "present"

    def as_dict(self) -> dict:
        out = asdict(self)
        out.pop("bits")
        return out


def mean_luma(path: Path, max_frames: int = 90) -> tuple[np.ndarray, int]:
    """The average luma of the first `max_frames` frames, as float64 [H, W]."""
    total, count = None, 0
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("the file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            luma = frame.to_ndarray(format="gray").astype(np.float64)
            total = luma if total is None else total + luma
            count += 1
            if count >= max_frames:
                break
    if total is None:
        raise ValueError("the video stream has no frames")
    return total / count, count


def _smooth(values: np.ndarray, radius: int) -> np.ndarray:
    """Circular box mean over (2 radius + 1)^2 of a 2-D array (cumulative sums: cost independent of radius)."""
    out = values
    for axis in (0, 1):
        padded = np.concatenate([np.take(out, range(-radius, 0), axis), out,
                                 np.take(out, range(radius + 1), axis)], axis)
        sums = np.cumsum(padded, axis)
        n = out.shape[axis]
        out = (np.take(sums, range(2 * radius + 1, 2 * radius + 1 + n), axis)
               - np.take(sums, range(0, n), axis)) / (2 * radius + 1)
    return out


def _whiten(luma: np.ndarray) -> np.ndarray:
    spectrum = np.fft.rfft2(luma - luma.mean())
    magnitude = np.abs(spectrum)
    floor = _smooth(magnitude, 6) + 1e-9
    white = spectrum / floor
    white[0, 0] = 0
    return np.fft.irfft2(white, s=luma.shape)


def _period_candidates(profile: np.ndarray, low: int, high: int, count: int = 3) -> list[float]:
    """Lags of the strongest autocorrelation peaks in [low, high], refined on their harmonics."""
    high = min(high, len(profile) - 2)
    if high <= low:
        return []
    segment = profile[low:high + 1]
    peaks = [i for i in range(1, len(segment) - 1) if segment[i] >= segment[i - 1] and segment[i] >= segment[i + 1]]
    peaks.sort(key=lambda i: segment[i], reverse=True)
    out: list[float] = []
    for i in peaks[:count]:
        lag = low + i
        for divisor in (1, 2, 3):  # the strongest peak may be a multiple of the period
            base = lag / divisor
            if base >= low:
                refined = _refine_period(profile, base)
                if refined and all(abs(refined - p) > 0.5 for p in out):
                    out.append(refined)
    return out


def _refine_period(profile: np.ndarray, period: float) -> float | None:
    """Least-squares period through the parabola-refined peaks at its multiples (precision grows with them)."""
    orders, lags = [], []
    m = 1
    while m * period < len(profile) - 2:
        guess = round(m * period)
        window = range(max(1, guess - 2), min(len(profile) - 1, guess + 3))
        peak = max(window, key=lambda i: profile[i])
        left, mid, right = profile[peak - 1], profile[peak], profile[peak + 1]
        denom = left - 2 * mid + right
        offset = 0.5 * (left - right) / denom if denom < 0 else 0.0
        orders.append(m)
        lags.append(peak + float(np.clip(offset, -0.5, 0.5)))
        m += 1
    if not orders:
        return None
    orders_a, lags_a = np.array(orders, float), np.array(lags)
    return float(np.sum(orders_a * lags_a) / np.sum(orders_a**2))


def _splat(length: int, period: float, bins: int) -> np.ndarray:
    """[bins, length] matrix that folds positions 0..length-1 onto `bins` bins of a (non-integer) period,
    each position shared linearly between its two nearest bins, so no bin is left empty when the period has
    fewer pixels than bins (a downscaled video)."""
    u = (np.arange(length) % period) / period * bins
    low = np.floor(u).astype(np.int64)
    frac = u - low
    matrix = np.zeros((bins, length))
    columns = np.arange(length)
    np.add.at(matrix, (low % bins, columns), 1 - frac)
    np.add.at(matrix, ((low + 1) % bins, columns), frac)
    return matrix


def _fold(image: np.ndarray, period_y: float, period_x: float, bins: int) -> np.ndarray:
    """Average an image onto one tile of `bins` x `bins` samples at the given period (two matrix products)."""
    rows, cols = _splat(image.shape[0], period_y, bins), _splat(image.shape[1], period_x, bins)
    weight = rows.sum(axis=1)[:, None] * cols.sum(axis=1)[None, :]
    return (rows @ image @ cols.T) / np.maximum(weight, 1e-9)


_SYNC_TEMPLATE = _render_tile(np.where(LAYOUT.sync, LAYOUT.signs, 0).astype(np.float32), _SAMPLES_PER_CHIP)
_SYNC_SPECTRUM = np.conj(np.fft.fft2(_SYNC_TEMPLATE))


def _sync_peak(tile: np.ndarray) -> tuple[float, tuple[int, int]]:
    """z-score of the best circular shift of the sync template against the folded tile, and that shift."""
    corr = np.fft.ifft2(np.fft.fft2(tile) * _SYNC_SPECTRUM).real
    flat = corr.ravel()
    best = int(np.argmax(flat))
    spread = np.std(flat)
    z = float((flat[best] - np.mean(flat)) / spread) if spread > 0 else 0.0
    return z, divmod(best, corr.shape[1])


def _read_bits(tile: np.ndarray, shift: tuple[int, int]) -> np.ndarray:
    """Soft coded bits (signed mean per bit) from a folded tile aligned at `shift`."""
    aligned = np.roll(tile, (-shift[0], -shift[1]), axis=(0, 1))
    s = _SAMPLES_PER_CHIP
    per_bit, _ = _projections(aligned.reshape(TILE_CHIPS, s, TILE_CHIPS, s).mean(axis=(1, 3)))
    return per_bit


def _normalised_residual(luma: np.ndarray) -> np.ndarray:
    """Whitened luma divided by its local RMS, so edges and texture do not outvote the flat areas."""
    residual = _whiten(luma)
    return residual / (np.sqrt(_smooth(residual**2, 4)) + 1e-3)


def _candidate_periods(residual: np.ndarray) -> list[tuple[float, float]]:
    """(y, x) tile periods worth folding at: the unresized ones, then peaks of the residual's autocorrelation."""
    h, w = residual.shape
    autocorr = np.fft.irfft2(np.abs(np.fft.rfft2(residual)) ** 2, s=residual.shape)
    ys = _period_candidates(autocorr[:, 0], _MIN_PERIOD, h // 2)
    xs = _period_candidates(autocorr[0, :], _MIN_PERIOD, w // 2)
    # The periods the embedder uses (unresized) and the common rendition scales of them, then the measured ones.
    nominal = {TILE_CHIPS * k * scale for k in range(4, 9) for scale in (1.0, 0.5, 0.75, 2 / 3)}
    pairs = [(p, p) for p in sorted(nominal) if p >= _MIN_PERIOD]
    pairs += [(py, px) for py in ys for px in xs if 0.8 < py / px < 1.25]  # beyond: no platform resizes so
    return [(py, px) for py, px in pairs if py <= h and px <= w]


def read_luma(luma: np.ndarray, frames: int = 1) -> WatermarkReading:
    """Look for the watermark in an (averaged) luma image of any size.

    The sync search runs on the normalised residual (best at rejecting the host picture); the bits are read from
    the plain luma folded at the same period and shift, exactly as the embedder measured them when it cancelled
    the host's share (see `WatermarkEmbedder`).
    """
    bins = TILE_CHIPS * _SAMPLES_PER_CHIP
    if min(luma.shape) < 2 * _MIN_PERIOD:
        return WatermarkReading(status="absent", frames_read=frames, errors=["the frame is too small to hold a tile"])
    residual = _normalised_residual(luma)
    best = None
    for periods in _candidate_periods(residual):
        z, shift = _sync_peak(_fold(residual, *periods, bins))
        if best is None or z > best[0]:
            best = (z, periods, shift)
    reading = WatermarkReading(status="absent", frames_read=frames)
    if best is None:
        return reading
    z, periods, shift = best
    reading.sync_z = round(z, 2)
    reading.period_px = (round(periods[0], 3), round(periods[1], 3))
    # Two read-outs: the plain luma (where the embedder cancelled the host exactly: best on an untouched file) and
    # the normalised residual (texture weighted down: best once re-encoding has added noise there), and their sum.
    raw = _read_bits(_fold(luma - luma.mean(), *periods, bins), shift)
    weighted = _read_bits(_fold(residual, *periods, bins), shift)
    reads = [weighted, raw, weighted / (np.std(weighted) + 1e-12) + raw / (np.std(raw) + 1e-12)]
    magnitude = np.abs(reads[0])
    reading.bit_margin = round(float(magnitude.mean() / (magnitude.std() + 1e-12)), 3)
    reading.bits = (reads[0] > 0).astype(np.uint8)[:PAYLOAD_BITS].tolist()
    if z < SYNC_Z_THRESHOLD:
        return reading
    reading.status = "unreadable"
    for soft in reads:
        bits = (soft > 0).astype(np.uint8)
        payload = np.packbits(bits[:PAYLOAD_BITS]).tobytes()
        if int.from_bytes(np.packbits(bits[PAYLOAD_BITS:]).tobytes(), "big") == crc16(payload):
            reading.status, reading.payload, reading.bits = "present", payload.hex(), bits[:PAYLOAD_BITS].tolist()
            break
    return reading


def read_video(path: Path, max_frames: int = 90) -> WatermarkReading:
    """Read the watermark of a video file; errors become a reading with status `error`, never an exception."""
    try:
        luma, frames = mean_luma(path, max_frames)
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        return WatermarkReading(status="error", errors=[f"cannot decode the video: {exc}"])
    return read_luma(luma, frames)
