"""Convergence benchmark (issue 6): FRONT vs weight selection vs random init, trained.

    python -m benchmarks.convergence [--quick]

See run.py for the options, studies.py for the models and data, common.py for the protocol.
"""
