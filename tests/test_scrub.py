"""Scrub recall on a planted set: every secret and PII item below must be replaced by the
placeholder of its kind, and its value must not survive anywhere in the text: alone, all items
in one text, inside JSON (tool-call arguments, JSONL shown by a tool), or in the report.

The vendor formats are written from the vendors' documented token shapes; values are made up
(random characters of the right alphabet and length)."""

import json

import pytest

from formula.runtime.corpus.scrub import (
    PII_PATTERNS,
    SECRET_PATTERNS,
    Scrubber,
    ScrubReport,
    scrub_path,
    scrub_text,
)

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
    ("stripe_key", 'export STRIPE_SECRET="rk_live_51HxYzAbCdEf"', "rk_live_51HxYzAbCdEf"),
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

    # --- issue 14: the two that reached the training data, and a wider set -----------------
    ("google_api_key", "GOOGLE_MAPS=AIzanFIGLj5M7YYpHCOTHUtuJvbipRdkJAWZ4mo", "AIzanFIGLj5M7YYpHCOTHUtuJvbipRdkJAWZ4mo"),
    ("google_api_key", '{"apiKey": "AIzaUxm_yI5B_KGnplJJpdu0ol29vX6N_631mG8", "authDomain": "x.firebaseapp.com"}',
     "AIzaUxm_yI5B_KGnplJJpdu0ol29vX6N_631mG8"),
    ("google_api_key", "curl 'https://maps.googleapis.com/maps/api/geocode/json?key=AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY'",
     "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY"),
    ("phone", "Reach me at +1 415 555 3273.", "415 555 3273"),
    ("phone", '{"name": "Jo", "phone": "+1 (415) 555-3273"}', "555-3273"),
    ("phone", "numbers: +1 415 555 3274, +1 415 555 3275; done", "415 555 3274"),
    ("phone", "numbers: +1 415 555 3274, +1 415 555 3275; done", "415 555 3275"),
    ("phone", "(mobile: 415-555-3276)", "415-555-3276"),
    ("phone", "call 1-800-555-0199.", "800-555-0199"),
    ("phone", "fax (415)555-3277, office", "555-3277"),
    ("phone", "London office: +44 20 7946 0958.", "7946 0958"),
    ("phone", "Berlin +49 30 90182736;", "90182736"),
    ("phone", "Paris: +33 1 23 45 67 89)", "23 45 67 89"),
    ("phone", '{"tel": "+14155553278"}', "4155553278"),
    ("phone", "href='tel:+1-415-555-3279'", "415-555-3279"),
    ("phone", "UK national 020 7946 0959.", "7946 0959"),
    ("phone", "India +91 98765 43210!", "98765 43210"),
    ("phone", "Tokyo +81 3-1234-5678.", "1234-5678"),
    ("email", "Write to jane.doe@example.com.", "jane.doe@example.com"),
    ("email", '{"email": "jane.roe@example.com", "id": 7}', "jane.roe@example.com"),
    ("email", "Reviewers: <kim@example.org>, <lee@example.org>.", "kim@example.org"),
    ("email", "<a href='mailto:ops@example.net?subject=pager'>", "ops@example.net"),
    ("email", "GET /users?email=pat%40example.com HTTP/1.1", "pat%40example.com"),
    ("email", r'{"owner": "sam\u0040example.com"}', "sam\\u0040example.com"),
    ("email", "(contact: a.b@c.example.io)", "a.b@c.example.io"),
    ("email", "email: first.last+tag@sub.example.co.uk;", "first.last+tag@sub.example.co.uk"),
    # user names: paths, Claude Code folder names, prompts
    ("user", "sessions under /root/.claude/projects/-tmp-pytest-of-root-pytest-0-home-frank-gt-x/a.jsonl", "frank"),
    ("user", "projects/-home-grace/4f1c.jsonl", "grace"),
    ("user", "~/.claude/projects/-Users-heidi-code-app/s.jsonl", "heidi"),
    ("user", r"C:\Users\x\.claude\projects\C--Users-ivan-source-repo\s.jsonl", "ivan"),
    ("user", r'{"cwd": "C:\\Users\\judy\\AppData\\Local"}', "judy"),
    ("user", "C:/Users/karl/Desktop/notes.md", "karl"),
    ("user", r"C:\Users\Lena Meyer\Documents\cv.docx", "Lena Meyer"),
    ("user", "mallory@devbox:~/gt$ ls", "mallory"),
    ("user", "cwd /home/niaj.o-brien/gt, folder -home-niaj-o-brien-gt", "brien"),
    ("user", "source ~oscar/.bashrc", "oscar"),
    ("user", '{"cwd": "/Users/peggy"}', "peggy"),
    ("user", "cat /home/josé/notes.txt", "josé"),
    ("user", "/mnt/c/Users/quinn/Downloads", "quinn"),
    # cloud providers
    ("google_oauth", '"client_secret": "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"', "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"),
    ("google_oauth", "access_token=ya29.NdaKTGoeszaDGHxFAQLVeuzU_XFXO_eF28RlHnqzgsBH_5qWgnGV21q4Clsw&x=1",
     "ya29.NdaKTGoeszaDGHxFAQLVeuzU_XFXO_eF28RlHnqzgsBH_5qWgnGV21q4Clsw"),
    ("google_oauth", '"refresh_token": "1//0scCTf07I8PjUhmi2ogviaNfrWta57-cLkIFKaEaTopYW5LSQdGrKNB4di4RX"',
     "1//0scCTf07I8PjUhmi2ogviaNfrWta57-cLkIFKaEaTopYW5LSQdGrKNB4di4RX"),
    ("gcp_service_account", '{"type": "service_account", "private_key_id": "d8d60cf7c37768272e1069de7225be6c3bf6baf9"}',
     "d8d60cf7c37768272e1069de7225be6c3bf6baf9"),
    ("azure_key", "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey=gw6rJ8NgthdN+ULVwqdAiqDNZ8SwSFTQ3obfNIvMzzoCXK4oXo4jEhAWykqU9pklDCnr88OXiUpRIv69mTf5Ob==;EndpointSuffix=core.windows.net",
     "gw6rJ8NgthdN+ULVwqdAiqDNZ8SwSFTQ3obfNIvMzzoCXK4oXo4jEhAWykqU9pklDCnr88OXiUpRIv69mTf5Ob=="),
    ("azure_key", "Endpoint=sb://acme.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey=hWzFnTvJ2gwi2R9y3t1MFLBvpGFhAsBYGoDDbzNeJEC=",
     "hWzFnTvJ2gwi2R9y3t1MFLBvpGFhAsBYGoDDbzNeJEC="),
    ("azure_key", "AZURE_CLIENT_SECRET is v9i8Q~DgJxa1.J_5Eg~t6AHz.Np~Zd9P2OLPi now", "v9i8Q~DgJxa1.J_5Eg~t6AHz.Np~Zd9P2OLPi"),
    ("azure_sas", "https://acme.blob.core.windows.net/c/f.bin?sv=2022-11-02&se=2030-01-01&sr=b&sp=r&sig=ZPavepk9mCqCF7TyWyazKp2TesfGMKnXQVHE88Z848A%3D",
     "ZPavepk9mCqCF7TyWyazKp2TesfGMKnXQVHE88Z848A"),
    ("aws_secret_key", '{"AccessKeyId": "ASIAEXAMPLEEXAMPLE12", "SecretAccessKey": "PoD1vZ5dGTN83ZJH7YxLA60W5Jxf9KqnCecvpspE"}',
     "PoD1vZ5dGTN83ZJH7YxLA60W5Jxf9KqnCecvpspE"),
    ("aws_secret_key", '"SessionToken": "6QUW8HXJUxcqLp/+hD8cgr0wzwXfALqfPPiAcnkbC0tgQQ11c9cgdm2ybqnMPcfy7PxFKI81y+Bx/DI9ufkXQ/xx3OK2RagTeFdchQjuQ+WWqQYypqWZzMpTiNIK5Ff5oXoWXQpQlLCNBnP+6hJLLqRNG9lm58IaMWJOstkIvz+zZJX0Omn9"',
     "6QUW8HXJUxcqLp/+hD8cgr0wzwXfALqfPPiAcnkbC0tgQQ11c9cgdm2ybqnMPcfy7PxFKI81y+Bx/DI9ufkXQ/xx3OK2RagTeFdchQjuQ+WWqQYypqWZzMpTiNIK5Ff5oXoWXQpQlLCNBnP+6hJLLqRNG9lm58IaMWJOstkIvz+zZJX0Omn9"),
    ("alibaba_key", "accessKeyId: LTAIyBBeODMDhCxJiqfJsUGB", "LTAIyBBeODMDhCxJiqfJsUGB"),
    # code hosts
    ("github_token", "refresh ghr_FSnKkS3ncE3ui9bKZSACKhkgFokVMmuEWvki.", "ghr_FSnKkS3ncE3ui9bKZSACKhkgFokVMmuEWvki"),
    ("github_token", '{"token": "ghp_5xqFq6GXoB2sWpqwHHQGecmCz2KseMbTJbQ0"}', "ghp_5xqFq6GXoB2sWpqwHHQGecmCz2KseMbTJbQ0"),
    ("github_token", "fine-grained 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",
     "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"),
    ("gitlab_token", "git clone https://oauth2:glpat-g4n0jtt0iifDUEDrjFCA@gitlab.com/g/p.git", "glpat-g4n0jtt0iifDUEDrjFCA"),
    ("gitlab_token", "PRIVATE-TOKEN: glpat-wRK9AxghXnZJ7pZ_5OcTEerSOd1.01.0n7zb6ric", "glpat-wRK9AxghXnZJ7pZ_5OcTEerSOd1.01.0n7zb6ric"),
    ("gitlab_token", "runner token glrt-hAEmmCzPoH5DPB4k79oj and deploy gldt-Roanbbdg8Wx9aYuXDGv4", "glrt-hAEmmCzPoH5DPB4k79oj"),
    ("gitlab_token", "runner token glrt-hAEmmCzPoH5DPB4k79oj and deploy gldt-Roanbbdg8Wx9aYuXDGv4", "gldt-Roanbbdg8Wx9aYuXDGv4"),
    ("gitlab_token", "trigger glptt-db83f3a16dbac6ae0913bc32592f207a5ebf6e1c", "glptt-db83f3a16dbac6ae0913bc32592f207a5ebf6e1c"),
    ("gitlab_token", "--registration-token GR1348941trvL9q1Fiv_8YGy-tW_C", "GR1348941trvL9q1Fiv_8YGy-tW_C"),
    ("bitbucket_token", "app password ATBBwLyPOoLihW4nUZ0XUJyWLYDl1hk8ietV", "ATBBwLyPOoLihW4nUZ0XUJyWLYDl1hk8ietV"),
    # chat
    ("slack_token", "rotated xoxe.xoxp-1-KN8o4RWxPUWAt7cULSnkDXX73i67BoQHNZjRSyx5FkX0r1PhmyigqwKzfkNDI1DQZtSh1hc05qjJvmaStf7ECCEGJnaRW9MnMe6rjvV39c3ceIuDSnYRtzH9Yn3HligW9I4qVrGmQZotlqnzrrzoGR",
     "KN8o4RWxPUWAt7cULSnkDXX73i67BoQHNZjRSyx5FkX0r1PhmyigqwKzfkNDI1DQZtSh1hc05qjJvmaStf7ECCEGJnaRW9MnMe6rjvV39c3ceIuDSnYRtzH9Yn3HligW9I4qVrGmQZotlqnzrrzoGR"),
    ("slack_token", "refresh xoxr-rdwtZqZ6qTK5g5OGNrlK1XN9UrUjFXWWUoMCmlcDv5qzwh3sGG", "xoxr-rdwtZqZ6qTK5g5OGNrlK1XN9UrUjFXWWUoMCmlcDv5qzwh3sGG"),
    ("slack_token", "SLACK_APP_TOKEN is xapp-1-A0C9K6HX3Q9-1053025516687-9bfb9e6eb6e11aeeef069b2d91dc8f6821d09ebd61f7b98c562ab6319a7e5623",
     "9bfb9e6eb6e11aeeef069b2d91dc8f6821d09ebd61f7b98c562ab6319a7e5623"),
    ("slack_token", "POST https://hooks.slack.com/workflows/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",
     "t6esh1UxyE4jbrDDQx5RJ38Z"),
    ("discord_token", "Authorization: Bot MTVuNCbXzHfBH8nqLSvw1OQWc4.NZNcca.meM-rO9stu6hrYvHPHBSTWudhUOGzy-Y48gVIV",
     "MTVuNCbXzHfBH8nqLSvw1OQWc4.NZNcca.meM-rO9stu6hrYvHPHBSTWudhUOGzy-Y48gVIV"),
    ("discord_token", "client.run('MTVuNCbXzHfBH8nqLSvw1OQWc4.NZNcca.meM-rO9stu6hrYvHPHBSTWudhUOGzy-Y48gVIV')",
     "MTVuNCbXzHfBH8nqLSvw1OQWc4.NZNcca.meM-rO9stu6hrYvHPHBSTWudhUOGzy-Y48gVIV"),
    ("discord_token", "https://discord.com/api/webhooks/1234567890123456789/sHlxVfV9B9IoLi7ff9hoExUQyZcWYmljkmf4tR6KR6Vzv7LxEt4WSo4gijnGODhjWYoD",
     "sHlxVfV9B9IoLi7ff9hoExUQyZcWYmljkmf4tR6KR6Vzv7LxEt4WSo4gijnGODhjWYoD"),
    ("telegram_bot_token", "https://api.telegram.org/bot7943593652:AANb3YM7yvGombpuvdFFau6C_i6F24o4Xzd/getMe",
     "AANb3YM7yvGombpuvdFFau6C_i6F24o4Xzd"),
    ("telegram_bot_token", 'TOKEN = "7943593652:AANb3YM7yvGombpuvdFFau6C_i6F24o4Xzd"', "AANb3YM7yvGombpuvdFFau6C_i6F24o4Xzd"),
    ("teams_webhook", "url: https://contoso.webhook.office.com/webhookb2/a2631bfa-e7ed-60fe-e89e-d7c96029760d@bdc9cf78/IncomingWebhook/bf3888b57d45ce978915f26568b35553/b32df758",
     "bf3888b57d45ce978915f26568b35553"),
    # payments and commerce
    ("stripe_key", "stripe.api_key = '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'",
     "VbcWGlBTIbwT6ndjW0jvdtgxrrEMpBlgipZ35MsaWXQt2G6HKapbzHHnemsWgrUipUj3sNNkSbxvysclEJOnJiO5Jz0j3WFi2Pk"),
    ("stripe_key", "curl -u sk_test_4l15duZylhCKFU6eqsddzBIo: https://api.stripe.com/v1/charges", "sk_test_4l15duZylhCKFU6eqsddzBIo"),
    ("stripe_key", "endpoint secret whsec_wLpRABJFiqR4g1X9Ds4vjTElOYc1A6i3.", "whsec_wLpRABJFiqR4g1X9Ds4vjTElOYc1A6i3"),
    ("square_token", "SQUARE_ACCESS=sq0atp-th-okrGaYC_4Ert5-T6fp0 here", "sq0atp-th-okrGaYC_4Ert5-T6fp0"),
    ("square_token", "oauth secret sq0csp-ZU1yyAwCZBUon5pi27EGB1JvzL109nh9BCJ4e73MpJw", "sq0csp-ZU1yyAwCZBUon5pi27EGB1JvzL109nh9BCJ4e73MpJw"),
    ("square_token", "Bearer token EAAAyxJd24li8CNTJQhMtLkb0Yl9bcILYxmFc-oGDMWrqJ_C8W5JdBqL6Guf3I99 for sandbox",
     "EAAAyxJd24li8CNTJQhMtLkb0Yl9bcILYxmFc-oGDMWrqJ_C8W5JdBqL6Guf3I99"),
    ("shopify_token", "X-Shopify-Access-Token: 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", "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"),
    ("shopify_token", "shared secret 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", "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"),
    ("flutterwave_key", "FLWSECK_TEST-4078b6e3ebdfeg4ca5b4f8adga995ec6-X", "4078b6e3ebdfeg4ca5b4f8adga995ec6"),
    ("easypost_key", "EasyPost::Client.new(api_key: 'EZAKFyjraknLE8zP7d77uAYee4jRanNuNlTzEBlXlymzI3Q2PwRE9u0hkg')",
     "EZAKFyjraknLE8zP7d77uAYee4jRanNuNlTzEBlXlymzI3Q2PwRE9u0hkg"),
    # messaging and mail
    ("twilio_key", "api key SKbfbb9a8459132762b5ca44d19af95543 for account AC43a6278093ecc84eeba98170f3a16937",
     "SKbfbb9a8459132762b5ca44d19af95543"),
    ("twilio_key", "api key SKbfbb9a8459132762b5ca44d19af95543 for account AC43a6278093ecc84eeba98170f3a16937",
     "AC43a6278093ecc84eeba98170f3a16937"),
    ("env_value", "TWILIO_AUTH_TOKEN=21dc15915bb1f46a0cafa3d104f64d6e", "21dc15915bb1f46a0cafa3d104f64d6e"),
    ("sendgrid_key", "SENDGRID: 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",
     "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"),
    ("mailgun_key", "auth=('api', 'key-f75956085114a755752c83f97dde7162')", "key-f75956085114a755752c83f97dde7162"),
    ("mailgun_key", "mailgun 94d7c3d83dd59af4e59ffa55a5f82aba-d8e252fb-96df2011", "94d7c3d83dd59af4e59ffa55a5f82aba-d8e252fb-96df2011"),
    ("mailchimp_key", "mailchimp 68845570a707bd2c575c095f136dfc38-us21", "68845570a707bd2c575c095f136dfc38"),
    # package registries
    ("npm_token", "//registry.npmjs.org/:_authToken=npm_vPIPBTbtQAkIVufiWCaPhZjxTiGHmWYFlKwd", "npm_vPIPBTbtQAkIVufiWCaPhZjxTiGHmWYFlKwd"),
    ("npm_token", "//npm.example.com/:_authToken=cfce4dd4-c005-54c7-1dac-b49dc93fdcd0", "cfce4dd4-c005-54c7-1dac-b49dc93fdcd0"),
    ("pypi_token", "[pypi]\nusername = __token__\npassword = pypi-AgEIcHlwaS5vcmcd4VosMzS3_AxnvhOHK5zWf7o5EaCoy9xHfnIHB3fFBOctZYXZQQf3PqYCJv8Nn3DfWpV1q",
     "pypi-AgEIcHlwaS5vcmcd4VosMzS3_AxnvhOHK5zWf7o5EaCoy9xHfnIHB3fFBOctZYXZQQf3PqYCJv8Nn3DfWpV1q"),
    ("pypi_token", "twine upload -p pypi-AgENdGVzdC5weXBpLm9yZwP_o_4RtBKfQn3UGPT3p16bMzIhg4wm9uZEdf_1eiLA2L7eescyziZ39p7cmaRGgLY-1_uB dist/*",
     "pypi-AgENdGVzdC5weXBpLm9yZwP_o_4RtBKfQn3UGPT3p16bMzIhg4wm9uZEdf_1eiLA2L7eescyziZ39p7cmaRGgLY-1_uB"),
    ("rubygems_token", ":rubygems_api_key: rubygems_8304c9a7f53c1ec90d21dd8996fb81fb7e84a74fba29dd59",
     "rubygems_8304c9a7f53c1ec90d21dd8996fb81fb7e84a74fba29dd59"),
    ("docker_token", "echo dckr_pat_NgDvSW5GUHQsXh05vbdgmvbt0Sa | docker login -u me --password-stdin", "dckr_pat_NgDvSW5GUHQsXh05vbdgmvbt0Sa"),
    ("artifactory_token", "X-JFrog-Art-Api: AKCp8QD0wab6X0bWPVDkWVAW5t2AHkKdZ9OjS8yIStH3mzxJmmVQM7JJOOOLkkT2OoAd3BmWH",
     "AKCp8QD0wab6X0bWPVDkWVAW5t2AHkKdZ9OjS8yIStH3mzxJmmVQM7JJOOOLkkT2OoAd3BmWH"),
    # AI providers
    ("huggingface_token", "huggingface-cli login --token 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", "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"),
    ("huggingface_token", '{"hf": "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"}', "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"),
    ("replicate_token", "REPLICATE is r8_btVmwMeDbarLh5ljzbfPvKT4N0CFi5iqdB99J", "r8_btVmwMeDbarLh5ljzbfPvKT4N0CFi5iqdB99J"),
    ("groq_key", "Groq(api_key='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')", "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"),
    ("openai_key", "admin key sk-admin-awnfacVc-UuJAlWJQqZ2xuCGgBivwUASxN9pQIWpS0n4_foHnR0tpEceWcBX.", "awnfacVc-UuJAlWJQqZ2xuCGgBivwUASxN9pQIWpS0n4_foHnR0tpEceWcBX"),
    ("anthropic_key", '{"env": {"ANTHROPIC_API_KEY": "sk-ant-api03-nQxfrxzSJUgRiJGVZnzKf2-ga8SQ2EgDXLjlq32puJI77YG-AKGUvgqKYrhJwyjOGsN6Glg3wVTW1vYlRxJDi8EBPKry8-sOjUetAA"}}',
     "nQxfrxzSJUgRiJGVZnzKf2-ga8SQ2EgDXLjlq32puJI77YG-AKGUvgqKYrhJwyjOGsN6Glg3wVTW1vYlRxJDi8EBPKry8-sOjUetAA"),
    # developer platforms and hosting
    ("atlassian_token", "curl -u me@example.com:ATATT3xFfGF0UWSKkzEx69r5NMTiSALnTbeTXkUREX6Ct3Tca6EOeZqo7sqI_FjXx1OXLpv93iCPh9r0ZLDy8eLCv0Uy9wtslK1erQ_m63BSQqBW3hqvTz9gI0JbNeuX-87z1TWkVUWqRjwjhmR8JciEHo7RkOYBtUYtgUmm0bGHl-qWXrSV5u=UHF169SI",
     "ATATT3xFfGF0UWSKkzEx69r5NMTiSALnTbeTXkUREX6Ct3Tca6EOeZqo7sqI_FjXx1OXLpv93iCPh9r0ZLDy8eLCv0Uy9wtslK1erQ_m63BSQqBW3hqvTz9gI0JbNeuX-87z1TWkVUWqRjwjhmR8JciEHo7RkOYBtUYtgUmm0bGHl-qWXrSV5u=UHF169SI"),
    ("databricks_token", "databricks configure: dapied74aeff8854ca1fd250eddf96d97f10", "dapied74aeff8854ca1fd250eddf96d97f10"),
    ("digitalocean_token", "doctl auth init -t dop_v1_85f5985f1238588d1b4d66da69f5b611e995f1cef5256fbe44cae238de40e70b",
     "dop_v1_85f5985f1238588d1b4d66da69f5b611e995f1cef5256fbe44cae238de40e70b"),
    ("heroku_key", "heroku token HRKU-AAPAHmPh1n3SV5DBK9G8S-r0vP7hhGVQdAfTdOdEyXwIK1lDLrjBTVMmnfRQ", "HRKU-AAPAHmPh1n3SV5DBK9G8S-r0vP7hhGVQdAfTdOdEyXwIK1lDLrjBTVMmnfRQ"),
    ("heroku_key", '{"heroku_api_key": "07b7f22b-07d4-3db9-6476-cf20b93eb6b8"}', "07b7f22b-07d4-3db9-6476-cf20b93eb6b8"),
    ("vault_token", "VAULT login with hvs.7tNcciucje-rU9YCJ9g0lpdu7jJwFKCjgzrDB3jOMq7sN2jFcqSOEM8PtEtejclkGWDLYCsS_jiVNjKWuExDlON6Tw",
     "hvs.7tNcciucje-rU9YCJ9g0lpdu7jJwFKCjgzrDB3jOMq7sN2jFcqSOEM8PtEtejclkGWDLYCsS_jiVNjKWuExDlON6Tw"),
    ("terraform_token", 'credentials "app.terraform.io" { token = "fi713uvh1uzdqh.atlasv1.bxh8fzjkfdvxr027tiz5ctg8fzg0gef0kn3kmog63036s3kme30f3954v0c54p1tda7" }',
     "bxh8fzjkfdvxr027tiz5ctg8fzg0gef0kn3kmog63036s3kme30f3954v0c54p1tda7"),
    ("doppler_token", "doppler token dp.pt.4dCbygtJtAF96YhVsyx3wYYooYpy1qlYMpoJB6uCT44", "dp.pt.4dCbygtJtAF96YhVsyx3wYYooYpy1qlYMpoJB6uCT44"),
    ("age_secret_key", "# created: 2024-01-01\nAGE-SECRET-KEY-1QQ7ZUZ5G5FPZ5P2UUQKD56W6RUVTK4NLFKZ9GMJG305W9ESUTDN954PCS7",
     "QQ7ZUZ5G5FPZ5P2UUQKD56W6RUVTK4NLFKZ9GMJG305W9ESUTDN954PCS7"),
    ("linear_key", "LINEAR: lin_api_O3xa6eCSibXxfV90I2srm1mVzs0HOmATjkEJ8mQl", "lin_api_O3xa6eCSibXxfV90I2srm1mVzs0HOmATjkEJ8mQl"),
    ("notion_token", "Client(auth='ntn_I75Mr5Ya5UDCwa78oA6lREVlsXaEd4KqmmSe1FyUnH7QoP')", "ntn_I75Mr5Ya5UDCwa78oA6lREVlsXaEd4KqmmSe1FyUnH7QoP"),
    ("figma_token", "X-Figma-Token: figd_jlCDZmW05bd8LV-j7Lo18o0FXHyQ8NQcAgqcyrlB", "figd_jlCDZmW05bd8LV-j7Lo18o0FXHyQ8NQcAgqcyrlB"),
    ("postman_key", "postman PMAK-cd24930f4ddd1715a3c67b6a-e1d6f4a3be5253681032bfa1d3a731e31c", "PMAK-cd24930f4ddd1715a3c67b6a-e1d6f4a3be5253681032bfa1d3a731e31c"),
    ("pulumi_token", "pulumi login with pul-d9efaa1f8ad1616332c73fbb4956f928092c42b1", "pul-d9efaa1f8ad1616332c73fbb4956f928092c42b1"),
    ("supabase_key", "supabase login --token sbp_40ef0409fd7c62e7f1271aba3daffec7547ac7d8", "sbp_40ef0409fd7c62e7f1271aba3daffec7547ac7d8"),
    ("planetscale_token", "pscale_tkn_qglnOw_k398NgXdkfeKo_B14cc7UEhWF2fOEUEhkHzj is the service token", "pscale_tkn_qglnOw_k398NgXdkfeKo_B14cc7UEhWF2fOEUEhkHzj"),
    ("cloudflare_key", "origin CA key v1.0-943545366f4369fb53089449-86dbc47af3a7f5045683cf6271f9e958de3486095f44e5acd3865b6067fc2ed1afea1fa9595be3074f29fb3815c044e7b6769866f62bd429e9b4a6dfa5ef2630fd92a2e751107d2ddd",
     "86dbc47af3a7f5045683cf6271f9e958de3486095f44e5acd3865b6067fc2ed1afea1fa9595be3074f29fb3815c044e7b6769866f62bd429e9b4a6dfa5ef2630fd92a2e751107d2ddd"),
    ("fly_token", "fly deploy --access-token fo1_5QYOWntIOkGpEAGW-x1unUmIWA9pLBHIchVyGqssmbx", "fo1_5QYOWntIOkGpEAGW-x1unUmIWA9pLBHIchVyGqssmbx"),
    ("openshift_token", "oc login --token=sha256~yKGYL6xImZvg_0Zx-0ayBxVWYYSG3UJzqHj4B7qQhXZ", "yKGYL6xImZvg_0Zx-0ayBxVWYYSG3UJzqHj4B7qQhXZ"),
    ("onepassword_token", "OP_SERVICE_ACCOUNT is ops_eyJIXOL4Rs1edSeJmeyh3tMGNKCemL2YT8H9NjFRRWRTEkasl5WUNQYFGDsp-tfdB5Nedpa1MiG5LmRLPAmApksEMkH7pdSbWJTd6KEZ7JpCJ8VPEDqof7-wAyJdrNVLh8hraQ4vyfiiHmmIPYDBp5_dXMRSmsmjA1gdToSgDSB7AG232upth7GHLyKoMH5l_Ssan2ch_cK",
     "IXOL4Rs1edSeJmeyh3tMGNKCemL2YT8H9NjFRRWRTEkasl5WUNQYFGDsp-tfdB5Nedpa1MiG5LmRLPAmApksEMkH7pdSbWJTd6KEZ7JpCJ8VPEDqof7"),
    ("shippo_token", "Shippo token shippo_live_462f27ebbf2b03810b9b9f0f64c67224d1065b12", "462f27ebbf2b03810b9b9f0f64c67224d1065b12"),
    ("duffel_token", "DUFFEL: duffel_test_kugtTaagI2AypljDKco-h7uJLNVJvha_3Db9zIxLFnw", "kugtTaagI2AypljDKco-h7uJLNVJvha_3Db9zIxLFnw"),
    ("clojars_token", "deploy token CLOJARS_ru2o413fueirjv943z73fotypvymryscxinjidrednyf9amzlp485r7r4m22",
     "ru2o413fueirjv943z73fotypvymryscxinjidrednyf9amzlp485r7r4m22"),
    ("perplexity_key", "PPLX=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", "wU1ui5Ww1KaKF9w6kvcbtDKdM7BrDQDyM4FJaqBIoyxQdqvj"),
    ("xai_key", "grok client key xai-uPqNcUOkQGyczoIGvwfLO0agF1rtE3jSYc1JZ8b6jd1cDE1GsmZg2YoDLJwwoMoxKgUYksa9wjpRFrcW",
     "uPqNcUOkQGyczoIGvwfLO0agF1rtE3jSYc1JZ8b6jd1cDE1GsmZg2YoDLJwwoMoxKgUYksa9wjpRFrcW"),
    ("vercel_token", '{"vercel_token": "aRA1JzIdPrSmbtOOYJ9SNhVR"}', "aRA1JzIdPrSmbtOOYJ9SNhVR"),
    ("netlify_token", "netlify deploy --auth nfp_PH8QlK43i8Rfqfr7tRdji9pjQGKxeZWd0Cq1J5hc", "nfp_PH8QlK43i8Rfqfr7tRdji9pjQGKxeZWd0Cq1J5hc"),
    ("prefect_token", "prefect cloud login -k pnu_j7nineGXxsFdJYHGr9mHPPxvqq8wQGEzjkUf", "pnu_j7nineGXxsFdJYHGr9mHPPxvqq8wQGEzjkUf"),
    ("readme_token", "README key rdme_4bia7isnrvt27fnyyotff7gijz0iognxm66jyco8u7exdu10svt4yon2pu2londfzybssd",
     "4bia7isnrvt27fnyyotff7gijz0iognxm66jyco8u7exdu10svt4yon2pu2londfzybssd"),
    ("typeform_token", "typeform tfp_yCto-Js03KePtg7i8utftvviz0gWTs7woMCK6BpiGkUyBeS-achgFceFnVi", "yCto-Js03KePtg7i8utftvviz0gWTs7woMCK6BpiGkUyBeS-achgFceFnVi"),
    ("harness_token", "x-api-key pat.0LmupXTHsfqPQT0ZN23nb0.7lxm4yx85mc8eg0o4laced0z.n6zTnLiX5cb90oc2aiCB",
     "7lxm4yx85mc8eg0o4laced0z.n6zTnLiX5cb90oc2aiCB"),
    ("octopus_key", "Octopus API key API-LYH41VT2H251ZT5LSUGL0XC08W", "LYH41VT2H251ZT5LSUGL0XC08W"),
    ("infracost_key", "INFRACOST key ico-ONMYGlqYl813kTGHnecOHRAK1a4LuiDQ", "ico-ONMYGlqYl813kTGHnecOHRAK1a4LuiDQ"),
    ("frameio_token", "frame.io fio-u-ayVViWl6F6GV0aUcyvaOqIb2jog8flRAW43Wj_STbT1E5TeEZHTX1z3XzguUEGlT",
     "ayVViWl6F6GV0aUcyvaOqIb2jog8flRAW43Wj_STbT1E5TeEZHTX1z3XzguUEGlT"),
    ("adobe_key", "adobe client secret p8e-bDCPuqzmqY3r9zWL5Pc3dXphlttFq8XJ", "p8e-bDCPuqzmqY3r9zWL5Pc3dXphlttFq8XJ"),
    ("scalingo_token", "scalingo login --api-token tk-us-RnH9sijnOIQpLXc8OixodkvXqLMWXb4C-dEgR66qruGNpXv-",
     "RnH9sijnOIQpLXc8OixodkvXqLMWXb4C-dEgR66qruGNpXv"),
    # observability
    ("grafana_token", "grafana service account glsa_41ACIJZByoe7gTj9QVjRjh2Z3GdDVJQE_12dc78ff", "glsa_41ACIJZByoe7gTj9QVjRjh2Z3GdDVJQE_12dc78ff"),
    ("newrelic_key", "NEW_RELIC user key NRAK-4977HWUBJW4YOFO0B0O0A1OYNCA", "NRAK-4977HWUBJW4YOFO0B0O0A1OYNCA"),
    ("sentry_token", "sentry-cli --auth-token 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 releases",
     "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"),
    ("dynatrace_token", "Api-Token dt0c01.XBEI51CN652PJGYZ232YCLGR.49XRX0FGX1ZUVCL4GQDU27CGRRLDKELJOFH1Y618JNQLH9M0JCXMXNTOUKFVTHUE",
     "49XRX0FGX1ZUVCL4GQDU27CGRRLDKELJOFH1Y618JNQLH9M0JCXMXNTOUKFVTHUE"),
    # social
    ("facebook_token", "graph.facebook.com/me?access_token=EAACoziVHKhIxfGW8tn9P8qPC6bIsZlLtnZOffsLwiKMyS3SfGjAdtZJtfXunjRLpLSguI0KZnDldfG9nh1q490uuwgDd5giebXwSZgPpQRbkMEs96kOU4zM6aqxuuOFsLZGKAHHYiwfw9dWRQBNul6jgB",
     "EAACoziVHKhIxfGW8tn9P8qPC6bIsZlLtnZOffsLwiKMyS3SfGjAdtZJtfXunjRLpLSguI0KZnDldfG9nh1q490uuwgDd5giebXwSZgPpQRbkMEs96kOU4zM6aqxuuOFsLZGKAHHYiwfw9dWRQBNul6jgB"),
    ("twitter_token", "bearer AAAAAAAAAAAAAAAAAAAAANPPyAjtZ17RUiIadFozBv9CrVEPAcugX1QRGJis5OOXQALzc5m", "NPPyAjtZ17RUiIadFozBv9CrVEPAcugX1QRGJis5OOXQALzc5m"),
    ("mapbox_token", "MAPBOX secret sk.eyJ1Ijoibzqv94umI3k8dyuhZxKOVIqjZwvH0c_xejejXTUE.LV2fGyFrLeFIjuhPtT0b7f", "LV2fGyFrLeFIjuhPtT0b7f"),
    # credentials by context
    ("auth_header", "curl -H 'Authorization: Bearer ffp_PlJhAAvrZ8CdhPVhorlrpku8WQV9ji_FQgkS' https://api.example.com",
     "ffp_PlJhAAvrZ8CdhPVhorlrpku8WQV9ji_FQgkS"),
    ("auth_header", '{"headers": {"Authorization": "Basic +uk2ByQwzeobYGdtzzrW7vGRVIfofEkQ="}}', "+uk2ByQwzeobYGdtzzrW7vGRVIfofEkQ="),
    ("auth_header", "-H \"x-api-key: 7f3c9a2b1e8d4f6a0c5b9e2d7a4f1c8e\"", "7f3c9a2b1e8d4f6a0c5b9e2d7a4f1c8e"),
    ("cli_secret", "mytool deploy --token HiOPBbQ6UiyGbaMcL0pbmWNclUkrKOBw --region eu", "HiOPBbQ6UiyGbaMcL0pbmWNclUkrKOBw"),
    ("cli_secret", "mysqladmin --password=Zq8!mR2#vLp9 status", "Zq8!mR2#vLp9"),
    ("env_value", "cd db && PGPASSWORD=xR7pLq2Zt9 psql -h db -U app", "xR7pLq2Zt9"),
    ("env_value", "docker run -e API_KEY=f00dbabe7c0ffee42 app", "f00dbabe7c0ffee42"),
    ("config_value", "database:\n  user: app\n  password: S3cure!Pass-xROvZy\n  host: db", "S3cure!Pass-xROvZy"),
    ("config_value", "[auth]\nclient_secret = Wm9tYmllUGFzc3dvcmQ7", "Wm9tYmllUGFzc3dvcmQ7"),
    ("config_value", "  - token: Tk_9a8B7c6D5e4F3g", "Tk_9a8B7c6D5e4F3g"),
    ("url_password", "pip install --index-url https://build:Xy9-zzQ2w@pypi.internal.example/simple pkg", "Xy9-zzQ2w"),
    ("url_password", "amqp://guest:R4bb1t-Pw@mq:5672/", "R4bb1t-Pw"),
    ("private_key", "$ head -3 id_rsa\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\nQyNTUxOQAAACDpKoVzZ3Jv",
     "QyNTUxOQAAACDpKoVzZ3Jv"),
    ("private_key", '{"output": "-----BEGIN RSA PRIVATE KEY-----\\nMIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi\\n..."}',
     "MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi"),
]

