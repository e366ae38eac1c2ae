"""What a job's content checks and QA verdict mean under a policy profile: deliver, or hold for an operator.

The checks are read from the QA report the server streams last: the photo's content-safety report and the driving
video's (`post_processing.photo_safety`, `.driving_video_safety`: NSFW, minor face, public figure) and the output
frames' `content_safety` gate. A check that is missing from the report is `unavailable`, never a pass, and so is
every check of a job without a QA report. The rules per profile are the `Policy` fields (client/policy.py); the
decision goes into the QA report, the audit record and the C2PA assertion (through the QA verdict).
"""

from __future__ import annotations

from dataclasses import dataclass

from .policy import Policy

DELIVER, HOLD = "deliver", "hold"
SOURCE_CHECKS = ("nsfw", "minor", "public_figure")
UNAVAILABLE, FAIL = "unavailable", "fail"


def _source_checks(source: str, report: dict | None) -> dict[str, str]:
    if not isinstance(report, dict):
        return {f"{source}.content_safety": UNAVAILABLE}
    checks = {f"{source}.{name}": (report.get(name) or {}).get("status", UNAVAILABLE)
              for name in SOURCE_CHECKS if isinstance(report.get(name), dict)}
    # A report without its checks (the model was unavailable as a whole) counts by its own status.
    return checks or {f"{source}.content_safety": str(report.get("status", UNAVAILABLE))}


def content_checks(qa_report: dict | None, driving_video: bool) -> dict[str, str]:
    """Check name -> status (pass, fail, unavailable, not_applicable) for the photo, driving video and output."""
    if not qa_report:
        checks = {"photo.content_safety": UNAVAILABLE, "output.content_safety": UNAVAILABLE}
        if driving_video:
            checks["driving_video.content_safety"] = UNAVAILABLE
        return checks
    post = qa_report.get("post_processing") or {}
    checks = _source_checks("photo", post.get("photo_safety"))
    if driving_video:
        checks.update(_source_checks("driving_video", post.get("driving_video_safety")))
    gate = (qa_report.get("gates") or {}).get("content_safety") or {}
    checks["output.content_safety"] = gate.get("status", UNAVAILABLE)
    return checks


@dataclass(frozen=True)
class ContentDecision:
    profile: str
    action: str  # deliver | hold
    reasons: tuple[str, ...]
    checks: dict[str, str]
    visible_label: bool

    @property
    def held(self) -> bool:
        return self.action == HOLD

    def as_dict(self) -> dict:
        return {"profile": self.profile, "action": self.action, "reasons": list(self.reasons),
                "checks": dict(self.checks), "visible_label": self.visible_label}


def decide(qa_report: dict | None, policy: Policy, driving_video: bool, visible_label: bool) -> ContentDecision:
    """The decision for one finished job; `visible_label` is whether its frames carry the burnt-in label."""
    checks = content_checks(qa_report, driving_video)
    unavailable = sorted(name for name, status in checks.items() if status == UNAVAILABLE)
    failed = sorted(name for name, status in checks.items() if status == FAIL)
    verdict = (qa_report or {}).get("verdict")
    hold, reasons = [], []
    if failed:  # the server stops such jobs; should one get here, it is never delivered unseen
        hold.append(True)
        reasons.append(f"content check failed: {', '.join(failed)}")
    if unavailable:
        hold.append(policy.hold_unavailable_checks)
        reasons.append(f"content check unavailable: {', '.join(unavailable)}"
                       + ("" if policy.hold_unavailable_checks else f" (delivered under {policy.profile})"))
    if verdict == "needs_review":
        segments = (qa_report or {}).get("segments_for_review") or []
        hold.append(policy.hold_needs_review)
        reasons.append(f"QA verdict needs_review (segments {', '.join(map(str, segments))})"
                       + ("" if policy.hold_needs_review else f" (delivered under {policy.profile})"))
    return ContentDecision(policy.profile.value, HOLD if any(hold) else DELIVER, tuple(reasons), checks,
                           visible_label)
