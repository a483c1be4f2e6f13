"""Definitions the compiler and the runtime share: plain Python, no torch, no third-party
imports. Both sides import downward from here (`formula check` reads outcome rules files with
the same parser the corpus step classifies beads with), and nothing here imports either side.
"""