# Kinds that are PII (`<pii:KIND>`); every other kind is a secret (`<secret:KIND>`).
PII_KINDS = ("email", "phone", "ip", "user")


def test_the_planted_set_is_large_and_covers_every_kind():
    assert len(PLANTED) >= 100
    kinds = {k for k, _, _ in PLANTED}
    assert kinds >= {"aws_access_key", "aws_secret_key", "github_token", "slack_token", "openai_key",
                     "anthropic_key", "jwt", "private_key", "url_password", "env_value", "detected",
                     "email", "phone", "ip", "user", "google_api_key", "google_oauth", "azure_key",
                     "gitlab_token", "stripe_key", "twilio_key", "sendgrid_key", "mailgun_key", "npm_token",
                     "pypi_token", "huggingface_token", "discord_token", "telegram_bot_token",
                     "square_token", "shopify_token", "atlassian_token", "databricks_token",
                     "digitalocean_token", "heroku_key", "auth_header", "config_value"}


def test_every_rule_is_exercised_by_a_planted_item():
    rules = SECRET_PATTERNS + PII_PATTERNS
    unused = [f"{kind}: {pattern.pattern[:60]}" for kind, pattern, *_ in rules
              if not any(pattern.search(text) for _, text, _ in PLANTED)]
    assert unused == []


