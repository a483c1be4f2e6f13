"""The formula compiler: text → AST → resolved program → typed plan → step configs.

Each pass is a module; `pipeline.py` lists them in order.
"""
