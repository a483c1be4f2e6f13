"""Cheap stand-ins for the real steps, one module per kind (selected with FORMULA_STEPS).

Each writes `result.json`: its kind, the parts of its config that shape its output, and the
digests of its inputs' contents; so reruns, cutoffs and staleness are all observable without
any machine learning. `FAKE_SLEEP_<KIND>=seconds` slows a kind down (for kill tests);
`FAKE_FAIL_<KIND>=1` makes it fail; `FAKE_LOG_LINES_<KIND>=n` prints n lines first;
`FAKE_FILL_DISK_<KIND>=output|work` writes there until the filesystem is full (and
then prints `FAKE_LOG_LINES_AFTER_<KIND>` lines);
`FAKE_PIDFILE_<KIND>=path` writes its pid there. Each records run facts (`run_facts`).
"""