@pytest.mark.parametrize("kind,text,value", PLANTED, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(PLANTED)])
def test_every_planted_item_is_scrubbed(kind, text, value):
    report = ScrubReport()
    out = Scrubber(["secrets", "pii"]).scrub(f"some context before\n{text}\nand after", "f.jsonl", report)
    assert value not in out, out
    if kind == "detected":
        assert "<secret:" in out
    else:
        placeholder = f"<pii:{kind}>" if kind in PII_KINDS else f"<secret:{kind}>"
        assert placeholder in out, out
    assert report.by_kind and value not in str(report.to_json())  # the report holds no secret


def _recall(texts) -> list[tuple[str, str]]:
    """(kind, value) of every planted item whose value survives scrubbing of `texts` (one text
    per item, or one for all)."""
    missed = []
    for (kind, _, value), text in zip(PLANTED, texts):
        out = Scrubber(["secrets", "pii"]).scrub(text, "f.jsonl", ScrubReport())
        if value in out or json.dumps(value)[1:-1] in out:
            missed.append((kind, value))
    return missed


def test_recall_is_complete_inside_json():
    # tool-call arguments are JSON text, and tool results show JSON and JSONL files: there the
    # planted text is escaped (\n, \") and must go all the same
    arguments = [json.dumps({"command": text, "description": "run it"}) for _, text, _ in PLANTED]
    assert _recall(arguments) == []
    jsonl = ["first line\n" + json.dumps({"type": "user", "content": text}) + "\nlast line"
             for _, text, _ in PLANTED]
    assert _recall(jsonl) == []


