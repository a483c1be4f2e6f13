"""Secrets and personal data out of transcripts, replaced by typed placeholders.

Three layers, in this order:

1. Patterns for credentials: PEM private keys (whole or cut off), JWTs, the vendor token formats
   with a fixed prefix or shape (cloud providers, code hosts, chat, payment, mail, package
   registries, AI providers, observability and hosting services; the table `VENDOR_PATTERNS`
   lists them), then credentials recognised by context: AWS secret keys and session tokens by
   their key names, passwords in URLs, `Authorization` headers, `--password`-style flags,
   `.env`-style `NAME=value` assignments of keys, tokens and passwords, and unquoted
   `key: value` settings (YAML, INI) whose key names a credential.
2. detect-secrets' plugins with their false-positive filters (keyword assignments, high-entropy
   strings, and the vendor formats it knows).
3. PII: e-mail addresses, user names in home paths (`/home/alice`, `/Users/bob`,
   `C:\\Users\\carol`), in Claude Code's project-folder names (`-home-alice-gt-mayor`) and in
   shell prompts (`alice@devbox:~$`), phone numbers, and IPv4 addresses of hosts.

Every hit becomes `<secret:KIND>` or `<pii:KIND>`; the report counts hits per kind and per
source file and never holds a secret: its file names pass through `scrub_path`.

`scrub_path` and `scrub_text` scrub strings that leave the corpus step outside the corpus itself
(report keys, file lists, error messages, action records).
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

# A rule: kind, pattern, group to replace (0: the whole match), literal hints (the pattern can
# only match where one of them occurs, a cheap test that spares most texts most patterns; an
# empty tuple: always try), and an optional check that rejects a match (value, text, end of the
# value) -> True to leave it alone.
Rule = tuple[str, re.Pattern, int, tuple[str, ...], "Callable[[str, str, int], bool] | None"]


_CASE_BLIND: set[re.Pattern] = set()  # patterns whose hints are looked up in lowercased text


class _HintIndex:
    """Which rules' fixed strings (hints) occur in a text, found by two regex scans (exact and
    case-blind) instead of one `in` test per hint per rule."""

    def __init__(self, rules: Iterable[Rule]):
        exact = {h for r in rules if r[1] not in _CASE_BLIND for h in r[3]}
        blind = {h for r in rules if r[1] in _CASE_BLIND for h in r[3]}

        def alternation(hints: set[str], flags: int = 0) -> re.Pattern | None:
            # longest first; overlapping hints are found with a lookahead
            if not hints:
                return None
            body = "|".join(re.escape(h) for h in sorted(hints, key=lambda h: (-len(h), h)))
            return re.compile(f"(?=({body}))", flags)

        self.exact, self.blind = alternation(exact), alternation(blind, re.IGNORECASE)
        # At one position the scan reports the longest hint only; the shorter hints inside it
        # (`sk-` in `sk-ant-`) are then present too.
        every = exact | blind
        lowered = {h.lower() for h in every}
        self.inside = {h: {g for g in every if g != h and (g in h or (g in blind and g in h.lower()))}
                       for h in every | lowered}

    def present(self, text: str) -> set[str]:
        found: set[str] = set()
        if self.exact is not None:
            found.update(m.group(1) for m in self.exact.finditer(text))
        if self.blind is not None:
            found.update(m.group(1).lower() for m in self.blind.finditer(text))
        for h in list(found):
            found |= self.inside.get(h, set())
        return found


def _rule(kind: str, pattern: str, group: int = 0, hints: Iterable[str] = (), flags: int = 0,
          skip=None) -> Rule:
    compiled = re.compile(pattern, flags)
    if compiled.flags & re.IGNORECASE:
        hints = {h.lower() for h in hints}
        _CASE_BLIND.add(compiled)
    return (kind, compiled, group, tuple(sorted(hints)), skip)


_T = r"(?![0-9A-Za-z_-])"  # end of a token written in URL-safe base64 characters


# Vendor formats: a fixed prefix or a shape no ordinary text has. Written from the vendors'
# documented formats; each is exercised by an item of tests/test_scrub.py.
VENDOR_PATTERNS: tuple[Rule, ...] = (
    # Google / GCP: API keys, OAuth client secrets, access and refresh tokens, service accounts
    _rule("google_api_key", r"\bAIza[0-9A-Za-z_-]{35}" + _T, hints=("AIza",)),
    _rule("google_oauth", r"\bGOCSPX-[0-9A-Za-z_-]{28}" + _T + r"|\bya29\.[0-9A-Za-z_-]{20,}"
          r"|(?<![\w/])1//0[0-9A-Za-z_-]{35,}", hints=("GOCSPX-", "ya29.", "1//0")),
    _rule("gcp_service_account", r"\"private_key_id\\?\"\s*:\s*\\?\"([0-9a-f]{40})\b", 1,
          hints=("private_key_id",)),
    # Azure: storage and service-bus keys, SAS signatures, Entra ID client secrets
    _rule("azure_key", r"(?i)(?:AccountKey|SharedAccessKey|(?:azure_?)?storage_?(?:account_?)?key"
          r"|account_?key)[\"']?\s*[:=]\s*[\"']?([A-Za-z0-9+/]{40,88}={0,2})",
          1, hints=("accountkey", "accesskey", "storage", "account_key")),
    _rule("azure_key", r"(?<![\w~.-])[A-Za-z0-9_~.]{3}\dQ~[A-Za-z0-9_~.-]{31,34}(?![\w~.-])",
          hints=("Q~",)),
    _rule("azure_sas", r"[?&]sig=([A-Za-z0-9%+/]{30,}(?:%3[Dd]|=){0,2})", 1, hints=("sig=",)),
    # AWS access key ids (secret keys: by context, below)
    _rule("aws_access_key", r"\b(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA"
          r"|AROA|ASCA)[A-Z0-9]{16}\b"),
    # code hosts
    _rule("github_token", r"\bgh[pousr]_[A-Za-z0-9]{36,}|\bgithub_pat_[A-Za-z0-9_]{22,}",
          hints=("gh", "github_pat_")),
    _rule("gitlab_token", r"\b(?:glpat|gldt|glrt|glptt|glcbt|glft|glimt|glagent|glsoat|gloas|"
          r"glffct|glwt|glcpat)-[0-9A-Za-z_-]{20,}(?:\.[0-9A-Za-z_-]+)*|\bGR1348941[0-9A-Za-z_-]{20,}",
          hints=("gl", "GR1348941")),
    _rule("bitbucket_token", r"\bATBB[0-9A-Za-z]{28,}\b", hints=("ATBB",)),
    # chat
    _rule("slack_token", r"\bxox[abposre]-[0-9A-Za-z-]{10,}|\bxoxe\.xox[bp]-\d-[0-9A-Za-z]{40,}"
          r"|\bxapp-\d-[0-9A-Za-z]+-\d+-[0-9A-Za-z]+|https://hooks\.slack\.com/(?:services|workflows|"
          r"triggers)/[0-9A-Za-z/_+-]{10,}", hints=("xox", "xapp-", "hooks.slack.com")),
    _rule("discord_token", r"(?<![0-9A-Za-z_-])[MNO][0-9A-Za-z_-]{23,27}\.[0-9A-Za-z_-]{6}\."
          r"[0-9A-Za-z_-]{27,40}" + _T, hints=(".",)),
    _rule("discord_token", r"discord(?:app)?\.com/api/webhooks/\d+/([0-9A-Za-z_-]{20,})", 1,
          hints=("discord",)),
    _rule("telegram_bot_token", r"(?:(?<=/bot)|(?<![\w:]))\d{8,10}:[0-9A-Za-z_-]{35}" + _T, hints=(":",),
          skip=lambda v, text, end: not re.search(r"[A-Za-z]", v.split(":", 1)[1])),
    _rule("teams_webhook", r"https://[\w.-]+\.webhook\.office\.com/webhookb2/[\w@/-]{20,}",
          hints=("webhook.office.com",)),
    # payments and commerce
    _rule("stripe_key", r"\b(?:sk|rk)_(?:live|test|prod)_[0-9A-Za-z]{10,99}\b|\bwhsec_[0-9A-Za-z]{24,}\b",
          hints=("k_live_", "k_test_", "k_prod_", "whsec_")),
    _rule("square_token", r"\bsq0(?:atp|csp|idp)-[0-9A-Za-z_-]{22,43}" + _T + r"|\bEAAA[0-9A-Za-z_+-]{60}" + _T,
          hints=("sq0", "EAAA")),
    _rule("shopify_token", r"\bshp(?:at|ca|pa|ss)_[0-9a-fA-F]{32}\b", hints=("shp",)),
    _rule("flutterwave_key", r"\bFLWSECK(?:_TEST)?-[0-9a-h]{32}-X\b", hints=("FLWSECK",)),
    _rule("shippo_token", r"\bshippo_(?:live|test)_[0-9a-f]{40}\b", hints=("shippo_",)),
    _rule("easypost_key", r"\bEZ[AT]K[0-9A-Za-z]{54}\b", hints=("EZ",)),
    _rule("duffel_token", r"\bduffel_(?:test|live)_[0-9A-Za-z_=-]{43}", hints=("duffel_",)),
    # messaging and mail
    _rule("twilio_key", r"\bSK[0-9a-fA-F]{32}\b|\bAC[0-9a-f]{32}\b", hints=("SK", "AC")),
    _rule("sendgrid_key", r"\bSG\.[0-9A-Za-z_-]{22}\.[0-9A-Za-z_-]{43}" + _T, hints=("SG.",)),
    _rule("mailgun_key", r"\b(?:pub)?key-[0-9a-f]{32}\b|\b[0-9a-f]{32}-[0-9a-f]{8}-[0-9a-f]{8}\b",
          hints=("key-", "-")),
    _rule("mailchimp_key", r"\b[0-9a-f]{32}-us\d{1,2}\b", hints=("-us",)),
    # package registries
    _rule("npm_token", r"\bnpm_[0-9A-Za-z]{36}\b", hints=("npm_",)),
    _rule("npm_token", r"(?<![\w])_(?:authToken|auth|password)\s*=\s*[\"']?([^\s\"'$]{8,})", 1,
          hints=("_auth", "_password")),
    _rule("pypi_token", r"\bpypi-AgE[0-9A-Za-z_-]{50,}", hints=("pypi-AgE",)),
    _rule("rubygems_token", r"\brubygems_[0-9a-f]{48}\b", hints=("rubygems_",)),
    _rule("clojars_token", r"\bCLOJARS_[0-9a-z]{60}\b", hints=("CLOJARS_",)),
    _rule("docker_token", r"\bdckr_pat_[0-9A-Za-z_-]{27,}", hints=("dckr_pat_",)),
    _rule("artifactory_token", r"(?<![\w])AKC[0-9A-Za-z]{69,}\b", hints=("AKC",)),
    # AI providers
    _rule("anthropic_key", r"\bsk-ant-(?:api|admin|oat|ort|sid)?\d*-?[A-Za-z0-9_-]{20,}", hints=("sk-ant-",)),
    _rule("openai_key", r"\bsk-(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_-]{20,}", hints=("sk-",)),
    _rule("huggingface_token", r"\bhf_[0-9A-Za-z]{30,}\b|\bapi_org_[0-9A-Za-z]{30,}\b",
          hints=("hf_", "api_org_")),
    _rule("replicate_token", r"\br8_[0-9A-Za-z]{37}\b", hints=("r8_",)),
    _rule("groq_key", r"\bgsk_[0-9A-Za-z]{48,52}\b", hints=("gsk_",)),
    _rule("perplexity_key", r"\bpplx-[0-9A-Za-z]{40,}\b", hints=("pplx-",)),
    _rule("xai_key", r"\bxai-[0-9A-Za-z]{70,}\b", hints=("xai-",)),
    # developer platforms and hosting
    _rule("atlassian_token", r"\bAT(?:ATT|CTT)3[0-9A-Za-z_=-]{100,}", hints=("ATATT3", "ATCTT3")),
    _rule("databricks_token", r"\bdapi[0-9a-f]{32}(?:-\d)?\b", hints=("dapi",)),
    _rule("digitalocean_token", r"\bdo[opr]_v1_[0-9a-f]{64}\b", hints=("_v1_",)),
    _rule("heroku_key", r"\bHRKU-[0-9A-Za-z_-]{20,}", hints=("HRKU-",)),
    _rule("heroku_key", r"(?i)heroku[\w-]*(?:key|token|secret)[\"']?\s*[:=]\s*[\"']?([0-9a-f]{8}-"
          r"[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\b", 1, hints=("heroku",)),
    _rule("fly_token", r"\bfo1_[0-9A-Za-z_-]{43}|\bfm[12][ar]?_[0-9A-Za-z+/=_-]{40,}", hints=("fo1_", "fm")),
    _rule("vercel_token", r"(?i)vercel[\w-]*(?:token|key)[\"']?\s*[:=]\s*[\"']?([0-9A-Za-z]{24})\b", 1,
          hints=("vercel",)),
    _rule("netlify_token", r"\bnfp_[0-9A-Za-z]{36,}\b", hints=("nfp_",)),
    _rule("supabase_key", r"\bsbp_[0-9a-f]{40}\b|\bsb_secret_[0-9A-Za-z_-]{20,}", hints=("sbp_", "sb_secret_")),
    _rule("planetscale_token", r"\bpscale_(?:tkn|pw|oauth)_[0-9A-Za-z_.-]{32,64}", hints=("pscale_",)),
    _rule("cloudflare_key", r"\bv1\.0-[0-9a-f]{24}-[0-9a-f]{146}\b", hints=("v1.0-",)),
    _rule("vault_token", r"\bhv[sbr]\.[0-9A-Za-z_-]{24,}", hints=("hvs.", "hvb.", "hvr.")),
    _rule("terraform_token", r"\b[0-9A-Za-z]{14}\.atlasv1\.[0-9A-Za-z_=-]{60,70}", hints=(".atlasv1.",)),
    _rule("pulumi_token", r"\bpul-[0-9a-f]{40}\b", hints=("pul-",)),
    _rule("doppler_token", r"\bdp\.(?:pt|st|sa|ct|scim|audit)\.[0-9A-Za-z]{40,44}\b", hints=("dp.",)),
    _rule("onepassword_token", r"\bops_eyJ[0-9A-Za-z+/=_-]{100,}|\bA3-[A-Z0-9]{6}-(?:[A-Z0-9]{11}|"
          r"[A-Z0-9]{6}-[A-Z0-9]{5})-[A-Z0-9]{5}-[A-Z0-9]{5}-[A-Z0-9]{5}\b", hints=("ops_eyJ", "A3-")),
    _rule("age_secret_key", r"\bAGE-SECRET-KEY-1[0-9A-Z]{58}\b", hints=("AGE-SECRET-KEY-",)),
    _rule("alibaba_key", r"\bLTAI[0-9A-Za-z]{12,20}\b", hints=("LTAI",)),
    _rule("openshift_token", r"\bsha256~[0-9A-Za-z_-]{43}" + _T, hints=("sha256~",)),
    _rule("prefect_token", r"\bpnu_[0-9A-Za-z]{36}\b", hints=("pnu_",)),
    _rule("readme_token", r"\brdme_[0-9a-z]{70}\b", hints=("rdme_",)),
    _rule("linear_key", r"\blin_api_[0-9A-Za-z]{40}\b", hints=("lin_api_",)),
    _rule("notion_token", r"\bntn_[0-9A-Za-z]{40,}\b|\bsecret_[0-9A-Za-z]{43}\b", hints=("ntn_", "secret_")),
    _rule("figma_token", r"\bfigd_[0-9A-Za-z_-]{40,}", hints=("figd_",)),
    _rule("postman_key", r"\bPMAK-[0-9a-f]{24}-[0-9a-f]{34}\b", hints=("PMAK-",)),
    _rule("typeform_token", r"\btfp_[0-9A-Za-z_=.-]{59}", hints=("tfp_",)),
    _rule("harness_token", r"\bpat\.[0-9A-Za-z_-]{22}\.[0-9a-z]{24}\.[0-9A-Za-z]{20}\b", hints=("pat.",)),
    _rule("octopus_key", r"\bAPI-[A-Z0-9]{26}\b", hints=("API-",)),
    _rule("infracost_key", r"\bico-[0-9A-Za-z]{32}\b", hints=("ico-",)),
    _rule("frameio_token", r"\bfio-u-[0-9A-Za-z_=-]{64}", hints=("fio-u-",)),
    _rule("adobe_key", r"\bp8e-[0-9A-Za-z]{32}\b", hints=("p8e-",)),
    _rule("scalingo_token", r"\btk-us-[0-9A-Za-z_-]{48}", hints=("tk-us-",)),
    # observability
    _rule("grafana_token", r"\bglc_[A-Za-z0-9+/]{32,}={0,2}|\bglsa_[0-9A-Za-z]{32}_[0-9A-Fa-f]{8}\b",
          hints=("glc_", "glsa_")),
    _rule("newrelic_key", r"\bNR(?:AK|JS|II|AA)-[0-9A-Za-z]{19,32}\b", hints=("NR",)),
    _rule("sentry_token", r"\bsntry[su]_[0-9A-Za-z+/=_-]{30,}", hints=("sntr",)),
    _rule("dynatrace_token", r"\bdt0c01\.[0-9A-Z]{24}\.[0-9A-Z]{64}\b", hints=("dt0c01.",)),
    # social
    _rule("facebook_token", r"\bEAA[A-Z][0-9A-Za-z]{80,}", hints=("EAA",)),
    _rule("twitter_token", r"\bAAAAAAAAAAAAAAAAAAAAA[0-9A-Za-z%]{30,}", hints=("AAAAAAAAAAAAAAAAAAAAA",)),
    _rule("mapbox_token", r"\bsk\.eyJ[0-9A-Za-z_-]{20,}\.[0-9A-Za-z_-]{20,}", hints=("sk.eyJ",)),
)

# Values that name something rather than hold a secret: code, placeholders, references.
_CODE_WORDS = {"none", "null", "true", "false", "nil", "undefined", "required", "optional", "changeme",
               "string", "str", "bytes", "int", "bool", "object", "secret", "password", "token"}
_REFERENCE = re.compile(r"^(?:[$%{<\[(`*]|\.\.\.)|\(|\)|^[xX*.•-]+$")
_PLACEHOLDER_VALUE = re.compile(r"(?i)^(?:your|my|the)[-_]|[-_]here$|^(?:changeme|placeholder|redacted|"
                                r"todo|tbd|xxx+|none|null|undefined|dummy|fake|test|secret|password)$")
_IDENTIFIER_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+$")


def _not_a_value(value: str, text: str = "", end: int = 0) -> bool:
    """A settings value that is code or a placeholder, not a credential: `None`, `os.environ`,
    `$TOKEN`, `${TOKEN}`, `<your-key>`, `your-key-here`, `get_token()`, `********`,
    `snake_case_names`, `UPPER_CASE_CONSTANTS`."""
    v = value.strip("\"'`")
    if len(v) < 6 or v.lower() in _CODE_WORDS or _REFERENCE.search(v) or _IDENTIFIER_PATH.match(v) or \
            _PLACEHOLDER_VALUE.search(v):
        return True
    # lower_snake_case words and UPPER_SNAKE_CASE constants are code (variables, functions,
    # constants) far more often than they are passwords; a value with a digit, a mix of cases or
    # a symbol is taken for a secret.
    return bool(re.fullmatch(r"[a-z_]+|[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+", v))


# a settings key that names a credential: it ends with one of these (`db_password`,
# `client_secret`, `auth_token`; not `token_type` or `AuthenticationError`)
_KEYWORDS = (r"(?:password|passwd|passphrase|pwd|secret|token|api_?key|apikey|access_?key|auth_?key|"
             r"secret_?key|private_?key|client_?secret|credentials?|auth)")

CONTEXT_PATTERNS: tuple[Rule, ...] = (
    _rule("aws_secret_key", r"(?i)(?:aws_?)?secret_?(?:access_?)?key(?:_?id)?[\"']?\s*[:=]\s*[\"']?"
          r"([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])", 1, hints=("secret",)),
    _rule("aws_secret_key", r"(?i)(?:aws_?)?session_?token[\"']?\s*[:=]\s*[\"']?([A-Za-z0-9/+=]{100,})",
          1, hints=("session",)),
    _rule("url_password", r"\b[a-zA-Z][a-zA-Z0-9+.-]{0,30}://[^\s:/@<>\"']{0,256}:([^\s/@<>\"']{1,256})@", 1,
          hints=("://",),
          skip=lambda v, text, end: v.startswith("$") or v in ("password", "pass", "PASSWORD", "secret")),
    _rule("auth_header", r"(?i)\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?(?:bearer|basic|token|bot|"
          r"apikey|digest)\s+([A-Za-z0-9._~+/=-]{8,})", 1, hints=("authorization",)),
    _rule("auth_header", r"(?i)(?<![\w-])(?:x-api-key|api-key|x-auth-token|private-token|x-access-token|"
          r"x-vault-token|x-figma-token|x-shopify-access-token)[\"']?\s*[:=]\s*[\"']?([A-Za-z0-9._~+/=-]{16,})",
          1, hints=("-key", "-token")),
    _rule("cli_secret", r"(?i)(?<![\w-])--(?:password|passwd|pass|token|api[-_]?key|secret|client[-_]secret|"
          r"auth[-_]token|access[-_]token)(?:=|\s+)[\"']?([^\s\"'$<{-][^\s\"']{5,})", 1, hints=("--",),
          skip=lambda v, text, end: _not_a_value(v)),
    # `.env` lines and shell assignments: NAME=value with no spaces around `=` (code written to
    # PEP 8 has them), at the start of a line (also one that starts after an escaped `\n` in a
    # JSON string) or after a shell separator.
    _rule("env_value", r"(?m)(?:^|(?<=[\s;&|\"'`])|(?<=\\n))(?:export[ \t]+)?[A-Z][A-Z0-9_]*(?:KEY|SECRET|TOKEN|"
          r"PASSWORD|PASSWD|PASS|PWD|CREDENTIALS?|AUTH)[A-Z0-9_]*=[\"']?(?!\d+\b)(?![$%{<])([^\s\"'<>\\]{4,})",
          1, hints=("=",), skip=lambda v, text, end: bool(_PLACEHOLDER_VALUE.search(v))),
    # unquoted settings: `password: S3cr3t!` (YAML), `api_key = abc123` (INI, TOML without quotes)
    _rule("config_value", r"(?im)(?:^|(?<=\\n))[ \t]*(?:-[ \t]+)?[\"']?[\w.-]*" + _KEYWORDS + r"[\"']?[ \t]*[:=]"
          r"[ \t]*[\"']?([^\s\"'#,;{}()\[\]<>$\\]{6,})[\"']?[ \t]*,?[ \t]*(?:$|(?=\\[nr]))", 1,
          skip=lambda v, text, end: _not_a_value(v)),
)

SECRET_PATTERNS: tuple[Rule, ...] = (
    _rule("private_key", r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----.*?"
          r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----", flags=re.DOTALL, hints=("PRIVATE KEY",)),
    # a key cut off (`head key.pem`, a truncated tool output): the body up to the first line that
    # is not base64 or a PEM header
    _rule("private_key", r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----((?:\\[nr]|\s|"
          r"[A-Za-z0-9+/=]|[A-Za-z-]+: [^\n\\]*)+)", 1, hints=("PRIVATE KEY",)),
    _rule("jwt", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", hints=("eyJ",)),
) + VENDOR_PATTERNS + CONTEXT_PATTERNS

# --- PII ---------------------------------------------------------------------------------------

# lengths bounded as RFC 5321 bounds them, so that a long dotted run costs linear time
_EMAIL = r"[A-Za-z0-9._%+-]{1,64}(?:@|%40|\\u0040)(?:[A-Za-z0-9-]{1,63}\.){1,8}[A-Za-z]{2,24}\b"
_NOT_USERS = {"Shared", "Public", "Default", "All Users", "Default User", "<pii:user>"}
# user names: anything a file system allows up to the next separator; `$USER`, `*` and `<…>`
# are references, not names
_USER = r"(?![$*<{%])([\w.@+-]+)"
_USER_PATTERNS: tuple[Rule, ...] = (
    # Windows (before /Users/): C:\Users\carol, C:\\Users\\carol (escaped in JSON), C:/Users/carol; names may
    # hold spaces when a separator follows
    _rule("user", r"[A-Za-z]:(?:\\\\?|/)Users(?:\\\\?|/)([^\\/:*?\"<>|\r\n;,]{1,64}?)(?=\\|/)", 1,
          hints=("Users",)),
    _rule("user", r"[A-Za-z]:(?:\\\\?|/)Users(?:\\\\?|/)" + _USER, 1, hints=("Users",)),
    _rule("user", r"(?:/home/|/Users/)" + _USER, 1, hints=("/home/", "/Users/")),
    _rule("user", r"(?<![\w.~/-])~([a-z_][\w.-]*)(?=/)", 1, hints=("~",),
          skip=lambda v, text, end: v in ("", "root")),
    # shell prompts: alice@devbox:~/gt$
    _rule("user", r"(?<![\w.@-])([a-z_][a-z0-9_.-]{0,31})@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*:[~/]", 1,
          hints=("@",), skip=lambda v, text, end: v in ("git", "root")),
)
# Claude Code names a project folder after its working directory with every character other
# than a letter or digit written as "-": /home/alice/gt -> -home-alice-gt,
# C:\Users\carol\x -> C--Users-carol-x. The folder name is a whole path segment.
_FOLDER = (r"(?:(?<=[\s/\\\"'`=:(\[,])|^)(?:[A-Za-z]-)?-(?:[A-Za-z0-9_.]+-)*?(?:home|Users)-"
           r"(?![<$])({name})(?=$|[^A-Za-z0-9_.])")
_FOLDER_ANY = re.compile(_FOLDER.format(name=r"[A-Za-z0-9_.]+"), re.MULTILINE)  # one dash-separated part

# `git@github.com:owner/repo` is an address for ssh, not a person's; `icon@2x.png` is a file
_FILE_SUFFIXES = {"png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "pdf", "js", "ts", "css", "json", "py",
                  "md", "txt", "html", "tar", "gz", "zip"}


def _not_an_address(value: str, text: str, end: int) -> bool:
    local = value.split("@", 1)[0]
    return local in ("git", "hg") or value.rsplit(".", 1)[-1].lower() in _FILE_SUFFIXES


PII_PATTERNS: tuple[Rule, ...] = (
    _rule("email", r"\b" + _EMAIL, hints=("@", "%40", "\\u0040"), skip=_not_an_address),
) + _USER_PATTERNS + (
    ("user", _FOLDER_ANY, 1, ("-home-", "-Users-"), None),
    # phone numbers: international (+CC and 8 to 15 digits in groups), North American
    # (415-555-0134, (415) 555-0134, 415.555.0134) and national trunk-prefixed (020 7946 0958);
    # not glued to other digits, words or dotted numbers, so versions and ids stay
    _rule("phone", r"(?<![\w.+/-])(?:\+\d{1,3}(?:[ .-]?(?:\(\d{1,5}\)|\d{1,5})){1,6}"
          r"|(?:1[ .-])?(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4}"
          r"|0\d{1,4}[ .-]\d{3,4}[ .-]\d{3,4})(?!\w)(?![.,:/-]?\d)",
          skip=lambda v, text, end: _not_a_phone(v)),
    _rule("ip", r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
          r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w.])",
          skip=lambda v, text, end: _not_a_host(v, text, end)),
)


def _not_a_phone(value: str) -> bool:
    """Too few or too many digits for a phone number, a signed decimal (`+35236450.6`), a date,
    or a last group of one digit (phone numbers end in two or more)."""
    digits = sum(c.isdigit() for c in value)
    if not 8 <= digits <= 15 or re.fullmatch(r"\+\d+\.\d+", value) or \
            re.fullmatch(r"\+?(?:19|20)\d\d([-./])\d\d?\1\d\d?", value):
        return True  # a signed decimal, a date (`+2024-05-06` on a line a diff adds)
    if value.startswith("+") and not re.search(r"[ .()-]", value):
        return digits < 10  # E.164 without separators: +14155550134
    return len(re.split(r"[ .()-]+", value)[-1]) < 2


def _documentation_nets():
    import ipaddress

    return tuple(ipaddress.IPv4Network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"))


DOCUMENTATION_NETS = _documentation_nets()  # RFC 5737: addresses for examples


def _not_a_host(value: str, text: str, end: int) -> bool:
    """Dotted quads that identify no machine: networks in CIDR notation, netmasks, loopback,
    unspecified, multicast and reserved addresses, and version or section numbers such as
    0.5.1.2 or 2.7.2.2 (three leading parts of one digit: public resolvers such as 8.8.4.4 are
    left too, which names no person)."""
    import ipaddress

    if text.startswith("/", end) and text[end + 1:end + 2].isdigit():
        return True
    octets = [int(x) for x in value.split(".")]
    if all(o < 10 for o in octets[:3]):
        return True  # 2.7.2.2, 7.1.4.34, 8.2.4.44: versions and section numbers far more often
    if octets[0] == 0 or all(o in (0, 128, 192, 224, 240, 248, 252, 254, 255) for o in octets) \
            and octets[0] == 255:
        return True
    if re.search(r"(?i)(section|sec\.|§|rfc\s?\d+#?)[\s-]*$", text[max(0, end - len(value) - 12):end - len(value)]):
        return True  # a section number of a specification
    ip = ipaddress.IPv4Address(value)
    return ip.is_loopback or ip.is_unspecified or ip.is_multicast or ip.is_reserved or \
        ip.is_link_local or any(ip in net for net in DOCUMENTATION_NETS)


KIND_GROUPS = {"secrets": {r[0] for r in SECRET_PATTERNS} | {"detected"},
               "pii": {"email", "user", "phone", "ip"}, "emails": {"email"}, "phones": {"phone"},
               "ips": {"ip"}, "home_paths": {"user"}}
MIN_DETECTED = 8  # shorter values reported by a plugin are prefixes, not whole secrets
PLACEHOLDER = re.compile(r"<(?:secret|pii):[a-z0-9_]+>")
HELD = "SCRUBBEDHELD"
DETECT_CHUNK = 20_000  # detect-secrets skips very long lines (the fork: over 100,000 characters)


def _folder_variants(name: str) -> set[str]:
    """How a user name appears in a Claude Code folder name: every non-alphanumeric as "-"."""
    return {name, re.sub(r"[^A-Za-z0-9]", "-", name)}


@lru_cache(maxsize=64)
def _folder_pattern(names: frozenset[str]) -> re.Pattern:
    """The folder-name rule for user names known to hold dashes (`erin-w` from /home/erin.w),
    tried before the one-segment guess so that no part of such a name is left behind."""
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=lambda n: (-len(n), n)))
    return re.compile(_FOLDER.format(name=alternatives), re.MULTILINE)


@lru_cache(maxsize=1)
def _current_user() -> frozenset[str]:
    home = os.path.expanduser("~")
    parent, name = os.path.split(home.rstrip("/\\"))
    return frozenset({name} if name and os.path.basename(parent) in ("home", "Users") else ())


@dataclass
class ScrubReport:
    by_kind: Counter = field(default_factory=Counter)
    by_file: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))

    def merge(self, other: "ScrubReport") -> None:
        self.by_kind.update(other.by_kind)
        for source, counts in other.by_file.items():
            self.by_file[source].update(counts)

    def to_json(self) -> dict:
        """Counts per kind and per file. File names pass through `scrub_path`, so a report
        names no user even when its caller counted under an absolute path."""
        files: dict[str, Counter] = defaultdict(Counter)
        for f, c in self.by_file.items():
            files[scrub_path(f)].update(c)
        return {"by_kind": dict(sorted(self.by_kind.items())),
                "by_file": {f: dict(sorted(c.items())) for f, c in sorted(files.items())},
                "total": sum(self.by_kind.values())}


class Scrubber:
    """Scrubs text of the chosen kinds (`secrets`, `pii`, a group such as `emails`, or single
    kinds). User names found in home paths are remembered, so that a later Claude Code folder
    name holding the same name (with its dots and dashes) loses all of it; `users` adds names
    known beforehand, and the account running the build is always one."""

    def __init__(self, kinds: list[str] | tuple[str, ...], users: Iterable[str] = ()):
        wanted: set[str] = set()
        for k in kinds:
            wanted |= KIND_GROUPS.get(k, {k})
        self.secret_rules = [r for r in SECRET_PATTERNS if r[0] in wanted]
        self.pii_rules = [r for r in PII_PATTERNS if r[0] in wanted]
        self.detect = "detected" in wanted
        self.hints = _HintIndex(self.secret_rules + self.pii_rules)
        self.users: set[str] = set()
        for u in set(users) | _current_user():
            self.users |= _folder_variants(u)
        self.base_users = frozenset(self.users)

    def scrub(self, text: str, source: str, report: ScrubReport) -> str:
        """`text` with every hit replaced by its placeholder, counted in `report` under `source`.

        JSON inside the text (the whole text, as tool-call arguments are, or lines of it, as a
        tool result showing a JSONL file is) is also scrubbed decoded, string by string, so that
        rules see real newlines and quotes rather than `\\n` and `\\"`; it is written back
        in the layout it had where that layout is one `json.dumps` writes."""
        if not text:
            return text
        text = self._scrub_json(text, source, report, 0)
        return self._scrub_plain(text, source, report)

    def _scrub_json(self, text: str, source: str, report: ScrubReport, depth: int) -> str:
        if depth > 3 or ('{"' not in text and '["' not in text):
            return text
        if text.lstrip()[:1] in ("{", "["):
            whole = _json_scrubbed(text, lambda s: self._scrub_nested(s, source, report, depth))
            if whole is not None:
                return whole
        if "\n" not in text:
            return text
        lines = text.split("\n")
        for i, line in enumerate(lines):
            if line.lstrip()[:1] in ("{", "[") and len(line) > 2:
                done = _json_scrubbed(line, lambda s: self._scrub_nested(s, source, report, depth))
                if done is not None:
                    lines[i] = done
        return "\n".join(lines)

    def _scrub_nested(self, text: str, source: str, report: ScrubReport, depth: int) -> str:
        if len(text) < 6:  # no rule finds anything shorter (`a@b.io`, `1.2.3.4`, `/home/x`)
            return text
        text = self._scrub_json(text, source, report, depth + 1)
        return self._scrub_plain(text, source, report)

    def _scrub_plain(self, text: str, source: str, report: ScrubReport) -> str:
        present = self.hints.present(text)
        for rule in self.secret_rules:
            if rule[3] and not present.intersection(rule[3]):
                continue  # none of its fixed strings occurs: it cannot match
            text = _replace(text, rule, source, report)
        if self.detect:
            text = self._detect_secrets(text, source, report)
        present = self.hints.present(text)  # placeholders may have removed some
        for rule in self.pii_rules:
            if rule[3] and not present.intersection(rule[3]):
                continue
            kind, pattern = rule[0], rule[1]
            if pattern is _FOLDER_ANY:
                dashed = {u for u in self.users if "-" in u}
                if dashed and ("-home-" in text or "-Users-" in text):
                    text = _replace(text, ("user", _folder_pattern(frozenset(dashed)), 1, (), None),
                                    source, report)
            text = _replace(text, rule, source, report,
                            learn=self.users if kind == "user" and pattern is not _FOLDER_ANY else None)
        return text

    def _detect_secrets(self, text: str, source: str, report: ScrubReport) -> str:
        # Placeholders already in the text hide behind colon-free tokens, so that a plugin does
        # not read `https://<secret:github_token>@host` as credentials of its own.
        held: list[str] = []

        def hold(m: re.Match) -> str:
            held.append(m.group(0))
            return f"{HELD}{len(held) - 1}Z"

        text = PLACEHOLDER.sub(hold, text)
        found = {(t, v) for t, v, line in _detect_secrets_scan(text.split("\n"))
                 if v and len(v) >= MIN_DETECTED and HELD not in v and not _a_checksum(t, v, line)
                 and not (t == "Secret Keyword" and _not_a_keyword_secret(v, line))}
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


_JSON_LAYOUTS: tuple[dict[str, Any], ...] = ({}, {"separators": (",", ":")}, {"indent": 2}, {"indent": 4}, {"indent": 1})


def _json_scrubbed(text: str, scrub: Callable[[str], str]) -> str | None:
    """`text` parsed as JSON with `scrub` applied to every string (keys too) and written back;
    `text` itself when nothing changed; None when it is not a JSON object or array."""
    import json

    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, (dict, list)):
        return None
    changed = False

    def walk(x):
        nonlocal changed
        if isinstance(x, str):
            y = scrub(x)
            changed |= y != x
            return y
        if isinstance(x, list):
            return [walk(v) for v in x]
        if isinstance(x, dict):
            return {walk(k): walk(v) for k, v in x.items()}
        return x

    new = walk(data)
    if not changed:
        return text
    body = text.strip()
    head, tail = text[:len(text) - len(text.lstrip())], text[len(text.rstrip()):]
    for layout in _JSON_LAYOUTS:
        for ascii_ in (True, False):
            if json.dumps(data, ensure_ascii=ascii_, **layout) == body:
                return head + json.dumps(new, ensure_ascii=ascii_, **layout) + tail
    return head + json.dumps(new, ensure_ascii=False) + tail


def _detect_secrets_scan(lines: list[str]) -> list[tuple[str, str | None, str]]:
    """(secret type, value, line) for every finding of detect-secrets' default plugins and filters.

    Uses its line scanner, a private function whose signature differs between Yelp's last
    release (`(number, line)` pairs) and the maintained fork bc-detect-secrets (`(number, line,
    is_added, is_removed)`, with the file read from disk unless a line counts as added)."""
    import inspect

    from detect_secrets.core import scan
    from detect_secrets.settings import cache_bust, configure_settings_from_baseline

    numbered: list[tuple[int, str]] = []
    for line in lines:
        if not _DETECT_CANDIDATE.search(line):
            continue  # nothing any plugin could report: no long token, no keyword, no credentials
        while len(line) > DETECT_CHUNK:  # at a space where there is one, so no value is cut
            cut = line.rfind(" ", 0, DETECT_CHUNK)
            cut = cut if cut > 0 else DETECT_CHUNK
            numbered.append((len(numbered) + 1, line[:cut]))
            line = line[cut:]
        numbered.append((len(numbered) + 1, line))
    global _DETECT_CONFIGURED
    if not _DETECT_CONFIGURED:
        # What `default_settings()` sets (every plugin, the default filters), set once for the
        # process: entering that context per call rebuilds every plugin and cache, about 1 ms
        # a message. Nothing else in formula configures detect-secrets.
        from detect_secrets.core.plugins import util

        cache_bust()
        configure_settings_from_baseline({"plugins_used": [
            {"name": plugin.__name__} for plugin in util.get_mapping_from_secret_type_to_class().values()]})
        _DETECT_CONFIGURED = True
    global _DETECT_FORK
    if _DETECT_FORK is None:
        _DETECT_FORK = "commit_hash" in inspect.signature(scan._process_line_based_plugins).parameters
    fork = _DETECT_FORK
    rows: list[Any] = [(n, line, True, False) for n, line in numbered] if fork else list(numbered)
    return [(s.type, s.secret_value, numbered[s.line_number - 1][1])
            for s in scan._process_line_based_plugins(rows, "transcript.txt")]


_DETECT_CONFIGURED = False
_DETECT_FORK: bool | None = None
# A line detect-secrets could report on holds a long token (vendor keys, high-entropy strings,
# JWTs; the shortest its plugins find is 16 characters), a keyword its keyword plugin reads, a
# private key header or credentials in a URL. Most lines of a transcript hold none of these,
# and skipping them leaves its findings as they were (tests/test_scrub.py holds the proof).
_DETECT_CANDIDATE = re.compile(
    r"[A-Za-z0-9+/=_.-]{16,}|(?i:pass|pwd|secret|token|key|auth|cred|private|api|bearer|sig)|://[^\s]*@")


def _not_a_keyword_secret(value: str, line: str) -> bool:
    """A keyword finding (`token_type = 'quoted-string'`, `pad_token = "<pad>"`) whose value is
    code or a placeholder. Lowercase words (`snake_case`, `kebab-case`) count as code unless the line names a password or secret
    (`password = "hunterhunter"` stays found); the fork adds `token` to the plugin's keywords,
    and tokenizer code is full of `*_token = "..."`."""
    v = value.strip("\"'`")
    if len(v) < 6 or v.lower() in _CODE_WORDS or _REFERENCE.search(v) or _IDENTIFIER_PATH.match(v) or \
            _PLACEHOLDER_VALUE.search(v):
        return True
    if re.fullmatch(r"[a-z][a-z_.-]*|[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+", v):
        return not re.search(r"(?i)pass|pwd|secret", line)
    return False


_HASH_LENGTHS = {32, 40, 56, 64, 96, 128}  # MD5, SHA-1 (git), SHA-224, SHA-256, SHA-384, SHA-512
_NAMES_A_HASH = re.compile(r"(?i)sha|digest|hash|commit|checksum|etag|integrity|\boid\b|\brev|tree|parent|"
                           r"blob|object|md5|fingerprint|blake|xxh")
_NAMES_A_SECRET = re.compile(r"(?i)secret|token|passw|key|sign|auth|cred|salt|nonce|cookie|session")


def _a_checksum(type_: str, value: str, line: str) -> bool:
    """An entropy finding that is a checksum the line says it is: a git commit, a content
    digest, a subresource-integrity value (`sha512-...`). Agent transcripts hold thousands of
    them; a hex value on a line that also names a secret (`signing_key = "..."`) is kept."""
    if type_ not in ("Hex High Entropy String", "Base64 High Entropy String"):
        return False
    if re.match(r"(?:sha(?:1|224|256|384|512)|md5|blake2b?|blake3)[-:]", value):
        return True
    return (type_ == "Hex High Entropy String" and len(value) in _HASH_LENGTHS and
            bool(_NAMES_A_HASH.search(line)) and not _NAMES_A_SECRET.search(line))


def _replace(text: str, rule: Rule, source: str, report: ScrubReport, learn: set[str] | None = None) -> str:
    kind, pattern, group, hints, skip = rule
    if hints:
        haystack = text.lower() if pattern in _CASE_BLIND else text
        if not any(h in haystack for h in hints):
            return text
    placeholder = f"<secret:{kind}>" if kind not in KIND_GROUPS["pii"] else f"<pii:{kind}>"
    out, last, hits = [], 0, 0
    for m in pattern.finditer(text):
        value = m.group(group)
        if not value or "<secret:" in value or "<pii:" in value or \
                (kind == "user" and value in _NOT_USERS) or \
                (skip is not None and skip(value, text, m.end(group))):
            continue
        start, end = m.span(group)
        if start < last:
            continue
        out.append(text[last:start])
        out.append(placeholder)
        last = end
        hits += 1
        if learn is not None:
            learn |= _folder_variants(value)
    if not hits:
        return text
    out.append(text[last:])
    report.by_kind[kind] += hits
    report.by_file[source][kind] += hits
    return "".join(out)


# --- strings that leave the corpus step -----------------------------------------------------------

def scrub_path(path: str, users: Iterable[str] = ()) -> str:
    """`path` with every home-directory user name replaced by `<pii:user>`.

    For file names and other short strings that leave the corpus step outside the corpus:
    `report.json` keys (`scrub.by_file`, skipped-line locations), action records' file lists,
    log lines naming files. Covers absolute paths (`/home/alice/...`, `/Users/bob/...`,
    `C:\\Users\\carol\\...` also with doubled backslashes or forward slashes, `~alice/...`),
    shell prompts (`alice@devbox:~`), Claude Code project-folder names anywhere in the string
    (`-home-alice-gt-mayor`, `-tmp-x-home-alice-gt`, `C--Users-carol-proj`), and e-mail
    addresses (some tools name folders after accounts). `users` names known to belong to the
    transcripts' owner: a name with dots or dashes (`erin.w`, folder form `erin-w`) is then
    removed whole from folder names, where otherwise only its first dash-separated part is
    certain to go; the account running the build is always included.

    Everything else is left as it was, so the result still tells a reader which file it was:
    relative paths, separators, file names, session ids. The result never holds a user name
    these rules find; it is deterministic for the same `path`, `users` and build account (that
    account only ever adds a name to remove); scrubbing it again changes nothing
    (`scrub_path(scrub_path(p)) == scrub_path(p)`). Secrets are not looked for: pass free text
    (error messages, log lines) to `scrub_text`.
    """
    if not path:
        return path
    # a fresh scrubber each call: what it learns from one string does not change the next
    return Scrubber(["home_paths", "emails"], users=users).scrub(path, "", ScrubReport())


def scrub_text(text: str, users: Iterable[str] = ()) -> str:
    """Free text that leaves the corpus step (an error message, a skipped line's reason) scrubbed
    of secrets and PII like the corpus itself (`Scrubber(["secrets", "pii"])`), counted nowhere."""
    if not text:
        return text
    return Scrubber(["secrets", "pii"], users=users).scrub(text, "", ScrubReport())
