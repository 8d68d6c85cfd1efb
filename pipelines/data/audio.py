"""Audio: WAV/FLAC via soundfile, audio tracks of video containers via PyAV, torchaudio features.

torchaudio 2.9's own load/save route through torchcodec (which needs a system FFmpeg), so decoding
stays with soundfile and PyAV (whose wheel bundles FFmpeg); torchaudio does resampling and features.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import soundfile as sf
import torch
import torchaudio

from pipelines.data.errors import DataError, require_file

SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".aiff", ".aif"}


def load_audio(
    path: str | Path,
    sample_rate: int | None = None,
    mono: bool = True,
    start: float = 0.0,
    duration: float | None = None,
) -> tuple[torch.Tensor, int]:
    """Decode audio to float32 [channels, samples] in [-1, 1]; resample to `sample_rate` if given.

    WAV-like files go through soundfile, anything else (mp4, mkv, webm …) through PyAV's audio track.
    """
    path = require_file(path, "audio")
    if path.suffix.lower() in SOUNDFILE_SUFFIXES:
        wave, native_rate = _decode_soundfile(path)
    else:
        wave, native_rate = _decode_pyav(path)
    first = int(round(start * native_rate))
    last = None if duration is None else first + int(round(duration * native_rate))
    if first < 0 or first > wave.shape[1]:
        raise DataError(f"{path}: start {start:.3f}s is outside the audio (length {wave.shape[1] / native_rate:.3f}s)")
    wave = wave[:, first:last]
    if mono and wave.shape[0] > 1:
        wave = wave.mean(dim=0, keepdim=True)
    if sample_rate is not None and sample_rate != native_rate:
        wave = torchaudio.functional.resample(wave, native_rate, sample_rate)
        native_rate = sample_rate
    return wave, native_rate


def _decode_soundfile(path: Path) -> tuple[torch.Tensor, int]:
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise DataError(f"cannot decode audio {path}: {err}") from err
    return torch.from_numpy(np.ascontiguousarray(data.T)), int(rate)


def _decode_pyav(path: Path) -> tuple[torch.Tensor, int]:
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise DataError(f"{path} has no audio track")
            stream = container.streams.audio[0]
            rate = stream.rate or stream.codec_context.sample_rate
            # Planar float keeps channels apart; the native rate is kept and torchaudio resamples.
            resampler = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=rate)
            chunks = []
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
    except (av.error.FFmpegError, UnicodeDecodeError) as err:
        raise DataError(f"cannot decode audio track of {path}: {err}") from err
    if not chunks:
        raise DataError(f"{path}: the audio track decoded to no samples")
    return torch.from_numpy(np.concatenate(chunks, axis=1).astype(np.float32)), int(rate)


def write_wav(path: str | Path, wave: torch.Tensor | np.ndarray, sample_rate: int) -> Path:
    """Write float [channels, samples] (or [samples]) audio as 16-bit PCM WAV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(wave, dtype=np.float32)
    sf.write(str(path), data.T if data.ndim == 2 else data, sample_rate, subtype="PCM_16")
    return path


def log_mel(
    wave: torch.Tensor,
    sample_rate: int,
    n_mels: int = 64,
    win_length: int | None = None,
    hop_length: int | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Log-mel spectrogram [..., n_mels, frames]; default 25 ms window and 10 ms hop."""
    win_length = win_length or int(round(0.025 * sample_rate))
    hop_length = hop_length or int(round(0.010 * sample_rate))
    n_fft = 1 << (win_length - 1).bit_length()
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate, n_fft=n_fft, win_length=win_length, hop_length=hop_length, n_mels=n_mels
    )(wave)
    return torch.log(mel + eps)


def mfcc(
    wave: torch.Tensor,
    sample_rate: int,
    n_mfcc: int = 13,
    n_mels: int = 40,
    win_length: int | None = None,
    hop_length: int | None = None,
) -> torch.Tensor:
    """MFCCs [..., n_mfcc, frames] with the same window/hop defaults as `log_mel`."""
    win_length = win_length or int(round(0.025 * sample_rate))
    hop_length = hop_length or int(round(0.010 * sample_rate))
    n_fft = 1 << (win_length - 1).bit_length()
    return torchaudio.transforms.MFCC(
        sample_rate=sample_rate,
        n_mfcc=n_mfcc,
        melkwargs={"n_fft": n_fft, "win_length": win_length, "hop_length": hop_length, "n_mels": n_mels},
    )(wave)


def hop_for_video(sample_rate: int, fps: float, frames_per_video_frame: int = 4) -> int:
    """Hop length giving exactly `frames_per_video_frame` audio frames per video frame.

    At 16 kHz and 25 fps with 4 frames per video frame this is the usual 10 ms (160 samples).
    """
    hop = sample_rate / (fps * frames_per_video_frame)
    if abs(hop - round(hop)) > 1e-6:
        raise DataError(
            f"{sample_rate} Hz audio cannot be cut into exactly {frames_per_video_frame} frames per "
            f"video frame at {fps} fps (hop would be {hop:.3f} samples); resample the audio first"
        )
    return int(round(hop))