def test_recall_is_complete_with_every_item_in_one_text():
    out = Scrubber(["secrets", "pii"]).scrub("\n".join(text for _, text, _ in PLANTED), "f", ScrubReport())
    assert [(k, v) for k, _, v in PLANTED if v in out] == []


def test_scrubbing_twice_changes_nothing():
    scrubber = Scrubber(["secrets", "pii"])
    for _, text, _ in PLANTED:
        once = scrubber.scrub(text, "f", ScrubReport())
        report = ScrubReport()
        assert scrubber.scrub(once, "f", report) == once and not report.by_kind, once


# Lines of ordinary agent sessions that must come through unchanged: checksums, ids, versions,
# timestamps, tokenizer code, placeholders and references instead of values, ssh remotes, files.
ORDINARY = """\
Ran pytest: 12 passed in 0.41s. Version 3.11.7, commit 3f8a9c0 merged into main.
Listening on 127.0.0.1:8080; see docs/build.md and README.md.
def password_hash(password): return hashlib.sha256(password).hexdigest()
commit 3f8a9c0d2b1e4f5a6c7d8e9f0a1b2c3d4e5f6a7b
{"sha": "3f8a9c0d2b1e4f5a6c7d8e9f0a1b2c3d4e5f6a7b", "message": "fix"}
{"digest": "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}
"output_digest": "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9",
{"sessionId": "6f1c2a7e-3b4d-4e8f-9a0b-1c2d3e4f5a6b", "timestamp": "2025-06-01T12:34:56.789Z"}
{"parentUuid": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d", "version": "1.0.83", "gitBranch": "main"}
git remote add origin git@github.com:acme/formula.git
![logo](assets/logo@2x.png)
Downloading torch-2.3.1-cp311-cp311-manylinux1_x86_64.whl (779.1 MB)
  "integrity": "sha512-v2kDEe57lecTulaDIuNTPy3Ry4gLGJ6Z1O3vE1krgXZNrsQ+LFTGHVxVjcXPs17LhbZVGedAJv8XZ1tvj5FvSg==",
tokens: 1234 in, 567 out; cost $0.0123; elapsed 00:01:23.456, 1,234,567 bytes
Run ID 20250601-123456-789 finished with code 0; pid 12345 port 8080 uid 1000
api_key = os.environ["OPENAI_API_KEY"]
token = tokenizer.encode(text)
  password: ${DB_PASSWORD}
  token: <your-token-here>
export GITHUB_TOKEN=$(gh auth token)
OPENAI_API_KEY=your-key-here
Neither 555-0100 nor 2024-05-06 nor 12:30:45 is a phone number; nor is Decimal('+35236450.6').
See RFC 7231 section 6.5.1, PEP 8, and versions 2.7.2.2 and 7.1.4.34.
Listening on http://0.0.0.0:8000 and http://localhost:3000
tokenizer.pad_token = tokenizer.eos_token
special = {"pad_token": "<pad>", "eos_token": "</s>", "bos_token": "<s>", "unk_token": "[UNK]"}
token_type = "word-piece"
if token == "end-of-stream": break
Reading /root/.claude/projects/ and http://www.example.edu/~mgk25/iso-time.html
"""


