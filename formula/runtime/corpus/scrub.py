"""Secrets and personal data out of transcripts, replaced by typed placeholders.

Two layers: patterns for the credentials agent sessions really leak (PEM private keys, JWTs,
AWS, GitHub, Slack, OpenAI and Anthropic keys, passwords in URLs, `.env`-style assignments) and
for PII (e-mail, phone numbers, IP addresses, user names in home paths); then detect-secrets'
plugins with their false-positive filters (keyword assignments, high-entropy strings, and the
vendor formats it knows). Every hit becomes `<secret:KIND>` or `<pii:KIND>`; the report counts
hits per kind and per source file and never holds a secret.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

SECRET_PATTERNS: tuple[tuple[str, re.Pattern, int], ...] = (
    # kind, pattern, group to replace (0: the whole match)
    ("private_key", re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----.*?"
                               r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----", re.S), 0),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), 0),
    ("anthropic_key", re.compile(r"\bsk-ant-(?:api|admin)?\d*-?[A-Za-z0-9_-]{20,}"), 0),
    ("openai_key", re.compile(r"\bsk-(?:proj-|svcacct-|None-)?[A-Za-z0-9_-]{20,}"), 0),
    ("aws_access_key", re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b"), 0),
    ("aws_secret_key", re.compile(r"(?i)aws_?secret_?(?:access_?)?key[\"']?\s*[:=]\s*[\"']?"
                                  r"([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])"), 1),
    ("github_token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})"), 0),
    ("slack_token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}|https://hooks\.slack\.com/services/"
                               r"[A-Za-z0-9/]+"), 0),
    ("url_password", re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@<>\"']+:([^\s/@<>\"']+)@"), 1),
    # `.env` lines: NAME=value with no spaces around `=` (code written to PEP 8 has them)
    ("env_value", re.compile(r"(?m)^[ \t]*(?:export[ \t]+)?[A-Z][A-Z0-9_]*(?:KEY|SECRET|TOKEN|PASSWORD|"
                             r"PASSWD|PWD|CREDENTIALS?|AUTH)[A-Z0-9_]*=[\"']?"
                             r"(?!\d+\b)([^\s\"'<>]{4,})"), 1),
)

PII_PATTERNS: tuple[tuple[str, re.Pattern, int], ...] = (
    ("email", re.compile(r"\b[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b"), 0),
    ("user", re.compile(r"(?:/home/|/Users/|[A-Za-z]:\\\\?Users\\\\?)([A-Za-z0-9._-]+)"), 1),
    # Claude Code names project folders after the cwd with "/" as "-": -home-alice-gt-mayor
    ("user", re.compile(r"(?<![\w])-(?:home|Users)-([A-Za-z0-9._]+?)-(?=[A-Za-z0-9._])"), 1),
    ("phone", re.compile(r"(?<![\w.])(?:\+\d{1,3}[ .-]?)?\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}(?![\w.])"), 0),
    ("ip", re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
                      r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w.])"), 0),
)

def _documentation_nets():
    import ipaddress

    return tuple(ipaddress.IPv4Network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"))


DOCUMENTATION_NETS = _documentation_nets()  # RFC 5737: addresses for examples


def _not_a_host(value: str, text: str, end: int) -> bool:
    """Dotted quads that identify no machine: networks in CIDR notation, netmasks, loopback,
    unspecified, multicast and reserved addresses, and version numbers such as 0.5.1.2."""
    import ipaddress

    if text.startswith("/", end) and text[end + 1:end + 2].isdigit():
        return True
    octets = [int(x) for x in value.split(".")]
    if octets[0] == 0 or all(o in (0, 128, 192, 224, 240, 248, 252, 254, 255) for o in octets) \
            and octets[0] == 255:
        return True
    if re.search(r"(?i)(section|sec\.|§|rfc\s?\d+#?)[\s-]*$", text[max(0, end - len(value) - 12):end - len(value)]):
        return True  # a section number of a specification
    ip = ipaddress.IPv4Address(value)
    return ip.is_loopback or ip.is_unspecified or ip.is_multicast or ip.is_reserved or \
        ip.is_link_local or any(ip in net for net in DOCUMENTATION_NETS)
KIND_GROUPS = {"secrets": {k for k, _, _ in SECRET_PATTERNS} | {"detected"},
               "pii": {"email", "user", "phone", "ip"}, "emails": {"email"}, "phones": {"phone"},
               "ips": {"ip"}, "home_paths": {"user"}}
MIN_DETECTED = 8  # shorter values reported by a plugin are prefixes, not whole secrets
PLACEHOLDER = re.compile(r"<(?:secret|pii):[a-z0-9_]+>")
HELD = "SCRUBBEDHELD"


@dataclass
class ScrubReport:
    by_kind: Counter = field(default_factory=Counter)
    by_file: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))

    def to_json(self) -> dict:
        return {"by_kind": dict(sorted(self.by_kind.items())),
                "by_file": {f: dict(sorted(c.items())) for f, c in sorted(self.by_file.items())},
                "total": sum(self.by_kind.values())}


class Scrubber:
    def __init__(self, kinds: list[str] | tuple[str, ...]):
        wanted: set[str] = set()
        for k in kinds:
            wanted |= KIND_GROUPS.get(k, {k})
        self.secret_rules = [r for r in SECRET_PATTERNS if r[0] in wanted]
        self.pii_rules = [r for r in PII_PATTERNS if r[0] in wanted]
        self.detect = "detected" in wanted
        self._settings = None

    def scrub(self, text: str, source: str, report: ScrubReport) -> str:
        if not text:
            return text
        for kind, pattern, group in self.secret_rules:
            text = _replace(text, pattern, group, f"<secret:{kind}>", kind, source, report)
        if self.detect:
            text = self._detect_secrets(text, source, report)
        for kind, pattern, group in self.pii_rules:
            text = _replace(text, pattern, group, f"<pii:{kind}>", kind, source, report,
                            skip=_not_a_host if kind == "ip" else None)
        return text

    def _detect_secrets(self, text: str, source: str, report: ScrubReport) -> str:
        from detect_secrets.core.scan import _process_line_based_plugins
        from detect_secrets.settings import default_settings

        # Placeholders already in the text hide behind colon-free tokens, so that a plugin does
        # not read `https://<secret:github_token>@host` as credentials of its own.
        held: list[str] = []

        def hold(m: re.Match) -> str:
            held.append(m.group(0))
            return f"{HELD}{len(held) - 1}Z"

        text = PLACEHOLDER.sub(hold, text)
        lines = list(enumerate(text.split("\n"), 1))
        with default_settings():
            found = {(s.type, s.secret_value) for s in _process_line_based_plugins(lines, "transcript.txt")
                     if s.secret_value and len(s.secret_value) >= MIN_DETECTED and HELD not in s.secret_value}
        # One value may be reported by several plugins; a fixed order (longest value first, a
        # vendor's own format before keyword and entropy guesses) keeps the output deterministic.
        generic = ("Secret Keyword", "Base64 High Entropy String", "Hex High Entropy String")
        for type_, value in sorted(found, key=lambda tv: (-len(tv[1]), tv[0] in generic,
                                                          generic.index(tv[0]) if tv[0] in generic else 0,
                                                          tv[0])):
            kind = re.sub(r"[^a-z0-9]+", "_", type_.lower()).strip("_")
            count = text.count(value)
            if count:
                text = text.replace(value, f"<secret:{kind}>")
                report.by_kind[kind] += count
                report.by_file[source][kind] += count
        return re.sub(f"{HELD}(\\d+)Z", lambda m: held[int(m.group(1))], text)


def _replace(text: str, pattern: re.Pattern, group: int, placeholder: str, kind: str, source: str,
             report: ScrubReport, skip=None) -> str:
    out, last, hits = [], 0, 0
    for m in pattern.finditer(text):
        value = m.group(group)
        if value is None or "<secret:" in value or "<pii:" in value or \
                (skip is not None and skip(value, text, m.end(group))):
            continue
        start, end = m.span(group)
        out.append(text[last:start])
        out.append(placeholder)
        last = end
        hits += 1
    if not hits:
        return text
    out.append(text[last:])
    report.by_kind[kind] += hits
    report.by_file[source][kind] += hits
    return "".join(out)
