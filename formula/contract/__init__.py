"""What the compiler and the runtime share, and both import downward: the step graph
(`graph.py`), each step kind's configuration (`steps.py`, its settings declared once through
`config.py`), the field types (`types.py`), conditions on session metadata (`conditions.py`), chat
templates (`templates.py`) and outcome rules (`outcome_rules.py`; `formula check` reads a rules
file with the parser the corpus step classifies beads with). Standard library only at import;
nothing here imports another layer. See docs/architecture.md.
"""