def test_ordinary_text_is_left_alone():
    report = ScrubReport()
    out = Scrubber(["secrets", "pii"]).scrub(ORDINARY, "f", report)
    assert [(a, b) for a, b in zip(ORDINARY.split("\n"), out.split("\n")) if a != b] == []
    assert not report.by_kind


def test_json_keeps_its_layout():
    compact = json.dumps({"command": "echo hi", "env": {"TOKEN": "ghp_5xqFq6GXoB2sWpqwHHQGecmCz2KseMbTJbQ0"}},
                         separators=(",", ":"))
    out = Scrubber(["secrets"]).scrub(compact, "f", ScrubReport())
    assert out == '{"command":"echo hi","env":{"TOKEN":"<secret:github_token>"}}'
    untouched = '{"a":  1, "b": "plain"}'  # a layout json.dumps does not write, nothing to scrub
    assert Scrubber(["secrets"]).scrub(untouched, "f", ScrubReport()) == untouched


# --- strings that leave the corpus step: scrub_path, scrub_text, the report -------------------

@pytest.mark.parametrize("path,expected", [
    ("/home/alice/.claude/projects/-home-alice-gt-mayor/6f1c.jsonl",
     "/home/<pii:user>/.claude/projects/-home-<pii:user>-gt-mayor/6f1c.jsonl"),
    ("-home-alice-gt-mayor/6f1c.jsonl", "-home-<pii:user>-gt-mayor/6f1c.jsonl"),
    ("projects/-home-grace/a.jsonl", "projects/-home-<pii:user>/a.jsonl"),  # the cwd was the home
    # a home below a temporary folder, as tests and containers make them
    ("/tmp/p/home/bob/.claude/projects/-tmp-p-home-bob-gt/s.jsonl",
     "/tmp/p/home/<pii:user>/.claude/projects/-tmp-p-home-<pii:user>-gt/s.jsonl"),
    # a name with a dot: its folder form has a dash, known from the path before it
    ("/home/erin.w/.claude/projects/-home-erin-w-gt/s.jsonl",
     "/home/<pii:user>/.claude/projects/-home-<pii:user>-gt/s.jsonl"),
    ("/Users/dave/.claude/projects/-Users-dave-code-app/s.jsonl",
     "/Users/<pii:user>/.claude/projects/-Users-<pii:user>-code-app/s.jsonl"),
    (r"C:\Users\carol\.claude\projects\C--Users-carol-proj\s.jsonl",
     r"C:\Users\<pii:user>\.claude\projects\C--Users-<pii:user>-proj\s.jsonl"),
    ("C:/Users/Lena Meyer/.claude/x.jsonl", "C:/Users/<pii:user>/.claude/x.jsonl"),
    ("skipped /home/zed/a.jsonl:12: not JSON", "skipped /home/<pii:user>/a.jsonl:12: not JSON"),
    ("exports/mallory@example.com/x.jsonl", "exports/<pii:email>/x.jsonl"),
    # nothing to remove: relative paths, root's home, session ids
    ("data/sessions/6f1c2a7e-3b4d-4e8f-9a0b-1c2d3e4f5a6b.jsonl", "data/sessions/6f1c2a7e-3b4d-4e8f-9a0b-1c2d3e4f5a6b.jsonl"),
    ("/root/.claude/projects/-root-gt/x.jsonl", "/root/.claude/projects/-root-gt/x.jsonl"),
])
def test_scrub_path(path, expected):
    assert scrub_path(path) == expected
    assert scrub_path(expected) == expected  # idempotent


