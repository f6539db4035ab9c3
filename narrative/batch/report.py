"""The batch report a writer reads: ``<out>/report.md`` (and ``report.json`` for tools).

Per run: counts, tokens, tokens/s, prefill vs decode share; per item: status,
why it was generated, attempts, findings. Timings make the report differ from
run to run; the quest files themselves are deterministic.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from narrative.batch.generator import ItemResult
from narrative.batch.manifest import Components, Manifest
from narrative.batch.spec import SpecFile
from narrative.files import atomic_write


@dataclass
class PlanItem:
    spec_file: SpecFile
    action: str  # generate | skip | adopt | error
    reasons: list[str]
    components: Components | None = None
    error: str | None = None


@dataclass
class BatchSummary:
    """Counts and totals of one run. Token counts: prompt (all decoded) and sampled completion tokens."""

    items: list[ItemResult]
    plan: list[PlanItem]
    wall_s: float
    spec_problems: list[str]
    orphans: list[str]

    def count(self, *statuses: str) -> int:
        return sum(1 for r in self.items if r.status in statuses)

    @property
    def generated(self) -> int:
        return self.count("ok", "flagged")

    @property
    def failed(self) -> int:
        return self.count("failed") + len(self.spec_problems)

    @property
    def completion_tokens(self) -> int:
        return sum(r.completion_tokens for r in self.items)

    @property
    def prompt_tokens(self) -> int:
        return sum(r.prompt_tokens for r in self.items)

    @property
    def prefill_s(self) -> float:
        return sum(r.prefill_ms for r in self.items) / 1000

    @property
    def decode_s(self) -> float:
        return sum(r.decode_ms for r in self.items) / 1000

    def line(self) -> str:
        tps = self.completion_tokens / self.decode_s if self.decode_s else 0.0
        gen_s = self.prefill_s + self.decode_s
        return (
            f"{self.generated} generated ({self.count('flagged')} with error findings), {self.count('skipped')} skipped, "
            f"{self.count('adopted')} adopted, {self.failed} failed; {self.prompt_tokens} prompt + {self.completion_tokens} "
            f"completion tokens, {tps:.1f} tok/s decode, prefill {100 * self.prefill_s / gen_s if gen_s else 0:.0f}% of model time; "
            f"wall {self.wall_s:.1f} s"
        )


def item_reasons(r: ItemResult) -> list[str]:
    """Why an item is not a clean ``ok``: its error findings' checks, or its failure (``invalid output``, ``error``)."""
    from narrative.batch.checks import failing_reasons

    if r.status in ("ok", "skipped", "adopted"):
        return []
    out = failing_reasons(r.findings) + sorted({f.check for f in r.findings if f.severity == "error"} - set(failing_reasons(r.findings)))
    if not out and r.status == "failed":
        out = ["invalid output" if r.attempts else "error"]
    return out


def reason_counts(summary: BatchSummary) -> dict[str, int]:
    """Reason -> number of items not ``ok`` for it (an item counts once per reason)."""
    return dict(sorted(Counter(x for r in summary.items for x in item_reasons(r)).items(), key=lambda kv: (-kv[1], kv[0])))


def summary_dict(summary: BatchSummary) -> dict:
    gen_s = summary.prefill_s + summary.decode_s
    return {
        "generated": summary.generated,
        "retried": sum(1 for r in summary.items if len(r.attempts) > 1),
        "reasons": reason_counts(summary),
        "flagged": summary.count("flagged"),
        "skipped": summary.count("skipped"),
        "adopted": summary.count("adopted"),
        "failed": summary.failed,
        "prompt_tokens": summary.prompt_tokens,
        "completion_tokens": summary.completion_tokens,
        "decode_tokens_per_s": round(summary.completion_tokens / summary.decode_s, 2) if summary.decode_s else 0.0,
        "prefill_s": round(summary.prefill_s, 2),
        "decode_s": round(summary.decode_s, 2),
        "prefill_share": round(summary.prefill_s / gen_s, 3) if gen_s else 0.0,
        "wall_s": round(summary.wall_s, 2),
        "quests_per_min": round(60 * summary.generated / summary.wall_s, 2) if summary.wall_s and summary.generated else 0.0,
        "spec_problems": summary.spec_problems,
        "orphans": summary.orphans,
        "by_endpoint": dict(sorted(Counter(r.endpoint for r in summary.items if r.endpoint and r.status in ("ok", "flagged")).items())),
    }


def write_batch_report(out: Path, summary: BatchSummary, manifest: Manifest) -> None:
    """Write ``report.json`` and ``report.md`` into `out` (atomically)."""
    head = summary_dict(summary)
    items = []
    for r in summary.items:
        items.append(
            {
                "quest": r.quest_id,
                "status": r.status,
                "reasons": r.reasons,
                "error": r.error,
                "endpoint": r.endpoint,
                "attempts": [
                    {"n": a.n, "seed": a.seed, "error": a.error, "error_findings": sum(f.severity == "error" for f in a.findings),
                     "completion_tokens": a.completion_tokens, "prefill_ms": round(a.prefill_ms, 1), "decode_ms": round(a.decode_ms, 1)}
                    for a in r.attempts
                ],
                "findings": [f.to_dict() for f in r.findings],
            }
        )
    atomic_write(out / "report.json", (json.dumps({"summary": head, "items": items}, indent=1, ensure_ascii=False) + "\n").encode())

    checks = Counter((f.check, f.severity) for r in summary.items for f in r.findings)
    md = ["# Quest batch report", "", summary.line(), ""]
    if head["by_endpoint"]:
        md += ["Generated per endpoint: " + ", ".join(f"{url} {n}" for url, n in head["by_endpoint"].items()), ""]
    if summary.spec_problems:
        md += ["## Spec problems", ""] + [f"- `{p}`" for p in summary.spec_problems] + [""]
    reasons = head["reasons"]
    if reasons:
        md += ["## Items not ok, by reason", "", f"{head['retried']} items retried.", "", "| reason | items |", "|---|---|"]
        md += [f"| {k} | {n} |" for k, n in reasons.items()] + [""]
    if checks:
        md += ["## Findings by check", "", "| check | severity | count |", "|---|---|---|"]
        md += [f"| {c} | {s} | {n} |" for (c, s), n in sorted(checks.items())] + [""]
    remote = any(r.endpoint for r in summary.items)  # fanned out over HTTP endpoints: say which made each item
    md += ["## Items", "", "| quest | status | why | attempts | tokens | findings |" + (" endpoint |" if remote else ""),
           "|---|---|---|---|---|---|" + ("---|" if remote else "")]
    for r in summary.items:
        why = "; ".join(r.reasons) or "-"
        md.append(f"| {r.quest_id} | {r.status} | {why} | {len(r.attempts)} | {r.completion_tokens} | {len(r.findings)} |" + (f" {r.endpoint or '-'} |" if remote else ""))
    md.append("")
    for r in summary.items:
        if r.error or r.findings:
            md += [f"### {r.quest_id} ({r.status})", ""]
            if r.error:
                md += [f"- failed: {r.error}"]
            md += [f"- {f.severity} `{f.check}` in {f.field}: {f.message}" for f in r.findings]
            md.append("")
    if summary.orphans:
        md += ["## Outputs with no spec (left in place)", ""] + [f"- quests/{o}.json" for o in summary.orphans] + [""]
    atomic_write(out / "report.md", "\n".join(md).encode())
