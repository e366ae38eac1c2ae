"""Audio pre-processing for the audio_features model: decode, loudness, denoise, mel, wav2vec2."""

from .decode import DecodedAudio, decode_audio
from .features import AudioFeaturesPredictor, AudioFeaturesSettings, build_audio_features, choose_weights

__all__ = [
    "AudioFeaturesPredictor",
    "AudioFeaturesSettings",
    "DecodedAudio",
    "build_audio_features",
    "choose_weights",
    "decode_audio",
]
