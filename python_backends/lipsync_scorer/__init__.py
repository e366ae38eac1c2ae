"""Quality gates on generated clips: SyncNet lip-sync scoring (LSE-D / LSE-C, AV offset) and its gate."""

from .lipsync import (
    LipSyncGateResult,
    LipSyncGateSettings,
    SyncScore,
    lipsync_gate,
    score_sync,
    sync_from_embeddings,
)
from .syncnet import SyncNet, choose_weights, load_default_syncnet, load_syncnet, mfcc

__all__ = [
    "LipSyncGateResult",
    "LipSyncGateSettings",
    "SyncNet",
    "SyncScore",
    "choose_weights",
    "lipsync_gate",
    "load_default_syncnet",
    "load_syncnet",
    "mfcc",
    "score_sync",
    "sync_from_embeddings",
]
