"""Scrub recall on a planted set: every secret and PII item below must be replaced by the
placeholder of its kind, and its value must not survive anywhere in the text."""

import pytest

from formula.runtime.corpus.scrub import Scrubber, ScrubReport

# (kind, text around it, the value that must disappear)
PLANTED = [
    # AWS
    ("aws_access_key", "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
    ("aws_access_key", "key id ASIAY34FZKBOKMUTVV7A (temporary)", "ASIAY34FZKBOKMUTVV7A"),
    ("aws_access_key", '{"AccessKeyId": "AKIA2E0A8F3B244C9986"}', "AKIA2E0A8F3B244C9986"),
    ("aws_access_key", "aws configure set aws_access_key_id AKIAJ7XQ3EXAMPLE4ZQA", "AKIAJ7XQ3EXAMPLE4ZQA"),
    ("aws_secret_key", "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
     "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ("aws_secret_key", 'AWS_SECRET_KEY: "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY"', "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY"),
    ("aws_secret_key", "awsSecretAccessKey=9drTJvcXLB89EXAMPLELB8923FB892xMFI9EXAMP",
     "9drTJvcXLB89EXAMPLELB8923FB892xMFI9EXAMP"),
    # GitHub
    ("github_token", "export GITHUB_TOKEN=ghp_16C7e42F292c6912E7710c838347Ae178B4a", "ghp_16C7e42F292c6912E7710c838347Ae178B4a"),
    ("github_token", "oauth gho_16C7e42F292c6912E7710c838347Ae178B4b done", "gho_16C7e42F292c6912E7710c838347Ae178B4b"),
    ("github_token", "app token ghs_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", "ghs_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"),
    ("github_token", "user-to-server ghu_ZyXwVuTsRqPoNmLkJiHgFeDcBa9876543210", "ghu_ZyXwVuTsRqPoNmLkJiHgFeDcBa9876543210"),
    ("github_token", "git clone https://github_pat_11ABCDEFG0abcdefghijklmn_OPQRSTUVWXYZ012345@github.com/o/r",
     "github_pat_11ABCDEFG0abcdefghijklmn_OPQRSTUVWXYZ012345"),
    # Slack
    ("slack_token", "bot xoxb-2837465019-9384756102-AbCdEfGhIjKlMnOpQrStUvWx", "xoxb-2837465019-9384756102-AbCdEfGhIjKlMnOpQrStUvWx"),
    ("slack_token", "user token: xoxp-1234567890-0987654321-1122334455-abcdef0123456789abcdef0123456789",
     "xoxp-1234567890-0987654321-1122334455-abcdef0123456789abcdef0123456789"),
    ("slack_token", "SLACK_WEBHOOK=https://hooks.slack.com/services/T0001/B0001/XXXXXXXXXXXXXXXXXXXXXXXX",
     "hooks.slack.com/services/T0001/B0001/XXXXXXXXXXXXXXXXXXXXXXXX"),
    ("slack_token", "app-level xapp-1-A0123456789-1234567890123-abcdefabcdef; legacy xoxa-2-3333333333-abcdefghij",
     "xoxa-2-3333333333-abcdefghij"),
    # OpenAI
    ("openai_key", "OPENAI_API_KEY=sk-proj-Q2w3E4r5T6y7U8i9O0pAsDfGhJkLzXcVbNm1234", "sk-proj-Q2w3E4r5T6y7U8i9O0pAsDfGhJkLzXcVbNm1234"),
    ("openai_key", 'client = OpenAI(api_key="sk-abcdefghijklmnopqrstT3BlbkFJabcdefghijklmnopqrst")',
     "sk-abcdefghijklmnopqrstT3BlbkFJabcdefghijklmnopqrst"),
    ("openai_key", "service account sk-svcacct-AbCdEfGhIjKlMnOpQrStUvWxYz012345", "sk-svcacct-AbCdEfGhIjKlMnOpQrStUvWxYz012345"),
    ("openai_key", "key sk-None-1a2b3c4d5e6f7g8h9i0jKLMNOPQRSTuv", "sk-None-1a2b3c4d5e6f7g8h9i0jKLMNOPQRSTuv"),
    # Anthropic
    ("anthropic_key", "ANTHROPIC_API_KEY=sk-ant-api03-Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0FeDcBa-AbCdEf",
     "sk-ant-api03-Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0FeDcBa-AbCdEf"),
    ("anthropic_key", "admin key sk-ant-admin01-QwErTyUiOpAsDfGhJkLzXcVbNm0987654321_x",
     "sk-ant-admin01-QwErTyUiOpAsDfGhJkLzXcVbNm0987654321_x"),
    ("anthropic_key", 'headers = {"x-api-key": "sk-ant-api03-aaaaBBBBccccDDDDeeeeFFFFgggg"}', "sk-ant-api03-aaaaBBBBccccDDDDeeeeFFFFgggg"),
    ("anthropic_key", "claude --api-key sk-ant-oat01-1234567890abcdefghijABCDEFGHIJ", "sk-ant-oat01-1234567890abcdefghijABCDEFGHIJ"),
    # JWT
    ("jwt", "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwb2xlY2F0In0.Qm9ndXNTaWduYXR1cmVWYWx1ZTEyMw",
     "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwb2xlY2F0In0.Qm9ndXNTaWduYXR1cmVWYWx1ZTEyMw"),
    ("jwt", "token=eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJnYXN0b3duIiwiZXhwIjoxfQ.c2lnbmF0dXJlX2J5dGVz",
     "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJnYXN0b3duIiwiZXhwIjoxfQ.c2lnbmF0dXJlX2J5dGVz"),
    ("jwt", '{"id_token": "eyJraWQiOiJrMSJ9.eyJlbWFpbF92ZXJpZmllZCI6dHJ1ZX0.YWJjZGVmZ2hpamtsbW5vcA"}',
     "eyJraWQiOiJrMSJ9.eyJlbWFpbF92ZXJpZmllZCI6dHJ1ZX0.YWJjZGVmZ2hpamtsbW5vcA"),
    # PEM private keys
    ("private_key", "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n-----END RSA PRIVATE KEY-----",
     "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun"),
    ("private_key", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----",
     "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ"),
    ("private_key", '{"key": "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\\n-----END PRIVATE KEY-----\\n"}',
     "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"),
    ("private_key", "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg4LVWM9nuwNSk3yByxZpYRTBnVJk5oJDVdIuTbBpAoAoGCCqGSM49\n-----END EC PRIVATE KEY-----",
     "MHcCAQEEIBkg4LVWM9nuwNSk3yByxZpYRTBnVJk5oJDVdIuTbBpAoAoGCCqGSM49"),
    ("private_key", "-----BEGIN PGP PRIVATE KEY BLOCK-----\nlQOYBF0jPgABCAC4ZzB1bW15\n-----END PGP PRIVATE KEY BLOCK-----",
     "lQOYBF0jPgABCAC4ZzB1bW15"),
    # passwords in URLs
    ("url_password", "DATABASE_URL=postgres://admin:hunter2pass@db.internal:5432/prod", "hunter2pass"),
    ("url_password", "redis://default:s3cr3t-R3dis@cache:6379/0", "s3cr3t-R3dis"),
    ("url_password", "curl https://deploy:Pa55w0rd!@registry.example.com/v2/", "Pa55w0rd!"),
    ("url_password", "mongodb+srv://app:M0ng0Pw_9@cluster0.mongodb.net/db", "M0ng0Pw_9"),
    # .env assignments
    ("env_value", "DB_PASSWORD=Tr0ub4dor&3xample", "Tr0ub4dor&3xample"),
    ("env_value", "SECRET_KEY='django-insecure-9f8e7d6c5b4a'", "django-insecure-9f8e7d6c5b4a"),
    ("env_value", 'export STRIPE_SECRET="rk_live_51HxYzAbCdEf"', "rk_live_51HxYzAbCdEf"),
    ("env_value", "  SENTRY_AUTH_TOKEN=abcd1234efgh5678", "abcd1234efgh5678"),
    ("env_value", "GCP_CREDENTIALS=base64:eyJ0eXBlIjoic2Vydmlj", "base64:eyJ0eXBlIjoic2Vydmlj"),
    # high-entropy strings and keyword assignments (detect-secrets)
    ("detected", 'config = {"client_secret": "8f14e45fceea167a5a36dedd4bea2543f1c2b3a4"}', "8f14e45fceea167a5a36dedd4bea2543f1c2b3a4"),
    ("detected", 'api_key: "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA=="', "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA=="),
    ("detected", 'password = "c0rrect-h0rse-battery-staple"', "c0rrect-h0rse-battery-staple"),
    ("detected", 'signing = "7d2f9a1c4e8b3f6a0d5c9e2b7a4f1c8e3d6b9a2f"', "7d2f9a1c4e8b3f6a0d5c9e2b7a4f1c8e3d6b9a2f"),
    # e-mail
    ("email", "contact: maintainer.jane@example.org for access", "maintainer.jane@example.org"),
    ("email", "Author: Bob Smith <bob.smith+gt@mail.example.co.uk>", "bob.smith+gt@mail.example.co.uk"),
    ("email", "git config user.email ops@gastown.dev", "ops@gastown.dev"),
    ("email", '{"assignee": "polecat_7@rig-1.example.com"}', "polecat_7@rig-1.example.com"),
    ("email", "cc: A.N.Other@sub.domain.io", "A.N.Other@sub.domain.io"),
    # phone numbers
    ("phone", "call +1 415-555-0134 if the pager fires", "415-555-0134"),
    ("phone", "office (212) 555-0199", "(212) 555-0199"),
    ("phone", "mobile 650.555.0123", "650.555.0123"),
    ("phone", "intl +44 207 555 0147", "207 555 0147"),
    ("phone", "sms to 312-555-0188 now", "312-555-0188"),
    # IP addresses
    ("ip", "ssh deploy@10.20.30.40 -i key", "10.20.30.40"),
    ("ip", "metrics pushed from 192.168.17.42 and 2001 retries", "192.168.17.42"),
    ("ip", "resolved to 93.184.216.34:443", "93.184.216.34"),
    ("ip", "X-Forwarded-For: 34.117.59.81", "34.117.59.81"),
    # user names in home paths
    ("user", "ssh -i /home/alice/.ssh/id_ed25519", "alice"),
    ("user", "see /Users/bob/projects/gastown", "bob"),
    ("user", r"opened C:\Users\carol\notes.txt", "carol"),
    ("user", "project folder -home-dave-gt-mayor/123.jsonl", "dave"),
    ("user", "cwd /home/erin.w/gt/gastown/witness", "erin.w"),
]


def test_the_planted_set_is_large_and_covers_every_kind():
    assert len(PLANTED) >= 60
    kinds = {k for k, _, _ in PLANTED}
    assert kinds >= {"aws_access_key", "aws_secret_key", "github_token", "slack_token", "openai_key",
                     "anthropic_key", "jwt", "private_key", "url_password", "env_value", "detected",
                     "email", "phone", "ip", "user"}


@pytest.mark.parametrize("kind,text,value", PLANTED, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(PLANTED)])
def test_every_planted_item_is_scrubbed(kind, text, value):
    report = ScrubReport()
    out = Scrubber(["secrets", "pii"]).scrub(f"some context before\n{text}\nand after", "f.jsonl", report)
    assert value not in out, out
    if kind == "detected":
        assert "<secret:" in out
    else:
        placeholder = f"<pii:{kind}>" if kind in ("email", "phone", "ip", "user") else f"<secret:{kind}>"
        assert placeholder in out, out
    assert report.by_kind and value not in str(report.to_json())  # the report holds no secret


def test_ordinary_text_is_left_alone():
    text = ("Ran pytest: 12 passed in 0.41s. Version 3.11.7, commit 3f8a9c0 merged into main.\n"
            "Listening on 127.0.0.1:8080; see docs/build.md and README.md.\n"
            "def password_hash(password): return hashlib.sha256(password).hexdigest()\n")
    report = ScrubReport()
    assert Scrubber(["secrets", "pii"]).scrub(text, "f", report) == text
    assert not report.by_kind


def test_only_the_requested_kinds():
    report = ScrubReport()
    out = Scrubber(["emails"]).scrub("mail a@b.example and key AKIAIOSFODNN7EXAMPLE", "f", report)
    assert out == "mail <pii:email> and key AKIAIOSFODNN7EXAMPLE"
