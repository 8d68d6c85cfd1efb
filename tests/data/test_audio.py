import numpy as np
import pytest
import torch

from pipelines.data.audio import hop_for_video, load_audio, log_mel, mfcc, write_wav
from pipelines.data.errors import DataError
from pipelines.data.video import write_video, write_video_with_audio


def sine(freq: float, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(wave: torch.Tensor, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave.numpy().reshape(-1)))
    return float(np.fft.rfftfreq(wave.numel(), 1 / rate)[spectrum.argmax()])


def test_wav_duration_and_spectrum_peak(tmp_path):
    path = write_wav(tmp_path / "tone.wav", sine(440, 1.5, 16000), 16000)
    wave, rate = load_audio(path)
    assert rate == 16000 and wave.shape == (1, 24000)
    assert peak_hz(wave, rate) == pytest.approx(440, abs=1)


def test_resampling_keeps_the_tone(tmp_path):
    stereo = np.stack([sine(1000, 1.0, 44100), sine(1000, 1.0, 44100)])
    path = write_wav(tmp_path / "tone44.wav", stereo, 44100)
    wave, rate = load_audio(path, sample_rate=16000)
    assert rate == 16000 and wave.shape[0] == 1
    assert wave.shape[1] == pytest.approx(16000, abs=2)
    assert peak_hz(wave, rate) == pytest.approx(1000, abs=2)


def test_segment(tmp_path):
    path = write_wav(tmp_path / "tone.wav", sine(440, 2.0, 16000), 16000)
    wave, _ = load_audio(path, start=0.5, duration=0.25)
    assert wave.shape[1] == 4000


def test_audio_track_of_an_mp4(tmp_path):
    frames = [np.full((32, 32, 3), 100, np.uint8)] * 25
    path = write_video_with_audio(tmp_path / "talk.mp4", frames, fps=25, audio=sine(660, 1.0, 16000), sample_rate=16000)
    wave, rate = load_audio(path, sample_rate=16000)
    assert rate == 16000
    assert wave.shape[1] / rate == pytest.approx(1.0, abs=0.1)  # AAC adds a frame of priming
    assert peak_hz(wave, rate) == pytest.approx(660, abs=3)


def test_log_mel_and_mfcc_shapes_and_peak():
    rate, fps = 16000, 25
    hop = hop_for_video(rate, fps, 4)
    assert hop == 160
    wave = torch.from_numpy(sine(2000, 1.0, rate))[None]
    mel = log_mel(wave, rate, n_mels=64, hop_length=hop)
    assert mel.shape[:2] == (1, 64)
    assert mel.shape[-1] == pytest.approx(4 * fps, abs=1)  # 4 audio frames per video frame
    low = log_mel(torch.from_numpy(sine(300, 1.0, rate))[None], rate, n_mels=64, hop_length=hop)
    assert mel.mean(-1).argmax() > low.mean(-1).argmax()  # higher tone, higher mel band
    assert mfcc(wave, rate, n_mfcc=13, hop_length=hop).shape[:2] == (1, 13)


def test_hop_that_does_not_divide_is_refused():
    with pytest.raises(DataError, match="resample"):
        hop_for_video(16000, 29.97, 4)


def test_missing_and_corrupt_audio(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFFnonsense" * 10)
    with pytest.raises(DataError, match="bad.wav"):
        load_audio(bad)
    bad_mp4 = tmp_path / "bad.mp4"
    bad_mp4.write_bytes(b"\x00" * 500)
    with pytest.raises(DataError, match="bad.mp4"):
        load_audio(bad_mp4)


def test_container_without_audio(tmp_path):
    silent = write_video(tmp_path / "silent.mp4", [np.zeros((16, 16, 3), np.uint8)] * 5, fps=25)
    with pytest.raises(DataError, match="no audio track"):
        load_audio(silent)