def test_scrub_path_with_known_users():
    # alone, a folder name cannot tell where a dashed name ends; the caller may know it
    assert scrub_path("-home-erin-w-gt/s.jsonl") == "-home-<pii:user>-w-gt/s.jsonl"
    assert scrub_path("-home-erin-w-gt/s.jsonl", users=["erin.w"]) == "-home-<pii:user>-gt/s.jsonl"
    # what one call learns does not carry into the next
    scrub_path("/home/erin.w/x")
    assert scrub_path("-home-erin-w-gt/s.jsonl") == "-home-<pii:user>-w-gt/s.jsonl"


def test_scrub_text_for_messages_that_leave_the_step():
    msg = "failed reading /home/alice/x.jsonl:3: token ghp_16C7e42F292c6912E7710c838347Ae178B4a, call +1 415 555 3273."
    assert scrub_text(msg) == ("failed reading /home/<pii:user>/x.jsonl:3: token <secret:github_token>, "
                               "call <pii:phone>.")


def test_the_report_names_no_user_and_holds_no_value():
    scrubber, report = Scrubber(["secrets", "pii"]), ScrubReport()
    for i, (_, text, _) in enumerate(PLANTED):
        scrubber.scrub(text, f"/home/alice/.claude/projects/-home-alice-gt-{i % 3}/s.jsonl", report)
    data = report.to_json()
    written = json.dumps(data)
    assert "alice" not in written
    assert [v for _, _, v in PLANTED if v in written] == []
    assert sorted(data["by_file"]) == [f"/home/<pii:user>/.claude/projects/-home-<pii:user>-gt-{i}/s.jsonl"
                                       for i in range(3)]
    assert sum(sum(c.values()) for c in data["by_file"].values()) == data["total"]


def test_only_the_requested_kinds():
    report = ScrubReport()
    out = Scrubber(["emails"]).scrub("mail a@b.example and key AKIAIOSFODNN7EXAMPLE", "f", report)
    assert out == "mail <pii:email> and key AKIAIOSFODNN7EXAMPLE"


def test_the_hint_index_never_skips_a_rule_whose_fixed_string_occurs():
    """The scrubber runs a rule only where one of its hints occurs, found by one scan; the scan
    must find every hint a per-hint `in` test finds (shorter hints inside longer ones too)."""
    import random

    from formula.runtime.corpus.scrub import _CASE_BLIND, PII_PATTERNS, SECRET_PATTERNS, _HintIndex

    rules = list(SECRET_PATTERNS) + list(PII_PATTERNS)
    index = _HintIndex(rules)
    hints = sorted({h for r in rules for h in r[3]})
    rng = random.Random(7)
    for _ in range(3000):
        text = " ".join(rng.choice(hints + ["xx", "Ab"]) for _ in range(rng.randint(1, 6)))
        text = text.upper() if rng.random() < 0.3 else text
        wanted = {h for r in rules for h in r[3] if (h in text.lower() if r[1] in _CASE_BLIND else h in text)}
        assert wanted <= index.present(text), text
